"""Store URLs (sqlite:///..., postgresql://..., memory://) turned into eventsourcing settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
from psycopg import sql

SCHEMA_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


class StoreURLError(ValueError):
    """The store URL cannot be used."""


@dataclass(frozen=True)
class Store:
    """Where an application keeps its events."""

    # The URL and env may hold a database password: kept out of repr (and so out of logs).
    url: str = field(repr=False)
    env: dict[str, str] = field(repr=False)
    description: str = ""

    def postgres_conninfo(self) -> str:
        """The libpq connection string of a PostgreSQL store (it may hold the password)."""
        return _conninfo(self.env)

    def prepare(self) -> None:
        """Create what must exist before eventsourcing creates its tables."""
        if self.env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite":
            Path(self.env["SQLITE_DBNAME"]).parent.mkdir(parents=True, exist_ok=True)
        elif self.env["PERSISTENCE_MODULE"] == "eventsourcing.postgres":
            schema = self.env.get("POSTGRES_SCHEMA")
            if schema:
                with psycopg.connect(_conninfo(self.env), autocommit=True) as conn:
                    conn.execute(
                        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                    )


def _conninfo(env: dict[str, str]) -> str:
    return psycopg.conninfo.make_conninfo(
        dbname=env["POSTGRES_DBNAME"],
        host=env["POSTGRES_HOST"],
        port=env["POSTGRES_PORT"],
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"],
        connect_timeout=env["POSTGRES_CONNECT_TIMEOUT"],
    )


def parse_store_url(url: str) -> Store:
    """Parse a store URL.

    - ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's rule);
    - ``postgresql://user:password@host:port/dbname?schema=name``; the schema is created
      when missing, so several banks can share one database;
    - ``memory://``: nothing kept after the process ends (tests, trying things out).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc:
            raise StoreURLError(
                f"store URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        raw = unquote(parts.path)[1:]
        if not raw or raw.endswith("/") or ":memory:" in raw:
            raise StoreURLError(f"store URL {url!r} names no database file")
        path = Path(raw).expanduser().resolve()
        return Store(
            url=url,
            env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)},
            description=f"SQLite file {path}",
        )
    if scheme in ("postgresql", "postgres"):
        dbname = unquote(parts.path.lstrip("/"))
        if not dbname or not parts.hostname:
            raise StoreURLError(
                f"store URL {url!r}: use postgresql://user@host:port/dbname[?schema=name]"
            )
        query = parse_qs(parts.query)
        unknown = set(query) - {"schema"}
        if unknown:
            raise StoreURLError(
                f"store URL {url!r}: unknown option(s) {', '.join(sorted(unknown))}"
            )
        schema = query.get("schema", [""])[-1]
        if schema and (set(schema) - SCHEMA_CHARS or schema[0].isdigit() or len(schema) > 63):
            raise StoreURLError(
                f"store URL {url!r}: schema must be lower-case letters, digits and '_'"
            )
        try:
            port = parts.port or 5432
        except ValueError:
            raise StoreURLError(f"store URL {url!r} has an invalid port") from None
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": parts.hostname,
            "POSTGRES_PORT": str(port),
            "POSTGRES_USER": unquote(parts.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(parts.password or ""),
            "POSTGRES_CONNECT_TIMEOUT": "5",
            "POSTGRES_SCHEMA": schema,
        }
        where = f"{parts.hostname}:{port}/{dbname}" + (f" schema {schema}" if schema else "")
        return Store(url=url, env=env, description=f"PostgreSQL {where}")
    if scheme == "memory":
        return Store(
            url=url, env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, description="in memory"
        )
    raise StoreURLError(f"store URL {url!r}: the scheme must be sqlite, postgresql or memory")
