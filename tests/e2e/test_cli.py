"""End-to-end: the installed `timebank` command, run as a real process serving HTTP on 127.0.0.1."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.e2e.conftest import TIMEBANK, Server, StartServer, timebank_env
from tests.helpers import BANK_ID

pytestmark = pytest.mark.timeout(120)

# A refusal to start must not wait for anything: settings are checked before the store opens.
REFUSAL_SECONDS = 15


def run_timebank(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TIMEBANK), *args],
        cwd=cwd,
        env=env or timebank_env(),
        capture_output=True,
        text=True,
        timeout=REFUSAL_SECONDS,
        check=False,
    )


def open_member(client: httpx2.Client, member_id: str, **extra: Any) -> None:
    body = {"member_id": member_id, "name": member_id.title(), "kind": "person", **extra}
    response = client.post("/v1/members", json=body)
    assert response.status_code == 201, response.text


def balance(client: httpx2.Client, member_id: str) -> int:
    response = client.get(f"/v1/members/{member_id}")
    assert response.status_code == 200, response.text
    minutes: int = response.json()["balance_minutes"]
    return minutes


def exchange_body(payer: str, payee: str, minutes: int, memo: str = "help") -> dict[str, Any]:
    return {"payer": payer, "payee": payee, "minutes": minutes, "memo": memo}


# The command line.


def test_help_lists_the_ledger_command(tmp_path: Path) -> None:
    result = run_timebank("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ledger" in result.stdout


def test_ledger_help_lists_the_serve_command(tmp_path: Path) -> None:
    result = run_timebank("ledger", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout


def test_serve_help_documents_bank_store_host_and_port(tmp_path: Path) -> None:
    # Wide columns, so the help table does not wrap or elide what we look for.
    result = run_timebank(
        "ledger", "serve", "--help", cwd=tmp_path, env=timebank_env(COLUMNS="200")
    )
    assert result.returncode == 0, result.stderr
    documented = {
        "--bank": "bank's id",
        "--store": "sqlite:///",
        "--host": "Address to listen on",
        "--port": "Port to listen on",
    }
    for option, help_text in documented.items():
        assert option in result.stdout
        assert help_text in result.stdout


@pytest.mark.parametrize(
    ("bank", "args", "env_overrides", "named_in_message"),
    [
        pytest.param(
            BANK_ID, (), {"TIMEBANK_OPERATOR_TOKEN": None}, "TIMEBANK_OPERATOR_TOKEN", id="no-token"
        ),
        pytest.param(
            BANK_ID,
            (),
            {"TIMEBANK_OPERATOR_TOKEN": "short-token"},
            "TIMEBANK_OPERATOR_TOKEN",
            id="short-token",
        ),
        pytest.param(BANK_ID, ("--store", "ftp://x"), {}, "ftp://x", id="bad-store-url"),
        pytest.param("Not_A_Bank!", (), {}, "Not_A_Bank!", id="bad-bank-id"),
    ],
)
def test_serve_with_bad_settings_exits_quickly_with_a_message_and_no_traceback(
    tmp_path: Path,
    bank: str,
    args: tuple[str, ...],
    env_overrides: dict[str, str | None],
    named_in_message: str,
) -> None:
    result = run_timebank(
        "ledger",
        "serve",
        "--bank",
        bank,
        *args,
        "--port",
        "9",  # Never bound: it must refuse before listening.
        cwd=tmp_path,
        env=timebank_env(**env_overrides),
    )
    assert result.returncode != 0
    assert named_in_message in result.stderr
    assert "Traceback" not in result.stderr
    # Refused before the default store (./<bank>.ledger.db) or its lock was created.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("seed", "said"),
    [
        pytest.param(None, "cannot read it", id="missing"),
        pytest.param(b"not a seed at all", "not an nkey seed", id="garbage"),
    ],
)
def test_serve_with_a_missing_or_wrong_nats_seed_exits_2_with_one_line(
    tmp_path: Path, seed: bytes | None, said: str
) -> None:
    seed_file = tmp_path / "gp.nk"
    if seed is not None:
        seed_file.write_bytes(seed)
    for service in (("ledger", "serve", "--bank", BANK_ID), ("clearing", "serve")):
        result = run_timebank(
            *service, "--nats-seed", str(seed_file), "--port", "9",
            cwd=tmp_path, env=timebank_env(TIMEBANK_ADMIN_TOKEN="admin-" + "x" * 24),
        )  # fmt: skip
        assert result.returncode == 2
        [line] = result.stderr.strip().splitlines()
        assert "--nats-seed" in line
        assert said in line


# A served bank over real HTTP.


def test_healthz_answers_with_the_bank_id_without_a_token_while_the_api_needs_one(
    server: Server,
) -> None:
    anonymous = server.client()
    response = anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "bank": BANK_ID}
    refused = anonymous.get("/v1/bank")
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthorized"


def test_an_exchange_between_two_members_over_http_moves_minutes_and_balances_to_zero(
    server: Server, operator: dict[str, str]
) -> None:
    client = server.client(operator)
    open_member(client, "maya")
    open_member(client, "tom")

    response = client.post("/v1/exchanges", json=exchange_body("maya", "tom", 90, "Lift"))
    assert response.status_code == 201, response.text
    receipt = response.json()
    assert (receipt["payer"], receipt["payee"], receipt["minutes"]) == ("maya", "tom", 90)

    statement = client.get("/v1/members/maya/statement").json()
    assert statement["balance_minutes"] == -90
    assert [(e["minutes"], e["counterparty"], e["memo"]) for e in statement["entries"]] == [
        (-90, "tom", "Lift")
    ]
    assert balance(client, "tom") == 90
    assert client.get("/v1/bank").json() == {
        "bank": BANK_ID,
        "members": 2,
        "total_posted_minutes": 0,
    }


def test_auditor_token_can_read_but_writing_is_forbidden_and_changes_nothing(
    server: Server, operator: dict[str, str], auditor: dict[str, str]
) -> None:
    open_member(server.client(operator), "maya")
    reader = server.client(auditor)
    assert reader.get("/v1/members/maya").status_code == 200
    assert reader.get("/v1/bank").status_code == 200

    response = reader.post(
        "/v1/members", json={"member_id": "eve", "name": "Eve", "kind": "person"}
    )
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "forbidden"
    assert reader.get("/v1/members/eve").status_code == 404


# Stopping and restarting.


def test_server_stops_cleanly_on_sigterm_with_exit_code_zero(server: Server) -> None:
    assert server.stop() == 0


def test_restart_on_the_same_sqlite_file_keeps_balances_and_replays_an_idempotent_request(
    start_server: StartServer, bank_store_url: str, operator: dict[str, str]
) -> None:
    key = {"Idempotency-Key": "lift-2024-06-01-maya-tom"}
    body = exchange_body("maya", "tom", 60, "Shopping")
    first = start_server("--bank", BANK_ID, "--store", bank_store_url)
    client = first.client(operator)
    open_member(client, "maya")
    open_member(client, "tom")
    original = client.post("/v1/exchanges", json=body, headers=key)
    assert original.status_code == 201, original.text
    assert "Idempotent-Replayed" not in original.headers
    first.stop()  # Fails the test if SIGTERM alone does not end the process.
    assert "Application shutdown complete" in first.log()
    assert "Traceback" not in first.log()

    again = start_server("--bank", BANK_ID, "--store", bank_store_url).client(operator)
    assert (balance(again, "maya"), balance(again, "tom")) == (-60, 60)
    replay = again.post("/v1/exchanges", json=body, headers=key)
    assert replay.status_code == 201, replay.text
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json()["exchange_id"] == original.json()["exchange_id"]
    assert (balance(again, "maya"), balance(again, "tom")) == (-60, 60)
    assert len(again.get("/v1/members/tom/statement").json()["entries"]) == 1
    assert again.get("/v1/bank").json()["total_posted_minutes"] == 0


# Concurrency.

THREADS = 6
REQUESTS_PER_THREAD = 25
MINUTES = 20
LIMIT = 100


def post_exchanges(
    server: Server, headers: dict[str, str], payer: str, payee: str, start: threading.Barrier
) -> list[httpx2.Response]:
    body = exchange_body(payer, payee, MINUTES)
    with httpx2.Client(base_url=server.base_url, headers=headers, timeout=30.0) as client:
        # Every thread starts together, so requests from both directions really interleave.
        start.wait(timeout=30)
        return [client.post("/v1/exchanges", json=body) for _ in range(REQUESTS_PER_THREAD)]


def test_concurrent_exchanges_in_both_directions_keep_balances_exact_and_the_bank_at_zero(
    server: Server, operator: dict[str, str]
) -> None:
    client = server.client(operator)
    open_member(client, "ann", overdraft_limit_minutes=LIMIT)
    open_member(client, "bob", overdraft_limit_minutes=LIMIT)
    # Two of three threads pay ann -> bob, so ann hits her limit and some exchanges are refused.
    directions = [("ann", "bob") if i % 3 else ("bob", "ann") for i in range(THREADS)]
    start = threading.Barrier(THREADS)
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [
            pool.submit(post_exchanges, server, operator, payer, payee, start)
            for payer, payee in directions
        ]
        responses = [r for f in futures for r in f.result(timeout=90)]

    accepted = [r.json() for r in responses if r.status_code == 201]
    refused = [r for r in responses if r.status_code != 201]
    assert accepted, "no exchange was accepted"
    assert refused, "the overdraft limit was never reached; the test proves nothing"
    for r in refused:
        assert r.status_code == 409, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "overdraft_limit_exceeded"
    ann = sum(e["minutes"] * (1 if e["payee"] == "ann" else -1) for e in accepted)
    assert balance(client, "ann") == ann
    assert balance(client, "bob") == -ann
    assert len({e["exchange_id"] for e in accepted}) == len(accepted)
    assert len(client.get("/v1/members/ann/statement").json()["entries"]) == len(accepted)
    assert client.get("/v1/bank").json()["total_posted_minutes"] == 0


# The default store.


def test_serve_without_a_store_keeps_the_bank_in_the_cwd_named_after_it(
    start_server: StartServer, tmp_path: Path, operator: dict[str, str]
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    server = start_server("--bank", "lewisham", cwd=cwd)
    open_member(server.client(operator), "maya")
    server.stop()

    db = cwd / "lewisham.ledger.db"
    assert db.is_file()
    with closing(sqlite3.connect(db)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        stored = sum(conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables)  # noqa: S608
    # Two system accounts and maya, at least: the file is where the events went.
    assert stored >= 3
