"""Several accounts of one vendor in one warehouse: their names, datasets and settings.

`sources.<source>.accounts` lists account names (env `SOURCES__BIZSTIM__ACCOUNTS='["a", "b"]'`).
Each account is the vendor's dlt source cloned with `name=<account>, section=<source>`, so dlt's
own lookup reads `sources.<source>.<account>.<setting>` first and falls back to
`sources.<source>.<setting>`. Without `accounts` there is one account, `default`, configured
exactly as before (the source itself, not a clone).

Each account is its own dlt pipeline and dataset (`bizstim` for `default`, `bizstim_<account>`
otherwise): its own state (TimeTap's incremental cursor), its own scd2 merge, which never sees
another account's rows, its own staging tables, and its own full refresh. `default` keeps the
names of a single-account warehouse, which therefore upgrades in place. The transforms read the
union of every account's dataset (`practice_sync.transform`), with an `account` column.
"""

from __future__ import annotations

import json
import re
from typing import Any

import dlt

from practice_sync.errors import ConfigError

DEFAULT = "default"
ACCOUNT_COLUMN = "account"
# no "__" (env variables split on it), nothing dlt's naming would change; "staging" is taken:
# dlt's staging dataset of `bizstim` is `bizstim_staging`, of an account `bizstim_x_staging`
_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_RESERVED = re.compile(r"(^|_)staging$")
CONCURRENCY_SETTING = "practice_sync.account_concurrency"
DEFAULT_CONCURRENCY = 4


def parse_names(value: Any, source: str) -> list[str] | None:
    """The account names of a `sources.<source>.accounts` value (None when not set)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    setting = f"sources.{source}.accounts (SOURCES__{source.upper()}__ACCOUNTS)"
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f'{setting} must be a list of account names such as ["downtown", "uptown"].'
        )
    bad = [name for name in value if not _NAME.match(name) or _RESERVED.search(name)]
    if bad:
        raise ConfigError(
            f"{setting} names account {bad[0]!r}: use lower-case letters, digits and single "
            "underscores, starting with a letter and not ending in staging."
        )
    if len(set(value)) != len(value):
        raise ConfigError(f"{setting} lists an account twice.")
    return list(value)


def configured(source: str) -> list[str] | None:
    """The accounts listed for `source`, or None when `accounts` is not set."""
    return parse_names(dlt.config.get(f"sources.{source}.accounts"), source)


def names(source: str) -> list[str]:
    """Every account of `source` to load: the listed ones, or `default`."""
    return configured(source) or [DEFAULT]


def dataset(source: str, account: str) -> str:
    """The dataset (DuckDB schema) of one account: the source's own name for `default`."""
    return source if account == DEFAULT else f"{source}_{account}"


def account_of(source: str, dataset_name: str, loaded_by_dlt: bool) -> str | None:
    """The account a dataset belongs to, or None if it is not one of `source`'s: `bizstim`
    is `default`'s; `bizstim_<account>` an account's if dlt loaded it (has `_dlt_loads`; a
    staging dataset has not)."""
    if dataset_name == source:
        return DEFAULT
    prefix = f"{source}_"
    rest = dataset_name[len(prefix) :]
    if dataset_name.startswith(prefix) and loaded_by_dlt and _NAME.match(rest):
        return None if _RESERVED.search(rest) else rest
    return None


def label(source: str, account: str) -> str:
    """How the summary and the run history name one account's load: `bizstim`, `bizstim.uptown`."""
    return source if account == DEFAULT else f"{source}.{account}"


def setting(source: str, account: str, name: str, listed: bool) -> tuple[str, str]:
    """A setting of one account as TOML path and env variable, for messages."""
    parts = ["sources", source, *([account] if listed else []), name]
    return ".".join(parts), "__".join(parts).upper()


def secret_given(source: str, account: str, name: str, listed: bool) -> bool:
    """Whether dlt finds a value for one account's secret, in dlt's lookup order."""
    if listed and dlt.secrets.get(f"sources.{source}.{account}.{name}"):
        return True
    return bool(dlt.secrets.get(f"sources.{source}.{name}"))


def concurrency() -> int:
    """How many accounts load at once (`practice_sync.account_concurrency`)."""
    value: Any = dlt.config.get(CONCURRENCY_SETTING)
    try:
        number = int(value) if value not in (None, "") else DEFAULT_CONCURRENCY
    except (TypeError, ValueError):
        raise ConfigError(
            f"{CONCURRENCY_SETTING} (PRACTICE_SYNC__ACCOUNT_CONCURRENCY) must be a whole number."
        ) from None
    return max(number, 1)


def source_for(factory: Any, source: str, account: str, listed: bool) -> Any:
    """The dlt source factory of one account: a clone reading `sources.<source>.<account>.*`
    first when accounts are listed, the source itself otherwise."""
    return factory.clone(name=account, section=source) if listed else factory
