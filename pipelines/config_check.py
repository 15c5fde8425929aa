"""Settings checked before anything runs: a typo or a bad value is exit 2 naming the setting.

dlt silently ignores a setting it was not asked for (`SOURCES__BIZSTIM__APIKEY`) and fails deep
inside a run on one it cannot convert (`CONCURRENCY=abc`). In the sections this tool owns, every
name given in the environment or in `.dlt/*.toml` must be one the tool reads, and every value
must convert to its type; otherwise the run stops at once with the nearest known name.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from practice_sync import dlt_glue, privacy
from practice_sync.errors import ConfigError

# settings of our own, beside the sources' arguments: name -> type
PRACTICE_SYNC_SETTINGS: dict[str, str] = {
    "memory_limit": "str",
    "serve_path": "str",
    "progress_interval": "float",
    "privacy_salt": "secret",  # the salt of hashed columns (practice_sync.privacy)
}


@dataclass(frozen=True)
class Given:
    """One setting as the user wrote it."""

    section: str  # "sources.bizstim"
    name: str  # "concurrency"
    value: Any
    origin: str  # "the environment" or a file path

    def spelled(self, name: str | None = None) -> str:
        """The setting as the user would write it where it came from."""
        key = name or self.name
        if self.origin == "the environment":
            return "__".join([*self.section.split("."), key]).upper()
        return f"{self.section}.{key}"


def known_settings() -> dict[str, dict[str, str]]:
    """Section -> setting -> type name, read from the sources' own signatures."""
    from practice_sync.bizstim import bizstim
    from practice_sync.timetap import timetap

    known: dict[str, dict[str, str]] = {}
    for name, factory in (("bizstim", bizstim), ("timetap", timetap)):
        parameters = inspect.signature(factory).parameters.values()
        known[f"sources.{name}"] = {p.name: str(p.annotation) for p in parameters}
    known["practice_sync"] = dict(PRACTICE_SYNC_SETTINGS)
    known["destination.duckdb"] = {name: "any" for name in dlt_glue.duckdb_setting_names()}
    known["destination.duckdb"]["credentials"] = "str"
    return known


def given_settings(environ: Mapping[str, str], documents: Mapping[str, Any]) -> Iterator[Given]:
    """Every setting in the owned sections, from the environment and from each TOML document."""
    owned = known_settings()
    for key, value in environ.items():
        for section in owned:
            prefix = "__".join(section.split(".")).upper() + "__"
            if key.startswith(prefix) and len(key) > len(prefix):
                yield Given(section, key[len(prefix) :].lower(), value, "the environment")
    for origin, document in documents.items():
        for section in owned:
            table: Any = document
            for part in section.split("."):
                table = table.get(part, {}) if isinstance(table, Mapping) else {}
            if isinstance(table, Mapping):
                for name, value in table.items():
                    yield Given(section, str(name), value, origin)


def check(environ: Mapping[str, str] | None = None) -> list[str]:
    """Raise `ConfigError` for the first unknown or unconvertible setting; return the config
    files that were read (for messages about missing settings)."""
    documents, read = dlt_glue.toml_documents()
    known = known_settings()
    for given in given_settings(os.environ if environ is None else environ, documents):
        types = known[given.section]
        if given.name not in types:
            raise ConfigError(_unknown(given, list(types)))
        where = "" if given.origin == "the environment" else f" in {given.origin}"
        if types[given.name] == "secret":
            _check_secret(given, where)
            continue
        if given.name == "privacy" and given.section.startswith("sources."):
            # column names only; whether a salt is needed is checked on the resolved policy below
            privacy.parse(
                given.section.split(".")[1], given.value, given.spelled() + where, "-" * 99
            )
            continue
        problem = _conversion_problem(given.value, types[given.name])
        if problem:
            raise ConfigError(f"{given.spelled()}{where} is {given.value!r}, {problem}.")
    for source in ("bizstim", "timetap"):
        privacy.configured(source)  # a hash policy needs the salt
    return read


def _check_secret(given: Given, where: str) -> None:
    """A secret belongs in secrets.toml or the environment, never in a committed config.toml;
    its value is never quoted."""
    if given.origin != "the environment" and not given.origin.endswith("secrets.toml"):
        raise ConfigError(
            f"{given.spelled()}{where} is a secret: move it to secrets.toml or set "
            f"{'__'.join([*given.section.split('.'), given.name]).upper()} in the environment."
        )


def _unknown(given: Given, names: list[str]) -> str:
    where = "the environment" if given.origin == "the environment" else given.origin
    nearest = difflib.get_close_matches(given.name, names, n=1, cutoff=0.5)
    hint = f"did you mean {given.spelled(nearest[0])}?" if nearest else (
        "known settings there: " + ", ".join(sorted(names))
    )
    return f"Unknown setting {given.spelled()} in {where}: {hint}"


def _conversion_problem(value: Any, kind: str) -> str | None:
    """Why `value` cannot be a setting of type `kind`, or None when it can."""
    text = str(value).strip()
    if kind == "int" and not isinstance(value, bool):
        try:
            int(text)
        except ValueError:
            return "which is not a whole number"
    elif kind == "float":
        try:
            float(text)
        except ValueError:
            return "which is not a number"
    elif kind.startswith("Sequence[int]") and isinstance(value, str):
        import json

        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if not (isinstance(parsed, list) and all(isinstance(v, int) for v in parsed)):
            return "which is not a list of whole numbers such as [1, 2, 3]"
    return None
