"""The federation end to end: NATS, the clearing house and three banks as real processes
(`LocalFederation`, as `timebank up` runs them), driven only through their HTTP APIs.

Every outcome of a cross-bank transfer, then faults (the clearing house and a bank killed
mid-transfers), each ending with invariants 1-5 of the design checked from the APIs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import nats
import nats.errors
import pytest

from services.local.client import FederationClient
from services.local.config import BankConfig, ClearingConfig, FederationConfig
from services.local.federation import LocalFederation

pytestmark = pytest.mark.timeout(180)

GP, COLLEGE, COMMUNITY = "rushey-green", "lewisham-college", "deptford-community"
MEMBERS = {GP: ["amara", "george"], COLLEGE: ["priya"], COMMUNITY: ["tom"]}
GP_LIMIT = 300
TIMEBANK = Path(sys.executable).parent / "timebank"


def federation_config(deadline_seconds: float) -> FederationConfig:
    return FederationConfig(
        clearing=ClearingConfig(deadline_seconds=deadline_seconds),
        banks=[
            BankConfig(id=GP, name="Rushey Green (GP surgery)", limit_minutes=GP_LIMIT),
            BankConfig(id=COLLEGE, name="Lewisham College", limit_minutes=3000),
            BankConfig(id=COMMUNITY, name="Deptford Community", limit_minutes=3000),
        ],
    )


def start_federation(
    tmp_path: Path, deadline_seconds: float
) -> Iterator[tuple[LocalFederation, FederationClient]]:
    """As `timebank up` runs it: its own NATS server, where each participant has a user of
    its own with only its own permissions, and every envelope is signed."""
    federation = LocalFederation(federation_config(deadline_seconds), tmp_path / "federation")
    with federation, FederationClient(federation.describe()) as client:
        for bank_id, members in MEMBERS.items():
            for member_id in members:
                client.open_member(bank_id, member_id, member_id.title())
        yield federation, client


@pytest.fixture
def short_deadline(tmp_path: Path) -> Iterator[tuple[LocalFederation, FederationClient]]:
    """Transfers to a silent bank abort after 3 s."""
    yield from start_federation(tmp_path, deadline_seconds=3)


@pytest.fixture
def long_deadline(tmp_path: Path) -> Iterator[tuple[LocalFederation, FederationClient]]:
    """No transfer aborts for its deadline while a service is down for a few seconds."""
    yield from start_federation(tmp_path, deadline_seconds=120)


def audited_at_rest(federation: LocalFederation) -> dict[str, Any]:
    """Stop the federation and audit the logs it wrote (`timebank audit federation`)."""
    federation.stop()
    audit = subprocess.run(
        [str(TIMEBANK), "audit", "federation", "--data-dir", str(federation.data_dir),
         "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert audit.returncode == 0, audit.stdout + audit.stderr
    verdict: dict[str, Any] = json.loads(audit.stdout)
    return verdict


def decided(client: FederationClient, bank_id: str, transfer_id: str) -> tuple[str, str | None]:
    view = client.outcome(bank_id, transfer_id)
    return view["status"], view["reason"]


def test_every_outcome_through_the_http_apis_then_invariants_1_to_5(
    short_deadline: tuple[LocalFederation, FederationClient],
) -> None:
    federation, client = short_deadline
    lift = {"payer": "george", "payee": "amara", "minutes": 120, "memo": "lift to hospital"}
    client.ok(client.bank(GP, "POST", "/v1/exchanges", json=lift))
    expected: dict[str, str] = {}

    # Commit: Amara spends 90 minutes at the college.
    course = client.transfer(GP, "amara", COLLEGE, "priya", 90, "pottery course")
    assert decided(client, GP, course) == ("committed", None)
    assert decided(client, COLLEGE, course) == ("committed", None)
    expected[course] = "committed"

    # Unknown payee: the college refuses, so the clearing house aborts.
    nobody = client.transfer(GP, "amara", COLLEGE, "nobody", 10, "mistyped name")
    assert decided(client, GP, nobody) == ("aborted", "unknown_payee")
    expected[nobody] = "aborted"

    # Payer overdraft: refused by the payer's own bank at once; nothing is sent. Amara has
    # 30 minutes and the bank's default overdraft of 600.
    overdraft = client.request_transfer(GP, "amara", COLLEGE, "priya", 30 + 600 + 1, "too much")
    assert overdraft.status_code == 409
    assert overdraft.json()["code"] == "overdraft_limit_exceeded"

    # An unknown bank: refused by the payer's bank from its directory.
    unknown_bank = client.request_transfer(
        GP, "amara", "atlantis", "priya", 5, "nowhere", wait_for_bank=0
    )
    assert unknown_bank.status_code == 404
    assert unknown_bank.json()["code"] == "unknown_bank"

    # Bank limit: the surgery's bank may owe at most GP_LIMIT; it owes 90 already.
    client.open_member(GP, "olu", "Olu", overdraft_limit_minutes=1000)
    over_limit = client.transfer(GP, "olu", COMMUNITY, "tom", GP_LIMIT - 90 + 1, "decorating")
    assert decided(client, GP, over_limit) == ("aborted", "bank_limit_exceeded")
    expected[over_limit] = "aborted"
    within = client.transfer(GP, "olu", COMMUNITY, "tom", GP_LIMIT - 90, "decorating, less")
    assert decided(client, GP, within) == ("committed", None)
    expected[within] = "committed"

    # A suspended payee bank, then a suspended payer bank; reinstated, it works again.
    client.ok(client.clearing_request("POST", f"/v1/banks/{COLLEGE}/suspend"))
    to_suspended = client.transfer(COMMUNITY, "tom", COLLEGE, "priya", 15, "to a suspended bank")
    assert decided(client, COMMUNITY, to_suspended) == ("aborted", "bank_suspended")
    from_suspended = client.transfer(COLLEGE, "priya", COMMUNITY, "tom", 15, "from it")
    assert decided(client, COLLEGE, from_suspended) == ("aborted", "bank_suspended")
    client.ok(client.clearing_request("POST", f"/v1/banks/{COLLEGE}/reinstate"))
    after = client.transfer(COMMUNITY, "tom", COLLEGE, "priya", 15, "after reinstatement")
    assert decided(client, COMMUNITY, after) == ("committed", None)
    expected |= {to_suspended: "aborted", from_suspended: "aborted", after: "committed"}

    # Deadline: the payee bank's process is stopped; the clearing house aborts after 3 s.
    federation.stop_service(COMMUNITY)
    silent = client.transfer(COLLEGE, "priya", COMMUNITY, "tom", 20, "to a stopped bank")
    assert decided(client, COLLEGE, silent) == ("aborted", "deadline_exceeded")
    assert client.clearing(f"/v1/transfers/{silent}")["reason"] == "deadline_exceeded"
    federation.start_service(COMMUNITY)
    # Back, the bank hears the request (too late) and then the abort: it posts nothing.
    assert client.outcome(COMMUNITY, silent)["status"] == "aborted"
    expected[silent] = "aborted"

    assert client.wait_until_settled({**MEMBERS, GP: [*MEMBERS[GP], "olu"]})
    assert client.check_invariants({**MEMBERS, GP: [*MEMBERS[GP], "olu"]}, expected) == []
    client_positions = client.clearing("/v1/positions")["positions"]
    assert client.clearing("/v1/positions") == {
        "positions": {GP: -90 - (GP_LIMIT - 90), COLLEGE: 90 + 15, COMMUNITY: GP_LIMIT - 90 - 15},
        "sum_minutes": 0,
    }
    assert client.member(GP, "amara")["balance_minutes"] == 120 - 90
    assert client.member(COLLEGE, "priya")["balance_minutes"] == 90 + 15
    assert client.member(COMMUNITY, "tom")["balance_minutes"] == GP_LIMIT - 90 - 15
    statement = client.ok(client.bank(COLLEGE, "GET", "/v1/members/priya/statement"))
    assert {(e["entry_id"], e["minutes"], e["counterparty"]) for e in statement["entries"]} == {
        (course, 90, f"{GP}/amara"),
        (after, 15, f"{COMMUNITY}/tom"),
    }
    # The logs replayed from their first events tell the same story.
    verdict = audited_at_rest(federation)
    assert verdict["ok"] is True
    assert verdict["positions"] == client_positions


def test_the_invariant_check_catches_a_transfer_that_did_not_end_as_expected(
    short_deadline: tuple[LocalFederation, FederationClient],
) -> None:
    """The check the other tests rely on can fail: a wrong expectation is reported."""
    _, client = short_deadline
    committed = client.transfer(GP, "amara", COLLEGE, "priya", 30, "course")
    assert client.wait_until_settled(MEMBERS)

    problems = client.check_invariants(MEMBERS, {committed: "aborted"})

    assert len(problems) == 1
    assert problems[0].startswith(f"4: transfer {committed} is committed")
    assert problems[0].endswith("expected aborted")


def test_the_clearing_house_and_a_bank_killed_mid_transfers_settle_each_exactly_once(
    long_deadline: tuple[LocalFederation, FederationClient],
) -> None:
    """SIGKILL, not SIGTERM: a crash at any point (a relay that published but had not recorded
    it, a decision saved but not sent, a message half-consumed). After restarts, every transfer
    is committed or aborted consistently everywhere and each commit is posted exactly once."""
    federation, client = long_deadline
    count = 60
    routes = [
        (GP, COLLEGE, "amara", "priya"),
        (COLLEGE, COMMUNITY, "priya", "tom"),
        (COMMUNITY, GP, "tom", "george"),
    ]
    refused: list[tuple[int, str, str]] = []

    def send() -> None:
        # Transfers keep being asked for while the clearing house is down: the banks accept
        # them (a hold and an outbox entry) and the relay delivers them when it is back.
        for n in range(count):
            payer_bank, payee_bank, payer, payee = routes[n % 3]
            try:
                client.transfer(payer_bank, payer, payee_bank, payee, 1, f"#{n}")
            except Exception as e:
                refused.append((n, payer_bank, repr(e)))
            time.sleep(0.05)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        time.sleep(0.5)
        federation.stop_service("clearing", kill=True)
        time.sleep(0.5)
        federation.start_service("clearing")
        federation.stop_service(COLLEGE, kill=True)
        federation.start_service(COLLEGE)
    finally:
        sender.join(timeout=60)
    assert not sender.is_alive()
    # Only asking the college while its process was dead can fail (the connection is refused).
    assert all(payer_bank == COLLEGE for _, payer_bank, _ in refused), refused
    assert len(client.transfers) >= count - count // 3

    assert client.wait_until_settled(MEMBERS, seconds=60)
    expected = dict.fromkeys(client.transfers, "committed")
    assert client.check_invariants(MEMBERS, expected) == []
    committed = dict.fromkeys(MEMBERS, 0)
    for payer_bank, payee_bank in client.transfers.values():
        committed[payer_bank] -= 1
        committed[payee_bank] += 1
    assert client.clearing("/v1/positions")["positions"] == committed
    # After the crashes, the logs still pass the audit: nothing posted twice, nothing lost.
    verdict = audited_at_rest(federation)
    assert verdict["ok"] is True
    assert verdict["positions"] == committed


def can_connect(url: str, seed: Path) -> bool:
    """Whether the NATS user of this nkey seed may connect to the server."""

    async def attempt() -> bool:
        try:
            nc = await nats.connect(
                url, nkeys_seed=str(seed), allow_reconnect=False, connect_timeout=2
            )
        except (nats.errors.Error, OSError):
            return False
        await nc.close()
        return True

    return asyncio.run(attempt())


def connects_soon(url: str, seed: Path, expected: bool) -> bool:
    """Whether connecting gives ``expected`` within 10 s (a reload takes a moment)."""
    deadline = time.monotonic() + 10
    while can_connect(url, seed) != expected:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_suspended_bank_loses_its_nats_user_and_gets_it_back_when_reinstated(
    short_deadline: tuple[LocalFederation, FederationClient],
) -> None:
    federation, client = short_deadline
    assert federation.nats is not None
    url, seed = federation.nats.url, federation.seed_path(COLLEGE)

    assert can_connect(url, seed)
    admin = {"Authorization": f"Bearer {federation.clearing.token}"}
    clearing = federation.clearing.url
    assert httpx2.post(f"{clearing}/v1/banks/{COLLEGE}/suspend", headers=admin).is_success
    assert federation.sync_nats_users()
    assert connects_soon(url, seed, False)
    assert not federation.sync_nats_users()  # nothing more to change
    assert httpx2.post(f"{clearing}/v1/banks/{COLLEGE}/reinstate", headers=admin).is_success
    assert federation.sync_nats_users()
    assert connects_soon(url, seed, True)
    # Back on the bus: a payment to it commits.
    transfer_id = client.transfer(GP, "amara", COLLEGE, "priya", 5, "after reinstatement")
    assert client.outcome(GP, transfer_id)["status"] == "committed"


def test_a_bank_admitted_to_a_running_federation_gets_its_nats_user_and_pays_and_is_paid(
    long_deadline: tuple[LocalFederation, FederationClient], tmp_path: Path
) -> None:
    """A new bank makes its keys (`timebank keys new`, `timebank keys nats`) and is admitted
    over HTTP with both public halves: the NATS server then lets its user in, by a reload, and
    the bank, started by hand, pays and is paid across the federation."""
    federation, client = long_deadline
    assert federation.nats is not None
    library = "brockley-library"
    key_file, seed_file = tmp_path / "library.key", tmp_path / "library.nk"
    public_key = run_timebank("keys", "new", "--out", str(key_file))
    nats_key = run_timebank("keys", "nats", "--out", str(seed_file))
    assert not can_connect(federation.nats.url, seed_file)  # not admitted yet

    admitted = client.ok(
        client.clearing_request(
            "POST",
            "/v1/banks",
            json={"bank_id": library, "name": "Brockley Library", "limit_minutes": 600,
                  "public_key": public_key, "nats_key": nats_key},
        )
    )  # fmt: skip
    assert admitted["nats_key"] == nats_key
    assert federation.sync_nats_users()
    assert connects_soon(federation.nats.url, seed_file, True)

    port = free_port()
    operator_token = "library-operator-token"
    process = subprocess.Popen(
        [str(TIMEBANK), "ledger", "serve", "--bank", library,
         "--store", f"sqlite:///{tmp_path / 'library.db'}", "--port", str(port),
         "--nats-url", federation.nats.url, "--nats-namespace", federation.bus.namespace,
         "--nats-seed", str(seed_file), "--signing-key", str(key_file),
         "--clearing-key", admitted["clearing_public_key"]],
        env={**os.environ, "TIMEBANK_OPERATOR_TOKEN": operator_token},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client.described["banks"][library] = {
            "url": f"http://127.0.0.1:{port}",
            "operator_token": operator_token,
        }
        wait_until_serving(f"http://127.0.0.1:{port}/healthz")
        client.open_member(library, "lena", "Lena")
        paid = client.transfer(GP, "amara", library, "lena", 40, "Reading group")
        assert client.outcome(GP, paid)["status"] == "committed"
        pays = client.transfer(library, "lena", COLLEGE, "priya", 25, "Language class")
        assert client.outcome(library, pays)["status"] == "committed"
        members = {**MEMBERS, library: ["lena"]}
        assert client.wait_until_settled(members)
        assert client.member(library, "lena")["balance_minutes"] == 15
        assert client.check_invariants(members) == []
    finally:
        process.terminate()
        process.wait(timeout=10)


def run_timebank(*args: str) -> str:
    """Run the timebank command; its one line of output."""
    done = subprocess.run([str(TIMEBANK), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_serving(url: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx2.TransportError):
            if httpx2.get(url, timeout=1).is_success:
                return
        time.sleep(0.1)
    pytest.fail(f"nothing served {url} within {seconds} s")
