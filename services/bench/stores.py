"""Where the bench writes: SQLite files of its own, or fresh PostgreSQL schemas it drops."""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from services.common.stores import StoreURLError, parse_store_url

CONNECT_TIMEOUT_SECONDS = 5


class UnusableStore(ValueError):
    """The --store given cannot be used; the message says why."""


class BenchStores:
    """One store per name: ``<dir>/<name>.db``, or schema ``bench_<random>_<name>`` of the
    PostgreSQL database given (created when first used, all dropped by ``drop``)."""

    def __init__(self, directory: Path, postgres_url: str | None = None) -> None:
        self.directory = directory
        self.postgres_url = postgres_url
        self.prefix = f"bench_{secrets.token_hex(4)}"
        self._schemas: set[str] = set()

    @property
    def kind(self) -> str:
        return "PostgreSQL" if self.postgres_url else "SQLite"

    def url(self, name: str) -> str:
        if self.postgres_url is None:
            return f"sqlite:///{self.sqlite_path(name)}"
        schema = self.schema(name)
        self._schemas.add(schema)
        return f"{self.postgres_url}?schema={schema}"

    def sqlite_path(self, name: str) -> Path:
        return (self.directory / f"{name}.db").resolve()

    def schema(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def describe(self) -> str:
        if self.postgres_url is None:
            return f"SQLite files in {self.directory}"
        where = parse_store_url(self.postgres_url).description
        return f"{where}, schemas {self.prefix}_* (dropped afterwards)"

    def drop(self) -> None:
        """Drop every schema handed out (nothing to do for SQLite: the directory goes)."""
        if self.postgres_url is None or not self._schemas:
            return
        with psycopg.connect(
            self.postgres_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        ) as conn:
            for schema in sorted(self._schemas):
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )
        self._schemas.clear()


def check_postgres_url(url: str) -> str:
    """The --store URL, checked: a PostgreSQL server and database that answer, no schema of
    its own (the bench makes fresh ones). UnusableStore says what is wrong."""
    try:
        store = parse_store_url(url)
    except StoreURLError as e:
        raise UnusableStore(str(e)) from None
    if store.env["PERSISTENCE_MODULE"] != "eventsourcing.postgres":
        raise UnusableStore(
            f"--store {url!r}: give a PostgreSQL URL (postgresql://user@host:5432/dbname); "
            "without --store the bench uses SQLite files of its own"
        )
    if urlsplit(url).query:
        raise UnusableStore(
            f"--store {url!r}: name only the server and database; the bench makes (and drops) "
            "schemas of its own"
        )
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        first = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise UnusableStore(f"cannot use {store.description}: {first}") from None
    return url
