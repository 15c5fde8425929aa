"""Settings checked before anything runs: a typo or a bad value is exit 2 naming the setting.

dlt silently ignores a setting it was not asked for (`SOURCES__BIZSTIM__APIKEY`) and fails deep
inside a run on one it cannot convert (`CONCURRENCY=abc`). In the sections this tool owns, every
name given in the environment or in `.dlt/*.toml` must be one the tool reads, and every value
must convert to its type; otherwise the run stops at once with the nearest known name.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from practice_sync import accounts, dlt_glue, privacy
from practice_sync.errors import ConfigError

# settings of our own, beside the sources' arguments: name -> type
PRACTICE_SYNC_SETTINGS: dict[str, str] = {
    "memory_limit": "memory",
    "serve_path": "str",
    "progress_interval": "float",
    "account_concurrency": "int",
    "privacy_salt": "secret",  # the salt of hashed columns (practice_sync.privacy)
    "publish": "list[str]",  # dlt destinations analytics is published to (publish.py)
    "publish_schema": "str",
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
        known[f"sources.{name}"]["accounts"] = "accounts"
    known["practice_sync"] = dict(PRACTICE_SYNC_SETTINGS)
    known["destination.duckdb"] = {name: "any" for name in dlt_glue.duckdb_setting_names()}
    known["destination.duckdb"]["credentials"] = "str"
    # the destinations `practice_sync.publish` can name that this tool documents and tests
    known["destination.postgres"] = dlt_glue.postgres_setting_names()
    return known


def given_settings(environ: Mapping[str, str], documents: Mapping[str, Any]) -> Iterator[Given]:
    """Every setting in the owned sections, from the environment and from each TOML document."""
    owned = known_settings()
    for key, value in environ.items():
        for section in owned:
            prefix = "__".join(section.split(".")).upper() + "__"
            if key.startswith(prefix) and len(key) > len(prefix):
                name = key[len(prefix) :].lower()
                account, _, setting = name.rpartition("__")
                if account and section.startswith("sources."):  # SOURCES__BIZSTIM__UPTOWN__X
                    yield Given(f"{section}.{account}", setting, value, "the environment")
                else:
                    yield Given(section, name, value, "the environment")
    for origin, document in documents.items():
        for section in owned:
            table: Any = document
            for part in section.split("."):
                table = table.get(part, {}) if isinstance(table, Mapping) else {}
            if isinstance(table, Mapping):
                for name, value in table.items():
                    # a table is an account's section ([sources.bizstim.uptown]) unless it is
                    # the value of a setting of the source's own (privacy = {drop = [...]})
                    if (
                        isinstance(value, Mapping)
                        and section.startswith("sources.")
                        and name not in owned[section]
                    ):
                        for key, inner in value.items():  # [sources.bizstim.uptown]
                            yield Given(f"{section}.{name}", str(key), inner, origin)
                    else:
                        yield Given(section, str(name), value, origin)


def check(environ: Mapping[str, str] | None = None) -> list[str]:
    """Raise `ConfigError` for the first unknown or unconvertible setting; return the config
    files that were read (for messages about missing settings)."""
    documents, read = dlt_glue.toml_documents()
    known = known_settings()
    givens = list(given_settings(os.environ if environ is None else environ, documents))
    listed: dict[str, list[str]] = {}
    for given in givens:  # the environment first: it wins over the files, as in dlt
        if given.name == "accounts" and given.section in known and given.section not in listed:
            problem = _conversion_problem(given.value, "accounts")
            if problem is None:
                source = given.section.split(".")[1]
                listed[given.section] = accounts.parse_names(given.value, source) or []
    for given in givens:
        types = known.get(given.section) or _account_settings(given, known, listed)
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
            raise ConfigError(_masked(f"{given.spelled()}{where} is {given.value!r}, {problem}."))
    for source in ("bizstim", "timetap"):
        privacy.configured(source)  # a hash policy needs the salt
    return read


def _account_settings(
    given: Given, known: dict[str, dict[str, str]], listed_by_section: dict[str, list[str]]
) -> dict[str, str]:
    """The settings an account section (`sources.bizstim.uptown`) may hold: its source's, for an
    account listed in `sources.<source>.accounts`; anything else is a `ConfigError`."""
    section, _, account = given.section.rpartition(".")
    listed = listed_by_section.get(section, [])
    if account not in listed:
        where = "the environment" if given.origin == "the environment" else given.origin
        nearest = difflib.get_close_matches(account, listed, n=1, cutoff=0.5)
        hint = (
            f"did you mean {nearest[0]!r}?"
            if nearest
            else (
                f"add it to {section}.accounts ({'__'.join(section.split('.')).upper()}__ACCOUNTS)."
            )
        )
        raise ConfigError(
            f"Setting {given.spelled()} in {where} is for account {account!r}, which "
            f"{section}.accounts does not list: {hint}"
        )
    return {name: kind for name, kind in known[section].items() if name != "accounts"}


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


def _string_list_problem(value: Any) -> str | None:
    """`practice_sync.publish`: a list of dlt destination names (JSON in the environment)."""
    import json

    from practice_sync.publish import check_destination

    parsed = value
    if isinstance(value, str):
        try:
            parsed = json.loads(value) if value.strip().startswith("[") else [value.strip()]
        except ValueError:
            parsed = None
    if not (isinstance(parsed, list) and all(isinstance(v, str) and v for v in parsed)):
        return 'which is not a list of destination names such as ["postgres"]'
    for name in parsed:
        try:
            check_destination(name)
        except ConfigError:
            return f"and {name!r} is not a dlt destination (postgres, motherduck, snowflake, ...)"
    return None


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
            number = float(text)
        except ValueError:
            return "which is not a number"
        if not math.isfinite(number):  # inf would stop the progress ticker, nan flood the log
            return "which is not a finite number"
    elif kind == "memory":
        return _memory_problem(text)
    elif kind == "accounts":
        try:
            accounts.parse_names(value, "source")
        except ConfigError:
            return 'which is not a list of account names such as ["downtown", "uptown"]'
    elif kind == "list[str]":
        return _string_list_problem(value)
    elif kind.startswith("Sequence[int]") and isinstance(value, str):
        import json

        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if not (isinstance(parsed, list) and all(isinstance(v, int) for v in parsed)):
            return "which is not a list of whole numbers such as [1, 2, 3]"
    return None


def _memory_problem(text: str) -> str | None:
    """`practice_sync.memory_limit`: whatever DuckDB accepts (512MB, 2GiB), tried on a throwaway
    in-memory database, so a typo is exit 2 here and not a parser error at the first open."""
    import duckdb

    try:
        with contextlib.closing(duckdb.connect()) as con:
            con.execute(f"set memory_limit = '{text.replace(chr(39), '')}'")
    except duckdb.Error:
        return "which is not an amount of memory such as 512MB or 2GB"
    return None


_PASSWORD = re.compile(r"(://[^/@\s:]*:)[^@/\s]*@")


def _masked(message: str) -> str:
    """`message` with the password of any URL in it replaced: a server URL given to the wrong
    setting is quoted back, and a password must not reach a terminal or a log."""
    return _PASSWORD.sub(r"\1***@", message)
