"""Auditing real bank logs: written by the real Ledger on SQLite and PostgreSQL (local exchanges,
holds, cross-bank transfers driven by the clearing house's messages, a settlement), replayed
from the store; and damaged in the SQLite file itself, each damage named by its rule and the
position of the event where it shows."""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql

from services.audit.eventlog import (
    POSTGRES_EVENTS_TABLE,
    EventLog,
    StoredRow,
    UnusableStore,
    open_event_log,
)
from services.audit.findings import (
    DECODE,
    DOUBLE_ENTRY,
    EVENT_ORDER,
    INVARIANT_1,
    LOG_GAP,
    VERSION_SEQUENCE,
    BankAudit,
)
from services.audit.replay import audit_bank
from services.common.chain import rolling_hashes
from services.common.stores import parse_store_url
from services.ledger.application import (
    Ledger,
)
from services.ledger.domain_terms import (
    DEFAULT_OVERDRAFT_MINUTES,
)
from services.ledger.writer import (
    IdempotencyKey,
)
from shared.protocol import (
    CLEARING,
    AnyMessage,
    BankEntry,
    CreditRequested,
    DirectoryChanged,
    Envelope,
    SettlementCompleted,
    TransferAborted,
    TransferCommitted,
)
from tests.conftest import StoreURLFactory


@dataclass
class Federation:
    """Two banks' ledgers, and the clearing house's messages to them, sent by hand."""

    gp: Ledger
    college: Ledger
    urls: dict[str, str]
    seq: dict[str, int] = field(default_factory=lambda: {"gp": 0, "college": 0})

    def send(self, bank: str, *messages: AnyMessage) -> None:
        """Deliver messages from the clearing house in one batch (one save at the bank)."""
        envelopes = []
        for message in messages:
            self.seq[bank] += 1
            envelopes.append(
                Envelope(source=CLEARING, destination=bank, seq=self.seq[bank], message=message)
            )
        ledger = self.gp if bank == "gp" else self.college
        outcomes = ledger.receive(envelopes)
        assert all(o.outcome.value == "applied" for o in outcomes), outcomes

    def credit_requested(self, transfer_id: str, minutes: int, payee: str = "bob") -> AnyMessage:
        return CreditRequested(
            transfer_id=transfer_id,
            payer_bank="gp",
            payer="maya",
            payee=payee,
            minutes=minutes,
            memo="a course",
        )

    def committed(self, transfer_id: str, minutes: int) -> AnyMessage:
        return TransferCommitted(
            transfer_id=transfer_id, payer_bank="gp", payee_bank="college", minutes=minutes
        )


@pytest.fixture
def federation(new_store_url: StoreURLFactory) -> Iterator[Federation]:
    """gp (maya, ali with no overdraft, tom) and college (bob), both in the directory."""
    urls = {bank: new_store_url(bank) for bank in ("gp", "college")}
    fed = Federation(
        Ledger("gp", parse_store_url(urls["gp"])),
        Ledger("college", parse_store_url(urls["college"])),
        urls,
    )
    directory = DirectoryChanged(
        banks=[BankEntry(bank_id=b, name=b.title(), status="active") for b in ("gp", "college")]
    )
    fed.send("gp", directory)
    fed.send("college", directory)
    fed.gp.open_member("maya", "Maya", "person")
    fed.gp.open_member("ali", "Ali", "person", overdraft_limit_minutes=0)
    fed.gp.open_member("tom", "Tom", "organisation", overdraft_limit_minutes=120)
    fed.college.open_member("bob", "Bob", "person")
    yield fed
    fed.gp.close()
    fed.college.close()


def busy_day(fed: Federation) -> None:
    """Everything a bank's log can hold: exchanges, local holds posted and voided, transfers
    committed, aborted and pending on both sides, batches, a refused payee, a settlement."""
    gp = fed.gp
    lift = IdempotencyKey("lift-1", "fingerprint-1")
    gp.exchange("maya", "ali", 60, "a lift", idempotency=lift)
    gp.exchange("maya", "ali", 60, "a lift", idempotency=lift)  # replayed: nothing new
    gp.exchange("tom", "maya", 45, "gardening")
    gp.place_hold("maya", "h-posted", 20, "ali", "bike repair")
    gp.post_hold("maya", "h-posted")
    gp.place_hold("ali", "h-voided", 20, "tom", "cancelled")
    gp.void_hold("ali", "h-voided")
    gp.place_hold("tom", "h-open", 15, "maya", "not done yet")
    committed = gp.request_transfer("maya", "college", "bob", 90, "a course").value.transfer_id
    aborted = gp.request_transfer("maya", "college", "bob", 30, "a book").value.transfer_id
    gp.request_transfer("ali", "college", "bob", 5, "pending")
    # The payee's side first, as the clearing house runs it.
    fed.send("college", fed.credit_requested(committed, 90))
    fed.send("college", fed.committed(committed, 90))
    fed.send("gp", fed.committed(committed, 90))
    # A credit request and its abort in one batch: one save at college.
    fed.send(
        "college",
        fed.credit_requested(aborted, 30),
        TransferAborted(transfer_id=aborted, reason="deadline_exceeded"),
    )
    fed.send("gp", TransferAborted(transfer_id=aborted, reason="deadline_exceeded"))
    # A payee college does not know, and a credit prepared but not yet decided.
    fed.send("college", fed.credit_requested("t-unknown", 10, payee="zed"))
    fed.send("college", fed.credit_requested("t-pending", 40))
    # Two transfers prepared and committed in one batch.
    fed.send(
        "college",
        fed.credit_requested("t-a", 11),
        fed.credit_requested("t-b", 12),
        fed.committed("t-a", 11),
        fed.committed("t-b", 12),
    )
    fed.send("gp", SettlementCompleted(settlement_id=1, paid_minutes=90, received_minutes=0))


def audit(url: str, **options: Any) -> BankAudit:
    log = open_event_log(url)
    try:
        return audit_bank(log, default_overdraft_minutes=DEFAULT_OVERDRAFT_MINUTES, **options)
    finally:
        log.close()


def views(ledger: Ledger, result: BankAudit) -> dict[str, tuple[int, int, int, int | None]]:
    """Every account the audit rebuilt, as the ledger itself shows it."""
    shown = {}
    for member_id in result.balances:
        view = ledger.get_member(member_id)
        shown[member_id] = (
            view.balance_minutes,
            view.held_minutes,
            view.available_minutes,
            view.overdraft_limit_minutes,
        )
    return shown


def rebuilt(result: BankAudit) -> dict[str, tuple[int, int, int, int | None]]:
    return {
        m: (b.posted_minutes, b.held_minutes, b.available_minutes, b.overdraft_limit_minutes)
        for m, b in result.balances.items()
    }


# Logs the ledger wrote.


def test_the_payer_banks_log_passes_and_rebuilds_what_the_ledger_shows(
    federation: Federation,
) -> None:
    busy_day(federation)
    result = audit(federation.urls["gp"])
    assert result.problems == []
    assert result.ok
    assert result.bank == "gp"
    assert set(result.balances) == {"maya", "ali", "tom", "federation", "settlement"}
    assert rebuilt(result) == views(federation.gp, result)
    assert result.balances["settlement"].posted_minutes == 90
    assert result.balances["ali"].held_minutes == 5


def test_the_payee_banks_log_passes_and_rebuilds_what_the_ledger_shows(
    federation: Federation,
) -> None:
    busy_day(federation)
    result = audit(federation.urls["college"])
    assert result.problems == []
    assert result.bank == "college"
    assert rebuilt(result) == views(federation.college, result)
    assert result.balances["bob"].posted_minutes == 90 + 11 + 12
    assert result.balances["federation"].held_minutes == 40


def test_the_audit_reads_every_event_in_small_batches_too(federation: Federation) -> None:
    busy_day(federation)
    whole = audit(federation.urls["gp"])
    small = audit(federation.urls["gp"], batch_size=3)
    assert small == whole
    assert whole.events == federation.gp.recorder.max_notification_id()


def test_the_chain_head_is_that_of_the_whole_log_as_stored(federation: Federation) -> None:
    busy_day(federation)
    result = audit(federation.urls["gp"])
    rows = federation.gp.recorder.select_notifications(start=1, limit=100_000)
    *_, (position, head) = rolling_hashes(rows)
    assert (result.chain_position, result.chain_head) == (position, head.hex())


def test_the_rows_read_are_those_eventsourcings_recorder_reads(federation: Federation) -> None:
    """The audit reads the table itself, as tuples; every row is the recorder's, field by field,
    from any position and in batches of any size."""
    busy_day(federation)
    expected = [
        (n.id, n.originator_id, n.originator_version, n.topic, n.state)
        for n in federation.gp.recorder.select_notifications(start=1, limit=100_000)
    ]
    log = open_event_log(federation.urls["gp"])
    try:
        for start, batch_size in ((1, 5_000), (1, 7), (len(expected) // 2, 3)):
            read = [row for batch in log.batches(start, batch_size) for row in batch]
            rows = [row for row in read if isinstance(row, StoredRow)]
            assert rows == read
            assert rows == [row for row in expected if row[0] >= start]
            assert all(isinstance(row.originator_id, UUID) for row in rows)
    finally:
        log.close()


def test_the_fast_decoder_agrees_with_the_ledgers_mapper_on_every_event(
    federation: Federation,
) -> None:
    busy_day(federation)
    log = open_event_log(federation.urls["gp"])
    try:
        for row in federation.gp.recorder.select_notifications(start=1, limit=100_000):
            expected = dict(vars(federation.gp.mapper.to_domain_event(row)))
            decoded = log.decode(row)
            for attribute in ("originator_id", "originator_version"):
                expected.pop(attribute)
                decoded.pop(attribute, None)
            assert decoded == expected, row.topic
    finally:
        log.close()


def test_balances_until_a_moment_are_those_the_ledger_showed_then(
    federation: Federation,
) -> None:
    gp = federation.gp
    gp.exchange("maya", "ali", 60, "a lift")
    gp.request_transfer("maya", "college", "bob", 30, "a book")
    time.sleep(0.01)
    moment = datetime.now(UTC)
    then = {m: gp.get_member(m) for m in ("maya", "ali", "tom", "federation")}
    time.sleep(0.01)
    gp.exchange("ali", "tom", 25, "shopping")
    gp.exchange("tom", "maya", 100, "a course")
    result = audit(federation.urls["gp"], until=moment)
    assert result.ok, result.problems
    assert result.until == moment
    for member_id, view in then.items():
        balance = result.balances[member_id]
        assert (balance.posted_minutes, balance.held_minutes) == (
            view.balance_minutes,
            view.held_minutes,
        )
    assert audit(federation.urls["gp"]).balances["ali"].posted_minutes == 35


def test_the_audit_creates_nothing_and_changes_nothing_in_the_store(
    federation: Federation,
) -> None:
    busy_day(federation)
    federation.gp.close()
    url = federation.urls["gp"]
    before = _store_fingerprint(url)
    audit(url)
    assert _store_fingerprint(url) == before


def _store_fingerprint(url: str) -> Any:
    store = parse_store_url(url)
    if store.env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite":
        return hashlib.sha256(Path(store.env["SQLITE_DBNAME"]).read_bytes()).hexdigest()
    env = store.env
    with psycopg.connect(
        dbname=env["POSTGRES_DBNAME"], host=env["POSTGRES_HOST"], port=env["POSTGRES_PORT"],
        user=env["POSTGRES_USER"], password=env["POSTGRES_PASSWORD"],
    ) as conn:  # fmt: skip
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1",
            (env["POSTGRES_SCHEMA"],),
        ).fetchall()
        events = conn.execute(
            sql.SQL("SELECT count(*), max(notification_id) FROM {}").format(
                sql.Identifier(env["POSTGRES_SCHEMA"], POSTGRES_EVENTS_TABLE)
            )
        ).fetchone()
    return tables, events


# Stores that cannot be audited.


def test_a_missing_sqlite_file_is_unusable_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "bank.db"
    with pytest.raises(UnusableStore, match="no SQLite file at"):
        open_event_log(f"sqlite:///{path}")
    assert not path.parent.exists()


def test_a_file_that_is_not_a_database_is_unusable(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not a database, " * 100)
    with pytest.raises(UnusableStore, match="cannot be read"):
        open_event_log(f"sqlite:///{path}")


def test_a_sqlite_database_without_an_events_table_is_unusable_and_left_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "other.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE other (x)")
        conn.commit()
    before = path.read_bytes()
    with pytest.raises(UnusableStore, match="no stored_events table"):
        open_event_log(f"sqlite:///{path}")
    assert path.read_bytes() == before


@pytest.mark.parametrize("url", ["ftp://x", "sqlite://host/x.db", "memory://"])
def test_a_url_that_names_no_store_to_audit_is_unusable(url: str) -> None:
    with pytest.raises(UnusableStore):
        open_event_log(url)


def test_an_unreachable_postgresql_is_unusable_quickly() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(UnusableStore, match="cannot use PostgreSQL"):
        open_event_log(f"postgresql://postgres@127.0.0.1:{port}/test")
    assert time.monotonic() - started < 10


@pytest.mark.postgres
def test_a_postgresql_schema_without_the_ledgers_table_is_unusable_and_not_created(
    postgres_url: str,
) -> None:
    schema = f"tb_audit_missing_{secrets.token_hex(4)}"
    with pytest.raises(UnusableStore, match=f"no {POSTGRES_EVENTS_TABLE} table"):
        open_event_log(f"{postgres_url}?schema={schema}")
    with psycopg.connect(postgres_url) as conn:
        found = conn.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,)
        ).fetchone()
    assert found is None


def test_another_applications_log_opens_by_its_name(store_url: str) -> None:
    from services.clearing.application import Clearing

    clearing = Clearing(parse_store_url(store_url))
    clearing.admit_bank("gp", "GP", 600)
    written = clearing.recorder.max_notification_id()
    clearing.close()
    log = open_event_log(store_url, application=Clearing.name)
    try:
        rows = [row for batch in log.batches() for row in batch]
        assert len(rows) == written
        assert all(isinstance(log.decode(row), dict) for row in rows)  # type: ignore[arg-type]
    finally:
        log.close()


@pytest.mark.postgres
def test_postgresql_positions_are_not_expected_to_be_contiguous(postgres_schema_url: str) -> None:
    ledger = Ledger("gp", parse_store_url(postgres_schema_url))
    ledger.close()
    log = open_event_log(postgres_schema_url)
    try:
        assert isinstance(log, EventLog)
        assert not log.contiguous_ids
    finally:
        log.close()


# Damage done to a SQLite file behind the ledger's back.


@pytest.fixture
def sqlite_bank(tmp_path: Path) -> SQLiteBank:
    return SQLiteBank(tmp_path / "gp.db")


class SQLiteBank:
    """A bank's log written by the real Ledger, then edited with sqlite3 as an intruder would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        ledger = Ledger("gp", parse_store_url(self.url))
        for member_id in ("maya", "ali", "tom"):
            ledger.open_member(member_id, member_id.title(), "person")
        ledger.exchange("maya", "ali", 60, "a lift")
        ledger.exchange("maya", "tom", 40, "gardening")
        ledger.exchange("ali", "tom", 15, "shopping")
        ledger.close()

    def rows(self) -> list[tuple[int, str, int, str, dict[str, Any]]]:
        with closing(sqlite3.connect(self.path)) as conn:
            found = conn.execute(
                "SELECT rowid, originator_id, originator_version, topic, state "
                "FROM stored_events ORDER BY rowid"
            ).fetchall()
        return [(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in found]

    def find(self, topic: str, nth: int = 0) -> int:
        """The position of the nth event whose topic ends with ``topic``."""
        return [r[0] for r in self.rows() if r[3].endswith(topic)][nth]

    def execute(self, statement: str, *params: Any) -> None:
        with closing(sqlite3.connect(self.path)) as conn:
            conn.execute(statement, params)
            conn.commit()

    def set_state(self, position: int, state: bytes) -> None:
        self.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", state, position)

    def edit(self, position: int, **changes: Any) -> None:
        state = {r[0]: r[4] for r in self.rows()}[position]
        state.update(changes)
        self.set_state(position, json.dumps(state).encode())

    def audit(self) -> BankAudit:
        return audit(self.url)


def rules_at(result: BankAudit) -> list[tuple[int | None, str]]:
    return [(p.position, p.rule) for p in result.problems]


def test_the_undamaged_sqlite_log_passes(sqlite_bank: SQLiteBank) -> None:
    assert sqlite_bank.audit().ok


def test_an_amount_edited_in_the_file_fails_the_double_entry_at_that_event(
    sqlite_bank: SQLiteBank,
) -> None:
    credit = sqlite_bank.find("Account.Credited", 1)
    sqlite_bank.edit(credit, minutes=400)
    result = sqlite_bank.audit()
    assert not result.ok
    assert (credit, DOUBLE_ENTRY) in rules_at(result)
    [problem] = [p for p in result.problems if p.rule == DOUBLE_ENTRY]
    assert "Account.Credited" in problem.event
    assert "debited 40 minutes" in problem.detail
    assert "credited 400" in problem.detail


def test_an_amount_edited_in_the_file_unbalances_the_books_at_that_event(
    sqlite_bank: SQLiteBank,
) -> None:
    credit = sqlite_bank.find("Account.Credited", 1)
    sqlite_bank.edit(credit, minutes=400)
    result = sqlite_bank.audit()
    assert (credit, INVARIANT_1) in rules_at(result)
    assert result.balances["tom"].posted_minutes == 400 + 15


def test_an_event_deleted_from_the_file_breaks_its_aggregates_version_sequence(
    sqlite_bank: SQLiteBank,
) -> None:
    first_debit = sqlite_bank.find("Account.Debited", 0)
    second_debit = sqlite_bank.find("Account.Debited", 1)
    sqlite_bank.execute("DELETE FROM stored_events WHERE rowid = ?", first_debit)
    result = sqlite_bank.audit()
    assert (second_debit, VERSION_SEQUENCE) in rules_at(result)


def test_an_event_deleted_from_the_file_leaves_a_gap_in_the_log(sqlite_bank: SQLiteBank) -> None:
    debit = sqlite_bank.find("Account.Debited", 0)
    sqlite_bank.execute("DELETE FROM stored_events WHERE rowid = ?", debit)
    result = sqlite_bank.audit()
    assert (debit + 1, LOG_GAP) in rules_at(result)


def test_two_events_reordered_in_the_file_are_out_of_order(sqlite_bank: SQLiteBank) -> None:
    # maya's two debits, their stored states swapped: each row keeps its version.
    first = sqlite_bank.find("Account.Debited", 0)
    second = sqlite_bank.find("Account.Debited", 1)
    states = {r[0]: json.dumps(r[4]).encode() for r in sqlite_bank.rows()}
    sqlite_bank.set_state(first, states[second])
    sqlite_bank.set_state(second, states[first])
    result = sqlite_bank.audit()
    assert (second, EVENT_ORDER) in rules_at(result)


def test_an_undecodable_event_in_the_file_is_reported_not_raised(
    sqlite_bank: SQLiteBank,
) -> None:
    credit = sqlite_bank.find("Account.Credited", 0)
    sqlite_bank.set_state(credit, b"\xff\xfe not json")
    assert (credit, DECODE) in rules_at(sqlite_bank.audit())


def test_a_row_with_a_garbled_originator_id_is_reported_and_the_rest_still_read(
    sqlite_bank: SQLiteBank,
) -> None:
    credit = sqlite_bank.find("Account.Credited", 0)
    sqlite_bank.execute(
        "UPDATE stored_events SET originator_id = 'not-a-uuid' WHERE rowid = ?", credit
    )
    result = sqlite_bank.audit()
    assert (credit, DECODE) in rules_at(result)
    assert result.events == len(sqlite_bank.rows())
