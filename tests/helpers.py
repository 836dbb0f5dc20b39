"""Constants and builders the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
from fastapi.testclient import TestClient

from services.ledger.settings import LedgerSettings

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
