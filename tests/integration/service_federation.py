"""A clearing house and banks served by their real ASGI apps (lifespan, bus workers, periodic
jobs) over a real nats-server, driven over HTTP: the set-up of the tests that read what the
services show an operator (/metrics, /readyz, their logs)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.clearing.application import Clearing
from services.clearing.service import create_app as create_clearing_app
from services.clearing.settings import ClearingSettings
from services.common.stores import parse_store_url
from services.ledger.application import Ledger
from services.ledger.service import create_app as create_ledger_app
from services.ledger.settings import LedgerSettings
from shared.bus import Bus
from shared.protocol import CLEARING
from tests.helpers import AUDITOR_TOKEN, OPERATOR_TOKEN, admit, participant_key

ADMIN_TOKEN = "admin-" + "x" * 24
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def wait_until(check: Callable[[], bool], seconds: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not so within {seconds}s: {what or check}")
        time.sleep(0.05)


def clearing_settings(store_url: str, nats_url: str, bus: Bus) -> ClearingSettings:
    built = ClearingSettings.build({"TIMEBANK_ADMIN_TOKEN": ADMIN_TOKEN}, store_url=store_url)
    return dataclasses.replace(
        built, nats_url=nats_url, bus=bus, signing_key=participant_key(CLEARING)
    )


def bank_settings(bank_id: str, store_url: str, nats_url: str, bus: Bus) -> LedgerSettings:
    environ = {"TIMEBANK_OPERATOR_TOKEN": OPERATOR_TOKEN, "TIMEBANK_AUDITOR_TOKEN": AUDITOR_TOKEN}
    built = LedgerSettings.build(environ, bank_id=bank_id, store_url=store_url)
    return dataclasses.replace(
        built,
        nats_url=nats_url,
        bus=bus,
        signing_key=participant_key(bank_id),
        clearing_key=participant_key(CLEARING).public_key,
        # One checkpoint at start, then none during a test: outbox counts stay exact.
        checkpoint_seconds=3600.0,
    )


@dataclass
class ServedFederation:
    clearing: Clearing
    clearing_client: TestClient
    banks: dict[str, Ledger]
    clients: dict[str, TestClient]

    def transfer(self, payer_bank: str, payer: str, to_bank: str, payee: str, minutes: int) -> str:
        body = {"payer": payer, "to_bank": to_bank, "payee": payee, "minutes": minutes, "memo": ""}
        response = self.clients[payer_bank].post("/v1/transfers", json=body, headers=OPERATOR)
        assert response.status_code == 202, response.text
        transfer_id: str = response.json()["transfer_id"]
        return transfer_id

    def status(self, bank_id: str, transfer_id: str) -> str | None:
        response = self.clients[bank_id].get(f"/v1/transfers/{transfer_id}", headers=OPERATOR)
        return str(response.json()["status"]) if response.status_code == 200 else None


@contextmanager
def served_federation(
    tmp_path: Path, nats_url: str, bus: Bus, bank_ids: tuple[str, ...] = ("gp", "college")
) -> Iterator[ServedFederation]:
    """The clearing house and banks, each served by its app; maya banks at gp and bob at
    college. Everything is stopped and closed afterwards."""
    clearing_url = f"sqlite:///{tmp_path}/clearing.db"
    clearing = Clearing(parse_store_url(clearing_url))
    bank_urls = {b: f"sqlite:///{tmp_path}/{b}.db" for b in bank_ids}
    banks = {b: Ledger(b, parse_store_url(url)) for b, url in bank_urls.items()}
    with ExitStack() as stack:
        # Registered first, so it runs last: the apps have stopped using the stores by then.
        for app in (clearing, *banks.values()):
            stack.callback(app.close)
        clearing_app = create_clearing_app(clearing_settings(clearing_url, nats_url, bus), clearing)
        clearing_client = stack.enter_context(TestClient(clearing_app))
        for bank_id in bank_ids:
            admit(clearing, bank_id, 600)
        clients = {}
        for bank_id, ledger in banks.items():
            settings = bank_settings(bank_id, bank_urls[bank_id], nats_url, bus)
            clients[bank_id] = stack.enter_context(TestClient(create_ledger_app(settings, ledger)))
        for bank_id, member in (("gp", "maya"), ("college", "bob")):
            body = {"member_id": member, "name": member.title(), "kind": "person"}
            response = clients[bank_id].post("/v1/members", json=body, headers=OPERATOR)
            assert response.status_code == 201, response.text
        wait_until(
            lambda: all(set(bank_ids) <= set(b.known_banks()) for b in banks.values()),
            what="every bank knows the directory",
        )
        yield ServedFederation(clearing, clearing_client, banks, clients)
