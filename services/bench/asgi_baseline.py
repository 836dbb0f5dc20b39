"""The HTTP figure's baseline: a bare ASGI app that stores each POST with one INSERT+commit,
and each batch's items with one INSERT each in a single transaction.

Served by uvicorn in a process of its own; answers 201 with the row's id (a batch: 200 with
the count stored), and GET /healthz.

    python -m services.bench.asgi_baseline --port PORT --store URL

``URL`` is a SQLite or PostgreSQL store URL, as the ledger takes (the table is its own).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql

from services.common.stores import Store, parse_store_url

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HOST = "127.0.0.1"
CREATE = "CREATE TABLE IF NOT EXISTS bench_requests (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"
CREATE_PG = (
    "CREATE TABLE IF NOT EXISTS bench_requests (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)"
)


class Table(Protocol):
    def insert(self, body: bytes) -> int: ...

    def insert_many(self, bodies: list[str]) -> int: ...

    def close(self) -> None: ...


class SQLiteTable:
    """One connection, WAL and an explicit BEGIN per write, as eventsourcing's SQLite store."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(CREATE)

    def insert(self, body: bytes) -> int:
        self.conn.execute("BEGIN")
        cursor = self.conn.execute("INSERT INTO bench_requests (body) VALUES (?)", (body.decode(),))
        self.conn.execute("COMMIT")
        return int(cursor.lastrowid or 0)

    def insert_many(self, bodies: list[str]) -> int:
        self.conn.execute("BEGIN")
        self.conn.executemany(
            "INSERT INTO bench_requests (body) VALUES (?)", [(b,) for b in bodies]
        )
        self.conn.execute("COMMIT")
        return len(bodies)

    def close(self) -> None:
        self.conn.close()


class PostgresTable:
    """One connection; each insert its own transaction."""

    def __init__(self, store: Store) -> None:
        env = store.env
        self.conn = psycopg.connect(store.postgres_conninfo())
        schema = env.get("POSTGRES_SCHEMA") or "public"
        self.conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        self.conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        self.conn.execute(CREATE_PG)
        self.conn.commit()

    def insert(self, body: bytes) -> int:
        row = self.conn.execute(
            "INSERT INTO bench_requests (body) VALUES (%s) RETURNING id", (body.decode(),)
        ).fetchone()
        self.conn.commit()
        return int(row[0]) if row else 0

    def insert_many(self, bodies: list[str]) -> int:
        with self.conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO bench_requests (body) VALUES (%s)", [(b,) for b in bodies]
            )
        self.conn.commit()
        return len(bodies)

    def close(self) -> None:
        self.conn.close()


def open_table(url: str) -> Table:
    store = parse_store_url(url)
    store.prepare()
    if store.env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite":
        return SQLiteTable(Path(store.env["SQLITE_DBNAME"]))
    return PostgresTable(store)


def make_app(table: Table) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """GET /healthz answers 200; a POST to a path ending in /batch stores each of its
    ``items`` in one transaction and answers 200 with their count; any other POST stores its
    body and answers 201 with the row's id."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            table.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer: dict[str, object]
        if scope["method"] == "POST" and str(scope["path"]).endswith("/batch"):
            items = [json.dumps(item) for item in json.loads(body)["items"]]
            status, answer = 200, {"stored": table.insert_many(items)}
        elif scope["method"] == "POST":
            status, answer = 201, {"id": table.insert(body)}
        else:
            status, answer = 200, {"status": "ok"}
        payload = json.dumps(answer).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", required=True)
    args = parser.parse_args()
    uvicorn.run(make_app(open_table(args.store)), host=HOST, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
