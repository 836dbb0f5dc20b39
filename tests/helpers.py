"""Constants and builders the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import functools
import os
import pty
import select
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2 as httpx
from fastapi.testclient import TestClient

from services.clearing.application import Clearing
from services.clearing.service import clearing_bus_worker
from services.clearing.views import SettlementView
from services.common.bus_worker import BusWorker
from services.ledger.application import Ledger
from services.ledger.service import ledger_bus_worker
from services.ledger.settings import LedgerSettings
from shared.bus import Bus
from shared.protocol import CLEARING
from shared.signing import SigningKey, confirmation_payload

OPERATOR_TOKEN = "operator-" + "o" * 24
AUDITOR_TOKEN = "auditor-" + "a" * 24
BANK_ID = "rushey-green"


def make_settings(store_url: str, **kwargs: object) -> LedgerSettings:
    """A bank's settings as the CLI would build them, with both test tokens in the env."""
    environ = {"TIMEBANK_OPERATOR_TOKEN": OPERATOR_TOKEN, "TIMEBANK_AUDITOR_TOKEN": AUDITOR_TOKEN}
    return LedgerSettings.build(environ, bank_id=BANK_ID, store_url=store_url, **kwargs)  # type: ignore[arg-type]


PROBLEM_KEYS = {"type", "title", "status", "code", "detail"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and stable code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith(code)
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


def ledger_state(client: TestClient, operator: dict[str, str], *member_ids: str) -> dict[str, Any]:
    """Everything a refused request could have changed: members, statements, bank totals."""
    state: dict[str, Any] = {"bank": client.get("/v1/bank", headers=operator).json()}
    for member_id in member_ids:
        state[member_id] = (
            client.get(f"/v1/members/{member_id}", headers=operator).json(),
            client.get(f"/v1/members/{member_id}/statement", headers=operator).json(),
        )
    return state


def run_in_terminal(argv: list[str], cwd: Path, seconds: float = 60.0) -> tuple[int, bytes]:
    """Run a command on a pseudo-terminal (as if a person ran it); its exit code and output."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(follower)
    output = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(leader)
    return process.wait(timeout=seconds), output


@functools.cache
def participant_key(name: str) -> SigningKey:
    """A bank's or the clearing house's signing key in these tests (one per name)."""
    return SigningKey.generate()


def bank_bus_worker(ledger: Ledger, nats_url: str, bus: Bus) -> BusWorker:
    """A bank's bus worker, signing with its test key and trusting the clearing's."""
    return ledger_bus_worker(
        ledger,
        nats_url,
        bus,
        signer=participant_key(ledger.bank_id),
        clearing_key=participant_key(CLEARING).public_key,
    )


def clearing_worker(clearing: Clearing, nats_url: str, bus: Bus) -> BusWorker:
    """The clearing house's bus worker, signing with its test key."""
    return clearing_bus_worker(clearing, nats_url, bus, signer=participant_key(CLEARING))


def admit(clearing: Clearing, bank_id: str, limit_minutes: int) -> None:
    """Admit a bank with its test key, as `timebank up` admits one with its own."""
    public_key = participant_key(bank_id).public_key
    clearing.admit_bank(bank_id, bank_id.title(), limit_minutes, public_key=public_key)


def confirm(clearing: Clearing, settlement_id: int, number: int, creditor: str) -> SettlementView:
    """The creditor bank confirms it was paid, signed with its test key."""
    signature = participant_key(creditor).sign(
        confirmation_payload(creditor, settlement_id, number)
    )
    return clearing.confirm_obligation(settlement_id, number, creditor, signature)


class Clock:
    """A clock a test moves by hand (set ``now``, or ``advance``), given to an application as
    its clock, so deadlines and cut-offs pass without sleeping."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, *, seconds: float = 0, minutes: float = 0) -> None:
        self.now += timedelta(seconds=seconds, minutes=minutes)
