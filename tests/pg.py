"""A real PostgreSQL server for the publishing tests: one new database per test, dropped after.

The server is 127.0.0.1:5432 as user postgres (how CI's machine runs it: trust auth, so any
password; dlt still wants one in the URL). Point the tests at another server with
`PRACTICE_SYNC_TEST_POSTGRES=postgresql://user:password@host:port/maintenance_db`: that user
must be allowed to create databases. The tests never skip: an unreachable server fails them,
saying which server was tried, so CI cannot pass without having published anything.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import duckdb
import psycopg2
import pytest

DEFAULT_SERVER = "postgresql://postgres:test@127.0.0.1:5432/postgres"
SERVER_VARIABLE = "PRACTICE_SYNC_TEST_POSTGRES"


def server_url() -> str:
    return os.environ.get(SERVER_VARIABLE) or DEFAULT_SERVER


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    return urlunsplit(parts._replace(netloc=f"{netloc}:{port}"))


def with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def _admin() -> Any:
    try:
        con = psycopg2.connect(server_url(), connect_timeout=10)
    except psycopg2.OperationalError as exc:
        pytest.fail(
            f"the PostgreSQL server for the publishing tests is unreachable at "
            f"{urlsplit(server_url()).hostname}:{urlsplit(server_url()).port} ({exc}); start it "
            f"or set {SERVER_VARIABLE} to another server's URL",
            pytrace=False,
        )
    con.autocommit = True
    return con


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A uniquely named database (parallel workers and other runs never collide), dropped after;
    yields its URL."""
    name = f"ps_test_{uuid.uuid4().hex[:16]}"
    admin = _admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f'create database "{name}"')
            # a zone with DST on the server's side too: wall-clock times must not move
            cur.execute(f"alter database \"{name}\" set timezone to 'America/New_York'")
        yield with_database(server_url(), name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'drop database if exists "{name}" with (force)')
        admin.close()


def pg_query(url: str, sql: str) -> list[tuple]:
    with contextlib.closing(psycopg2.connect(url)) as con, con.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def _normal(value: object) -> object:
    """Instants compared as UTC (each driver hands them back in its own session zone)."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    return value


def duckdb_analytics(database: str) -> dict[str, tuple[list[tuple[str, str]], Counter]]:
    """Each `analytics` table of a DuckDB file: its columns with types, and its rows."""
    out = {}
    with contextlib.closing(duckdb.connect(database, read_only=True)) as con:
        tables = con.execute(
            "select table_name from duckdb_tables() where schema_name = 'analytics' order by 1"
        ).fetchall()
        for (table,) in tables:
            columns = con.execute(
                "select column_name, data_type from duckdb_columns() where schema_name = "
                "'analytics' and table_name = ? order by column_index",
                [table],
            ).fetchall()
            rows = con.execute(f'select * from analytics."{table}"').fetchall()
            out[table] = (columns, Counter(tuple(_normal(v) for v in row) for row in rows))
    return out


def pg_analytics(
    url: str, schema: str = "analytics"
) -> dict[str, tuple[list[tuple[str, str]], Counter]]:
    """The same for a PostgreSQL schema, without the publishing key `_dlt_id`."""
    out = {}
    with contextlib.closing(psycopg2.connect(url)) as con, con.cursor() as cur:
        cur.execute(
            "select table_name from information_schema.tables where table_schema = %s order by 1",
            [schema],
        )
        for (table,) in cur.fetchall():
            cur.execute(
                "select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a "
                "where a.attrelid = %s::regclass and a.attnum > 0 and not a.attisdropped "
                "and a.attname <> '_dlt_id' order by a.attnum",
                [f'"{schema}"."{table}"'],
            )
            columns = cur.fetchall()
            # json as its text: psycopg2 would parse it, DuckDB hands back the text as written
            names = ", ".join(
                f'"{name}"::text' if kind == "json" else f'"{name}"' for name, kind in columns
            )
            cur.execute(f'select {names} from "{schema}"."{table}"')
            rows = cur.fetchall()
            out[table] = (columns, Counter(tuple(_normal(v) for v in row) for row in rows))
    return out


# what each DuckDB type must be on the server
PG_TYPE_OF = {
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "BOOLEAN": "boolean",
    "VARCHAR": "text",
    "JSON": "json",
    "DATE": "date",
    "TIMESTAMP": "timestamp without time zone",
    "TIMESTAMP WITH TIME ZONE": "timestamp with time zone",
    "DECIMAL(18,2)": "numeric(18,2)",
    "DOUBLE": "double precision",
}


def assert_same(duck: dict, pg: dict) -> None:
    """The published schema equals DuckDB's `analytics`: same tables, columns in the same order
    with the matching type, and the same rows (as a multiset)."""
    assert sorted(pg) == sorted(duck)
    for table, (columns, rows) in duck.items():
        pg_columns, pg_rows = pg[table]
        assert pg_columns == [(name, PG_TYPE_OF[kind]) for name, kind in columns], table
        assert pg_rows == rows, (
            f"{table}: {sum((pg_rows - rows).values())} extra, "
            f"{sum((rows - pg_rows).values())} missing on the server"
        )
