"""Auditing a whole federation: a real clearing house and two banks (in one process, messages
moved by a small pump), with signed checkpoints and a settlement, written to SQLite files; then
the files damaged by hand, each damage caught and named, including edits the banks' own rules
cannot see, which only the clearing house's signed checkpoints reveal."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import Notification

from services.audit.eventlog import open_event_log
from services.audit.federation import FederationAudit, audit_federation
from services.audit.findings import CHECKPOINT, INVARIANT_2, INVARIANT_3, INVARIANT_4
from services.audit.replay import audit_bank
from services.clearing.application import Clearing
from services.common.chain import rolling_hashes
from services.common.outbox import QUEUED_TOPIC, Outbox, envelope_of, outbox_id
from services.common.stores import parse_store_url
from services.ledger.application import (
    Ledger,
)
from services.ledger.checkpoints import Checkpointer
from services.ledger.domain_terms import (
    DEFAULT_OVERDRAFT_MINUTES,
)
from shared.protocol import CLEARING
from shared.signing import SigningKey, checkpoint_payload, confirmation_payload, rotation_payload
from tests.helpers import run_in_terminal

TIMEBANK = Path(sys.executable).parent / "timebank"
BANKS = ("gp", "college")


def store(directory: Path, name: str) -> str:
    return f"sqlite:///{directory / (name + '.db')}"


def pump(apps: dict[str, Any], read: dict[str, int]) -> None:
    """Deliver every queued message to its destination, as relays and consumers would, until
    nothing new is queued."""
    for _ in range(50):
        moved = 0
        for name, app in apps.items():
            batch = app.recorder.select_notifications(
                start=read[name] + 1, limit=1000, topics=[QUEUED_TOPIC]
            )
            for notification in batch:
                envelope = envelope_of(app.mapper.to_domain_event(notification))
                apps[envelope.destination].receive([envelope])
                moved += 1
            if batch:
                read[name] = batch[-1].id
        if not moved:
            return
    pytest.fail("the federation did not settle")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A federation's stores after exchanges, transfers (committed and aborted), signed
    checkpoints, a settlement and a key rotation; copied for each test to damage."""
    directory = tmp_path_factory.mktemp("federation")
    keys = {bank_id: SigningKey.generate() for bank_id in BANKS}
    clearing = Clearing(parse_store_url(store(directory, "clearing")))
    banks = {b: Ledger(b, parse_store_url(store(directory, b))) for b in BANKS}
    apps: dict[str, Any] = {CLEARING: clearing, **banks}
    read = dict.fromkeys(apps, 0)
    for bank_id in BANKS:
        clearing.admit_bank(bank_id, bank_id.title(), 600, public_key=keys[bank_id].public_key)
    pump(apps, read)
    gp, college = banks["gp"], banks["college"]
    for member in ("ann", "bob"):
        gp.open_member(member, member.title(), "person")
        college.open_member(member, member.title(), "person")
    gp.exchange("bob", "ann", 120, "lift to the hospital")
    college.exchange("ann", "bob", 45, "ironing")
    for minutes, payee in ((90, "bob"), (30, "nobody"), (15, "ann")):
        gp.request_transfer("ann", "college", payee, minutes, f"course {minutes}")
    college.request_transfer("bob", "gp", "ann", 20, "a lift back")
    pump(apps, read)
    checkpointers = {b: Checkpointer(banks[b], keys[b]) for b in BANKS}
    for checkpointer in checkpointers.values():
        checkpointer.checkpoint()
    pump(apps, read)
    cycle = clearing.open_settlement()
    for obligation in cycle.obligations:
        creditor = obligation.creditor
        signed = confirmation_payload(creditor, cycle.settlement_id, obligation.number)
        signature = keys[creditor].sign(signed)
        clearing.confirm_obligation(cycle.settlement_id, obligation.number, creditor, signature)
    pump(apps, read)
    # gp rotates its key: its later checkpoints are signed with the new one.
    rotated = SigningKey.generate()
    sent = gp.find(outbox_id("gp", CLEARING), Outbox)
    until = sent.queued if sent is not None else 0
    signature = keys["gp"].sign(rotation_payload("gp", rotated.public_key, until))
    clearing.rotate_key("gp", rotated.public_key, until, signature)
    keys["gp"] = rotated
    checkpointers["gp"] = Checkpointer(gp, rotated)
    gp.exchange("ann", "bob", 10, "tea")
    for checkpointer in checkpointers.values():
        checkpointer.checkpoint()
    pump(apps, read)
    for app in apps.values():
        app.close()
    for bank_id, key in keys.items():
        key.save(directory / f"{bank_id}.key")
    return directory


@pytest.fixture
def stores(written: Path, tmp_path: Path) -> Path:
    """A copy of the written federation, for this test alone to damage."""
    for path in written.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path


def run_audit(directory: Path) -> FederationAudit:
    clearing_log = open_event_log(store(directory, "clearing"), application=Clearing.name)
    bank_logs = {b: open_event_log(store(directory, b)) for b in BANKS}
    try:
        return audit_federation(
            clearing_log,
            bank_logs,
            lambda _, log, observe: audit_bank(
                log, default_overdraft_minutes=DEFAULT_OVERDRAFT_MINUTES, observe=observe
            ),
        )
    finally:
        for log in (clearing_log, *bank_logs.values()):
            log.close()


def rules(result: FederationAudit) -> set[str]:
    return {p.rule for p in result.problems}


def checkpoints_of(directory: Path, bank_id: str) -> list[int]:
    clearing = Clearing(parse_store_url(store(directory, "clearing")))
    try:
        return [position for position, _, _ in clearing.checkpoints(bank_id)]
    finally:
        clearing.close()


def edit(directory: Path, name: str, change: Callable[[sqlite3.Connection], None]) -> None:
    with closing(sqlite3.connect(directory / f"{name}.db")) as conn:
        change(conn)
        conn.commit()


def rows(conn: sqlite3.Connection, topic_like: str) -> list[tuple[int, bytes]]:
    return conn.execute(
        "SELECT rowid, state FROM stored_events WHERE topic LIKE ? ORDER BY rowid", (topic_like,)
    ).fetchall()


def replace_in(conn: sqlite3.Connection, rowid: int, old: bytes, new: bytes) -> None:
    (state,) = conn.execute("SELECT state FROM stored_events WHERE rowid = ?", (rowid,)).fetchone()
    assert old in state
    conn.execute(
        "UPDATE stored_events SET state = ? WHERE rowid = ?", (state.replace(old, new), rowid)
    )


def change_memo(conn: sqlite3.Connection) -> None:
    """The first credit's memo, in place: no rule of the bank's own can tell."""
    rowid = rows(conn, "%Account.Credited")[0][0]
    replace_in(conn, rowid, b"lift to the hospital", b"lift to the station")


def delete_first(topic_like: str) -> Callable[[sqlite3.Connection], None]:
    def delete(conn: sqlite3.Connection) -> None:
        rowid = rows(conn, topic_like)[0][0]
        conn.execute("DELETE FROM stored_events WHERE rowid = ?", (rowid,))

    return delete


def test_a_federation_at_rest_passes_every_check(stores: Path) -> None:
    result = run_audit(stores)

    assert result.problems == []
    assert all(audit.ok for audit in result.banks.values())
    assert result.ok
    assert sum(result.positions.values()) == 0
    assert result.checkpoints == {"gp": 2, "college": 2}
    # The transfer to "nobody" aborted; the others committed, then a cycle settled them.
    assert result.banks["gp"].balances["ann"].posted_minutes == 120 - 90 - 15 - 10 + 20


def test_an_edit_the_banks_own_rules_cannot_see_is_caught_by_the_signed_checkpoint(
    stores: Path,
) -> None:
    first_checkpoint = checkpoints_of(stores, "gp")[0]
    edit(stores, "gp", change_memo)

    result = run_audit(stores)

    assert result.banks["gp"].ok  # a changed memo breaks no rule of the bank's own
    [problem] = result.problems
    assert problem.rule == CHECKPOINT
    assert problem.position == first_checkpoint
    assert "gp" in problem.event
    assert "does not hash to the signed checkpoint" in problem.detail


def test_an_amount_rewritten_consistently_with_the_banks_own_checkpoint_records_is_caught(
    stores: Path,
) -> None:
    """The editor changes both halves of an exchange (double entry still holds), and rewrites
    the bank's own copy of its checkpoints to the new chain, signed with the bank's own key:
    the clearing house's copies still tell."""
    key = SigningKey.load(stores / "gp.key")  # the editor has the bank's own key

    def rewrite(c: sqlite3.Connection) -> None:
        debit = rows(c, "%Account.Debited")[0][0]
        credit = rows(c, "%Account.Credited")[0][0]
        replace_in(c, debit, b'"minutes":120', b'"minutes":100')
        replace_in(c, credit, b'"minutes":120', b'"minutes":100')
        c.commit()
        heads = dict(rolling_hashes(_notifications(c)))
        for rowid, state in rows(c, "%Outbox.Queued"):
            message = json.loads(state)["message"]
            if message.get("type") != "checkpoint.published.v1":
                continue
            position = message["position"]
            new_hash = heads[position].hex()
            signature = key.sign(checkpoint_payload("gp", position, new_hash))
            replace_in(c, rowid, message["chain_hash"].encode(), new_hash.encode())
            replace_in(c, rowid, message["signature"].encode(), signature.encode())

    edit(stores, "gp", rewrite)
    result = run_audit(stores)

    assert result.banks["gp"].ok
    assert result.banks["gp"].balances["ann"].posted_minutes == 100 - 90 - 15 - 10 + 20
    assert [p.rule for p in result.problems] == [CHECKPOINT]


def test_a_deleted_event_is_caught_by_the_bank_and_by_the_checkpoint(stores: Path) -> None:
    edit(stores, "gp", delete_first("%Account.Credited"))

    result = run_audit(stores)

    assert not result.banks["gp"].ok
    assert CHECKPOINT in rules(result)
    assert not result.ok


def test_two_events_swapped_are_caught_by_the_checkpoint(stores: Path) -> None:
    def swap(c: sqlite3.Connection) -> None:
        (a, state_a), (b, state_b) = rows(c, "%Account.Credited")[:2]
        c.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (state_b, a))
        c.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (state_a, b))

    edit(stores, "college", swap)

    assert CHECKPOINT in rules(run_audit(stores))


def test_a_checkpoint_whose_signature_was_changed_at_the_clearing_house_is_reported(
    stores: Path,
) -> None:
    def forge(c: sqlite3.Connection) -> None:
        rowid, state = rows(c, "%CheckpointLog.Recorded")[0]
        signature = json.loads(state)["signature"]
        replace_in(c, rowid, signature.encode(), (signature[:-4] + "AAA=").encode())

    edit(stores, "clearing", forge)
    [problem] = run_audit(stores).problems

    assert problem.rule == CHECKPOINT
    assert "signature does not verify" in problem.detail


def test_a_commit_missing_from_the_clearing_house_breaks_invariant_4(stores: Path) -> None:
    edit(stores, "clearing", delete_first("%Transfer.Committed"))

    problems = [p for p in run_audit(stores).problems if p.rule == INVARIANT_4]

    assert problems
    assert all("at the clearing house" in p.detail for p in problems)


def test_a_position_changed_at_the_clearing_house_breaks_invariants_2_and_3(
    stores: Path,
) -> None:
    def credit_more(c: sqlite3.Connection) -> None:
        rowid, state = rows(c, "%MemberBank.Credited")[0]
        minutes = json.loads(state)["minutes"]
        replace_in(c, rowid, f'"minutes":{minutes}'.encode(), f'"minutes":{minutes + 5}'.encode())

    edit(stores, "clearing", credit_more)

    assert {INVARIANT_2, INVARIANT_3} <= rules(run_audit(stores))


def test_the_cli_audits_a_federation_and_exits_0_1_or_2(stores: Path) -> None:
    def audit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TIMEBANK), "audit", "federation", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    explicit = ["--clearing-store", store(stores, "clearing")]
    explicit += [arg for b in BANKS for arg in ("--bank", f"{b}={store(stores, b)}")]
    passed = audit(*explicit, "--format", "json")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    verdict = json.loads(passed.stdout)
    assert verdict["ok"] is True
    assert set(verdict["banks"]) == set(BANKS)

    edit(stores, "gp", change_memo)
    failed = audit(*explicit)
    assert failed.returncode == 1
    assert "checkpoint" in failed.stdout
    assert "FAILED" in failed.stdout

    missing = audit(
        "--clearing-store", store(stores, "nowhere"), "--bank", f"gp={store(stores, 'gp')}"
    )
    assert missing.returncode == 2
    assert "no SQLite file" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert not (stores / "nowhere.db").exists()


def _notifications(conn: sqlite3.Connection) -> list[Any]:
    """The log as the chain reads it, straight from the SQLite table."""
    return [
        Notification(
            id=rowid,
            originator_id=UUID(originator),
            originator_version=version,
            topic=topic,
            state=state,
        )
        for rowid, originator, version, topic, state in conn.execute(
            "SELECT rowid, originator_id, originator_version, topic, state FROM stored_events "
            "ORDER BY rowid"
        )
    ]


def test_a_federation_audit_in_a_terminal_shows_progress_and_a_verdict(stores: Path) -> None:
    argv = [str(TIMEBANK), "audit", "federation", "--clearing-store", store(stores, "clearing")]
    argv += [arg for b in BANKS for arg in ("--bank", f"{b}={store(stores, b)}")]

    code, output = run_in_terminal(argv, stores)

    assert code == 0, output
    assert b"replaying" in output
    assert b"every checkpoint hold" in output
