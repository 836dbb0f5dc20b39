"""The replay's rules, one by one, on logs written in memory by the ledger's own aggregates and
mapper (no store): a valid log passes, and each kind of damage is named by its rule and the
position of the event where it shows."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    Notification,
    UUIDAsHex,
)
from eventsourcing.utils import get_topic

from services.audit.eventlog import UnreadableRow
from services.audit.findings import (
    ACCOUNT,
    DECODE,
    DOUBLE_ENTRY,
    EVENT_ORDER,
    HOLD,
    IDENTITY,
    INVARIANT_1,
    INVARIANT_5,
    LOG_GAP,
    MAX_PROBLEMS,
    TRANSFER,
    VERSION_SEQUENCE,
    BankAudit,
)
from services.audit.replay import replay_events
from services.audit.state_decoder import StateDecoder
from services.common.idempotency import IdempotencyRecord
from services.common.outbox import Outbox
from services.ledger.domain import (
    Account,
    BankPolicy,
    CrossBankTransfer,
    post_hold_to_counterparty,
)
from services.ledger.domain_terms import (
    SYSTEM_ACCOUNTS,
    Role,
)
from shared.protocol import CLEARING

LIMIT = 600


def ledger_mapper() -> Mapper[Any]:
    """A mapper configured as the ledger's: eventsourcing's default transcodings, plain JSON."""
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return Mapper(transcoder=transcoder)


class Log:
    """A bank's notification log kept in a list: saves append what the aggregates recorded."""

    def __init__(self, mapper: Mapper[Any] | None = None) -> None:
        self.mapper = mapper or ledger_mapper()
        self.rows: list[Notification] = []
        self.accounts: dict[str, Account] = {}
        for member_id in SYSTEM_ACCOUNTS:
            self.open(member_id, kind="system")

    def save(self, *aggregates: Aggregate) -> list[int]:
        """Append each aggregate's new events, in that order; returns their positions."""
        positions = []
        for aggregate in aggregates:
            for event in aggregate.collect_events():
                stored = self.mapper.to_stored_event(event)
                position = (self.rows[-1].id if self.rows else 0) + 1
                self.rows.append(
                    Notification(
                        id=position,
                        originator_id=stored.originator_id,
                        originator_version=stored.originator_version,
                        topic=stored.topic,
                        state=stored.state,
                    )
                )
                positions.append(position)
        return positions

    def open(self, member_id: str, kind: str = "person", limit: int | None = None) -> int:
        account = Account.open(member_id, member_id.title(), kind, limit)
        self.accounts[member_id] = account
        return self.save(account)[0]

    def exchange(self, payer: str, payee: str, minutes: int) -> tuple[int, int]:
        """Debit and credit in one save; returns (debit position, credit position)."""
        entry_id = str(uuid4())
        debited, credited = self.accounts[payer], self.accounts[payee]
        debited.debit(entry_id, minutes, payee, "help", "exchange", LIMIT)
        credited.credit(entry_id, minutes, payer, "help", "exchange")
        debit, credit = self.save(debited, credited)
        return debit, credit

    def place_hold(self, member_id: str, hold_id: str, minutes: int, counterparty: str) -> int:
        account = self.accounts[member_id]
        account.place_hold(hold_id, minutes, counterparty, "ride", "hold", LIMIT)
        return self.save(account)[0]

    def post_hold(self, member_id: str, hold_id: str) -> tuple[int, int]:
        account = self.accounts[member_id]
        other = post_hold_to_counterparty(account, hold_id, self.accounts.__getitem__)
        posted, credited = self.save(account, other)
        return posted, credited

    def void_hold(self, member_id: str, hold_id: str) -> int:
        account = self.accounts[member_id]
        account.void_hold(hold_id)
        return self.save(account)[0]

    def request_transfer(self, payer: str, minutes: int) -> CrossBankTransfer:
        """The payer's bank: hold and Started in one save, as Ledger.request_transfer."""
        transfer = CrossBankTransfer(
            transfer_id=str(uuid4()),
            role=Role.PAYER,
            member_id=payer,
            other_bank="college",
            other_member="bob",
            minutes=minutes,
            memo="a course",
        )
        account = self.accounts[payer]
        account.place_hold(
            transfer.transfer_id, minutes, "federation", "a course", "transfer", LIMIT,
            party=transfer.party,
        )  # fmt: skip
        self.save(account, transfer)
        return transfer

    def decide(self, transfer: CrossBankTransfer, *, commit: bool) -> list[int]:
        """The clearing house's decision applied, as Ledger._on_decision saves it."""
        held_on = self.accounts[transfer.held_on]
        if commit:
            other = post_hold_to_counterparty(
                held_on, transfer.transfer_id, self.accounts.__getitem__
            )
            transfer.commit()
            return self.save(transfer, held_on, other)
        held_on.void_hold(transfer.transfer_id)
        transfer.abort("payee_refused")
        return self.save(transfer, held_on)

    def credit_requested(self, payee: str, minutes: int) -> CrossBankTransfer:
        """The payee's bank: Started and a pending credit held on `federation`."""
        transfer = CrossBankTransfer(
            transfer_id=str(uuid4()),
            role=Role.PAYEE,
            member_id=payee,
            other_bank="gp",
            other_member="maya",
            minutes=minutes,
            memo="a course",
        )
        federation = self.accounts["federation"]
        federation.place_hold(
            transfer.transfer_id, minutes, payee, "a course", "transfer", LIMIT,
            party=transfer.party,
        )  # fmt: skip
        self.save(transfer, federation)
        return transfer

    # Damage, as an editor of the store could do it.

    def position(self, topic: type, member_id: str | None = None, nth: int = 0) -> int:
        """The position of the nth event of that type (on that member's account)."""
        wanted = get_topic(topic)
        account_id = self.accounts[member_id].id if member_id else None
        found = [
            row.id
            for row in self.rows
            if row.topic == wanted and (account_id is None or row.originator_id == account_id)
        ]
        return found[nth]

    def _index(self, position: int) -> int:
        return next(i for i, row in enumerate(self.rows) if row.id == position)

    def edit(self, position: int, **changes: Any) -> None:
        """Change fields of an event's stored state."""
        i = self._index(position)
        state = json.loads(self.rows[i].state)
        state.update(changes)
        self.rows[i] = dataclasses.replace(self.rows[i], state=json.dumps(state).encode())

    def replace(self, position: int, **columns: Any) -> None:
        i = self._index(position)
        self.rows[i] = dataclasses.replace(self.rows[i], **columns)

    def delete(self, position: int) -> None:
        del self.rows[self._index(position)]

    def swap_states(self, first: int, second: int) -> None:
        i, j = self._index(first), self._index(second)
        a, b = self.rows[i].state, self.rows[j].state
        self.rows[i] = dataclasses.replace(self.rows[i], state=b)
        self.rows[j] = dataclasses.replace(self.rows[j], state=a)

    def audit(self, **options: Any) -> BankAudit:
        options.setdefault("default_overdraft_minutes", LIMIT)
        return replay_events([self.rows], StateDecoder(self.mapper), **options)


def problems(result: BankAudit, rule: str) -> list[tuple[int | None, str]]:
    return [(p.position, p.detail) for p in result.problems if p.rule == rule]


def positions(result: BankAudit, rule: str) -> list[int | None]:
    return [p.position for p in result.problems if p.rule == rule]


@pytest.fixture
def log() -> Log:
    """maya, tom and ali; maya has paid tom 90 minutes and ali 30."""
    book = Log()
    for member_id in ("maya", "tom", "ali"):
        book.open(member_id)
    book.exchange("maya", "tom", 90)
    book.exchange("maya", "ali", 30)
    return book


# A valid log.


def test_a_valid_log_passes_and_rebuilds_every_balance(log: Log) -> None:
    log.place_hold("tom", "h1", 20, "ali")
    log.post_hold("tom", "h1")
    log.place_hold("ali", "h2", 10, "maya")
    log.void_hold("ali", "h2")
    log.place_hold("maya", "h3", 15, "tom")
    committed = log.request_transfer("maya", 40)
    log.decide(committed, commit=True)
    aborted = log.request_transfer("tom", 25)
    log.decide(aborted, commit=False)
    log.request_transfer("ali", 5)
    result = log.audit()
    assert result.problems == []
    assert result.ok
    assert result.events == len(log.rows)
    rebuilt = {
        m: (b.posted_minutes, b.held_minutes, b.available_minutes)
        for m, b in result.balances.items()
    }
    assert rebuilt == {
        "maya": (-160, 15, -175),
        "tom": (70, 0, 70),
        "ali": (50, 5, 45),
        "federation": (40, 0, 40),
        "settlement": (0, 0, 0),
    }
    assert sum(b.posted_minutes for b in result.balances.values()) == 0


def test_rebuilt_balances_are_those_of_the_aggregates_themselves(log: Log) -> None:
    log.place_hold("tom", "h1", 20, "ali")
    result = log.audit()
    for member_id, account in log.accounts.items():
        balance = result.balances[member_id]
        assert balance.posted_minutes == account.balance_minutes
        assert balance.held_minutes == account.held_minutes
        assert balance.available_minutes == account.available_minutes
        assert balance.overdraft_limit_minutes == account.effective_limit(LIMIT)


def test_a_credit_saved_before_its_debit_is_not_an_imbalance(log: Log) -> None:
    # A save groups events by aggregate: the payee's credit may come first.
    entry_id = str(uuid4())
    log.accounts["tom"].credit(entry_id, 25, "ali", "", "exchange")
    log.accounts["ali"].debit(entry_id, 25, "tom", "", "exchange", LIMIT)
    log.save(log.accounts["tom"], log.accounts["ali"])
    assert log.audit().ok


def test_the_payee_banks_side_of_transfers_passes() -> None:
    log = Log()
    log.open("bob")
    committed = log.credit_requested("bob", 90)
    log.decide(committed, commit=True)
    aborted = log.credit_requested("bob", 30)
    log.decide(aborted, commit=False)
    log.credit_requested("bob", 10)
    result = log.audit()
    assert result.ok, result.problems
    assert result.balances["bob"].posted_minutes == 90
    assert result.balances["federation"].posted_minutes == -90
    assert result.balances["federation"].held_minutes == 10


def test_a_credit_request_and_its_abort_in_one_save_pass() -> None:
    # The transfer's events (Started, Aborted) come before the hold placed and voided on
    # federation: the transfer must not be judged before the rest of the save is read.
    log = Log()
    log.open("bob")
    transfer = CrossBankTransfer(
        transfer_id="t1",
        role=Role.PAYEE,
        member_id="bob",
        other_bank="gp",
        other_member="maya",
        minutes=30,
        memo="",
    )
    federation = log.accounts["federation"]
    federation.place_hold("t1", 30, "bob", "", "transfer", LIMIT, party=transfer.party)
    transfer.abort("deadline_exceeded")
    federation.void_hold("t1")
    log.save(transfer, federation)
    assert log.audit().ok


def test_a_refused_payee_aborts_without_a_hold() -> None:
    log = Log()
    transfer = CrossBankTransfer(
        transfer_id="t1",
        role=Role.PAYEE,
        member_id="nobody",
        other_bank="gp",
        other_member="maya",
        minutes=30,
        memo="",
    )
    transfer.abort("unknown_payee")
    log.save(transfer)
    assert log.audit().ok


def test_the_bank_is_named_by_its_outbox_to_the_clearing_house(log: Log) -> None:
    assert log.audit().bank is None
    outbox = Outbox(source="gp", destination=CLEARING)
    log.save(outbox)
    assert log.audit().bank == "gp"


def test_the_result_carries_the_chain_head_of_every_event_replayed(log: Log) -> None:
    from services.common.chain import rolling_hashes

    result = log.audit()
    *_, (position, head) = rolling_hashes(log.rows)
    assert (result.chain_position, result.chain_head) == (position, head.hex())


def test_the_json_verdict_has_the_documented_shape(log: Log) -> None:
    log.edit(log.position(Account.Credited, "tom"), minutes=91)
    verdict = log.audit().to_json()
    assert set(verdict) >= {"bank", "events", "until", "balances", "problems", "ok"}
    assert verdict["ok"] is False
    assert verdict["balances"]["tom"]["posted_minutes"] == 91
    assert set(verdict["problems"][0]) == {"position", "event", "rule", "detail"}
    json.dumps(verdict)


# Decoding.


def test_a_state_that_is_not_json_is_reported_not_raised(log: Log) -> None:
    position = log.position(Account.Debited, "maya")
    log.replace(position, state=b"\x00not json")
    result = log.audit()
    assert positions(result, DECODE) == [position]
    assert "cannot decode" in problems(result, DECODE)[0][1]


def test_a_topic_that_names_no_class_is_reported(log: Log) -> None:
    position = log.position(Account.Debited, "maya")
    log.replace(position, topic="services.ledger.domain:Account.Gifted")
    assert positions(log.audit(), DECODE) == [position]


def test_an_event_type_the_audit_cannot_fold_is_reported(log: Log) -> None:
    # A real event class, but not one the replay knows how an account changes by.
    position = log.position(Account.Debited, "maya")
    log.replace(position, topic=get_topic(Account.Entry))
    result = log.audit()
    assert positions(result, DECODE) == [position]
    assert "no rule for events" in problems(result, DECODE)[0][1]


@pytest.mark.parametrize("minutes", ["90", 90.0, -90, 0, True, None])
def test_minutes_that_are_not_a_positive_whole_number_are_reported(
    log: Log, minutes: object
) -> None:
    position = log.position(Account.Credited, "tom")
    log.edit(position, minutes=minutes)
    assert position in positions(log.audit(), DECODE)


def test_a_timestamp_that_is_not_a_moment_is_reported(log: Log) -> None:
    position = log.position(Account.Credited, "tom")
    log.edit(position, timestamp="yesterday")
    assert positions(log.audit(), DECODE) == [position]


def test_a_missing_field_is_reported(log: Log) -> None:
    position = log.position(Account.Credited, "tom")
    i = log._index(position)
    state = json.loads(log.rows[i].state)
    del state["entry_id"]
    log.replace(position, state=json.dumps(state).encode())
    result = log.audit()
    assert positions(result, DECODE) == [position]
    assert "entry_id" in problems(result, DECODE)[0][1]


def test_a_row_the_store_could_not_read_is_reported(log: Log) -> None:
    rows: list[Notification | UnreadableRow] = list(log.rows)
    rows.append(UnreadableRow(len(log.rows) + 1, "badly formed hexadecimal UUID string"))
    result = replay_events([rows], StateDecoder(log.mapper), default_overdraft_minutes=LIMIT)
    assert positions(result, DECODE) == [len(log.rows) + 1]


def test_problems_are_capped_and_the_rest_counted(log: Log) -> None:
    for i in range(MAX_PROBLEMS + 5):
        log.exchange(*(("tom", "ali") if i % 2 else ("ali", "tom")), 1)
    for row in list(log.rows[-(MAX_PROBLEMS + 5) * 2 :]):
        log.replace(row.id, state=b"garbage")
    result = log.audit()
    assert len(result.problems) == MAX_PROBLEMS
    assert result.problems_omitted > 0
    assert not result.ok


def test_the_fast_decoder_gives_what_the_mapper_gives(log: Log) -> None:
    tom, ali = log.accounts["tom"], log.accounts["ali"]
    tom.debit("e1", 5, "ali", 'braces {"a": [1]} in a memo', "exchange", LIMIT)
    ali.credit("e1", 5, "tom", 'caf\u00e9 \\ "quoted"', "exchange")
    log.save(tom, ali)
    log.place_hold("tom", "h1", 20, "ali")
    log.decide(log.request_transfer("maya", 40), commit=True)
    log.save(Outbox(source="gp", destination=CLEARING))
    log.save(IdempotencyRecord(key="k", fingerprint="f", response={"a": [1, {"b": 2}]}))
    decode = StateDecoder(log.mapper)
    for row in log.rows:
        expected = dict(vars(log.mapper.to_domain_event(row)))
        expected.pop("originator_id")
        expected.pop("originator_version")
        decoded = decode(row)
        decoded.pop("originator_id", None)
        decoded.pop("originator_version", None)
        assert decoded == expected, row.topic


def test_a_compressed_log_is_decoded_by_the_mapper_itself() -> None:
    from eventsourcing.compressor import ZlibCompressor

    log = Log(Mapper(transcoder=ledger_mapper().transcoder, compressor=ZlibCompressor()))
    log.open("maya")
    log.open("tom")
    log.exchange("maya", "tom", 5)
    result = log.audit()
    assert result.ok, result.problems
    assert result.balances["tom"].posted_minutes == 5


# The log's own sequence.


def test_a_deleted_event_makes_its_aggregates_versions_jump(log: Log) -> None:
    first = log.position(Account.Debited, "maya", 0)
    second = log.position(Account.Debited, "maya", 1)
    log.delete(first)
    result = log.audit(contiguous_ids=False)
    assert positions(result, VERSION_SEQUENCE) == [second]
    assert "events are missing" in problems(result, VERSION_SEQUENCE)[0][1]


def test_a_copied_event_repeats_a_version(log: Log) -> None:
    position = log.position(Account.Credited, "tom")
    copy = dataclasses.replace(log.rows[log._index(position)], id=len(log.rows) + 1)
    log.rows.append(copy)
    result = log.audit()
    assert positions(result, VERSION_SEQUENCE) == [copy.id]
    assert "again" in problems(result, VERSION_SEQUENCE)[0][1]


def test_a_version_that_is_not_a_number_is_reported(log: Log) -> None:
    position = log.position(Account.Credited, "tom")
    log.replace(position, originator_version="2")
    assert position in positions(log.audit(), VERSION_SEQUENCE)


def test_an_aggregate_whose_first_event_is_missing_is_reported(log: Log) -> None:
    opened = log.position(Account.Opened, "ali")
    credited = log.position(Account.Credited, "ali")
    log.delete(opened)
    result = log.audit(contiguous_ids=False)
    assert positions(result, VERSION_SEQUENCE) == [credited]
    assert positions(result, ACCOUNT) == [credited]
    assert "never opened" in problems(result, ACCOUNT)[0][1]


def test_two_swapped_events_are_out_of_time_order(log: Log) -> None:
    first = log.position(Account.Debited, "maya", 0)
    second = log.position(Account.Debited, "maya", 1)
    log.swap_states(first, second)
    result = log.audit()
    assert positions(result, EVENT_ORDER) == [second]


def test_a_gap_in_sqlite_positions_is_a_deleted_event(log: Log) -> None:
    # An idempotency record is a single-event aggregate: nothing else shows its deletion.
    position = log.save(IdempotencyRecord(key="k", fingerprint="f", response={}))[0]
    log.exchange("tom", "ali", 5)
    log.delete(position)
    result = log.audit()
    assert [p.rule for p in result.problems] == [LOG_GAP]
    assert result.problems[0].position == position + 1
    assert f"position {position} is missing" in result.problems[0].detail


def test_gaps_are_not_checked_where_the_store_skips_numbers(log: Log) -> None:
    position = log.save(IdempotencyRecord(key="k", fingerprint="f", response={}))[0]
    log.exchange("tom", "ali", 5)
    log.delete(position)
    assert log.audit(contiguous_ids=False).ok


def test_a_log_must_start_at_position_one(log: Log) -> None:
    log.rows = [dataclasses.replace(row, id=row.id + 3) for row in log.rows]
    assert positions(log.audit(), LOG_GAP) == [4]


def test_an_account_opened_under_another_members_id_is_reported(log: Log) -> None:
    position = log.position(Account.Opened, "ali")
    log.edit(position, member_id="alice")
    result = log.audit()
    assert positions(result, IDENTITY) == [position]


def test_a_transfer_started_under_another_transfers_id_is_reported(log: Log) -> None:
    log.request_transfer("maya", 40)
    position = log.position(CrossBankTransfer.Started)
    log.edit(position, transfer_id=str(uuid4()))
    assert positions(log.audit(), IDENTITY) == [position]


def test_an_account_opened_twice_is_reported(log: Log) -> None:
    position = log.position(Account.Opened, "ali")
    row = log.rows[log._index(position)]
    ali = log.accounts["ali"]
    copy = dataclasses.replace(row, id=len(log.rows) + 1, originator_version=ali.version + 1)
    log.rows.append(copy)
    result = log.audit()
    assert positions(result, ACCOUNT) == [copy.id]
    assert result.balances["ali"].posted_minutes == 30


# Double entry and invariant 1.


def test_an_edited_credit_no_longer_matches_its_debit(log: Log) -> None:
    debit = log.position(Account.Debited, "maya")
    credit = log.position(Account.Credited, "tom")
    log.edit(credit, minutes=900)
    result = log.audit()
    [(position, detail)] = problems(result, DOUBLE_ENTRY)
    assert position == credit
    assert f"debited 90 minutes (position {debit})" in detail
    assert f"credited 900 (position {credit})" in detail


def test_an_edited_debit_is_named_in_the_mismatch(log: Log) -> None:
    debit = log.position(Account.Debited, "maya")
    log.edit(debit, minutes=9)
    [(_, detail)] = problems(log.audit(), DOUBLE_ENTRY)
    assert f"debited 9 minutes (position {debit})" in detail


def test_an_edited_amount_unbalances_the_books_where_the_entry_completes(log: Log) -> None:
    credit = log.position(Account.Credited, "tom")
    log.edit(credit, minutes=100)
    result = log.audit()
    [(position, detail)] = problems(result, INVARIANT_1)
    assert position == credit
    assert "sum to 10 minutes, not 0" in detail


def test_an_imbalance_is_reported_again_only_when_it_changes(log: Log) -> None:
    credit = log.position(Account.Credited, "tom")
    log.edit(credit, minutes=100)
    log.exchange("tom", "ali", 5)
    log.exchange("ali", "tom", 5)
    _, later_credit = log.exchange("tom", "maya", 7)
    log.edit(later_credit, minutes=8)
    assert positions(log.audit(), INVARIANT_1) == [credit, later_credit]


def test_a_posting_without_its_other_half_is_reported_at_the_end(log: Log) -> None:
    debit, credit = log.exchange("tom", "ali", 5)
    log.delete(credit)
    result = log.audit()
    [(position, detail)] = problems(result, DOUBLE_ENTRY)
    assert position == debit
    assert "ali is never credited" in detail
    assert positions(result, INVARIANT_1) == [None]


def test_a_lone_half_is_given_up_on_after_the_span_and_the_books_checked_again(
    log: Log,
) -> None:
    debit, credit = log.exchange("tom", "ali", 5)
    log.delete(credit)
    for _ in range(5):
        log.exchange("ali", "maya", 1)
    result = log.audit(entry_span=4, contiguous_ids=False)
    assert positions(result, DOUBLE_ENTRY) == [debit]
    # Reported at the first balanced point after giving up on it, not only at the end.
    [(position, detail)] = problems(result, INVARIANT_1)
    assert position is not None
    assert debit + 4 <= position < len(log.rows)
    assert "sum to -5" in detail
    # Balanced points after it are checked again: a later damage still shows where it is.
    _, late = log.exchange("tom", "ali", 3)
    log.edit(late, minutes=4)
    assert late in positions(log.audit(entry_span=4, contiguous_ids=False), INVARIANT_1)


def test_a_second_debit_of_one_entry_is_reported(log: Log) -> None:
    entry_id = str(uuid4())
    tom, ali = log.accounts["tom"], log.accounts["ali"]
    tom.debit(entry_id, 5, "ali", "", "exchange", LIMIT)
    tom.debit(entry_id, 5, "ali", "", "exchange", LIMIT)
    ali.credit(entry_id, 5, "tom", "", "exchange")
    second = log.save(tom, ali)[1]
    assert second in positions(log.audit(), DOUBLE_ENTRY)


# Invariant 5.


def test_a_debit_edited_past_the_overdraft_limit_is_reported_there(log: Log) -> None:
    debit = log.position(Account.Debited, "maya")
    log.edit(debit, minutes=LIMIT + 1)
    result = log.audit()
    [(position, detail)] = problems(result, INVARIANT_5)
    assert position == debit
    assert f"-{LIMIT + 1} minutes available" in detail


def test_a_members_own_limit_is_the_one_checked(log: Log) -> None:
    log.open("zoe", limit=0)
    log.exchange("tom", "zoe", 10)
    debit, _ = log.exchange("zoe", "tom", 10)
    assert log.audit().ok
    # One minute below zero: within the bank's default, but not within zoe's own limit.
    log.edit(debit, minutes=11)
    [(position, detail)] = problems(log.audit(), INVARIANT_5)
    assert position == debit
    assert "overdraft limit of 0" in detail


def test_the_bank_default_limit_applies_to_members_without_their_own(log: Log) -> None:
    assert log.audit(default_overdraft_minutes=120).ok
    result = log.audit(default_overdraft_minutes=100)
    assert positions(result, INVARIANT_5) == [log.position(Account.Debited, "maya", 1)]


def test_the_default_recorded_in_the_log_wins_over_the_one_given() -> None:
    log = Log()
    policy = BankPolicy(100)  # as the ledger records it when it starts
    log.save(policy)
    log.open("maya")
    log.open("tom")
    debit, _ = log.exchange("maya", "tom", 101)
    assert positions(log.audit(default_overdraft_minutes=10_000), INVARIANT_5) == [debit]
    policy.set_default_overdraft(500)
    log.save(policy)
    log.exchange("maya", "tom", 300)  # 401 below zero: within the new default
    assert positions(log.audit(default_overdraft_minutes=0), INVARIANT_5) == [debit]


def test_a_member_left_below_a_lowered_default_breaks_nothing_until_spending(log: Log) -> None:
    """maya spent 120 under a default of 600; the bank then lowers its default to 60. Being
    below it, and being credited, is no breach; spending again is."""
    policy = BankPolicy(LIMIT)
    log.save(policy)
    policy.set_default_overdraft(60)
    log.save(policy)
    log.exchange("tom", "maya", 10)
    assert log.audit().ok
    debit, _ = log.exchange("maya", "ali", 1)
    [(position, detail)] = problems(log.audit(), INVARIANT_5)
    assert position == debit
    assert "overdraft limit of 60" in detail
    assert log.audit().balances["maya"].overdraft_limit_minutes == 60


def test_a_held_amount_counts_against_the_limit(log: Log) -> None:
    position = log.place_hold("maya", "h1", 480, "tom")
    assert log.audit().ok
    log.edit(position, minutes=481)
    assert positions(log.audit(), INVARIANT_5) == [position]


def test_system_accounts_have_no_limit() -> None:
    log = Log()
    log.open("bob")
    log.decide(log.credit_requested("bob", 5_000), commit=True)
    result = log.audit(default_overdraft_minutes=0)
    assert result.ok, result.problems
    assert result.balances["federation"].available_minutes == -5_000


def test_an_excursion_below_the_limit_is_reported_once(log: Log) -> None:
    debit = log.position(Account.Debited, "maya")
    log.edit(debit, minutes=LIMIT + 1)
    log.exchange("tom", "maya", 1)
    log.exchange("tom", "maya", 1)
    assert positions(log.audit(), INVARIANT_5) == [debit]


# Holds.


def test_a_hold_placed_twice_while_open_is_reported(log: Log) -> None:
    first = log.place_hold("tom", "h1", 20, "ali")
    row = log.rows[log._index(first)]
    tom = log.accounts["tom"]
    copy = dataclasses.replace(row, id=len(log.rows) + 1, originator_version=tom.version + 1)
    log.rows.append(copy)
    result = log.audit()
    [(position, detail)] = problems(result, HOLD)
    assert position == copy.id
    assert f"placed again while open (placed at position {first})" in detail


def test_a_post_of_a_hold_that_is_not_open_is_reported(log: Log) -> None:
    log.place_hold("tom", "h1", 20, "ali")
    posted, credited = log.post_hold("tom", "h1")
    log.edit(posted, hold_id="h9")
    log.edit(credited, entry_id="h9")
    result = log.audit()
    assert positions(result, HOLD) == [posted]
    assert "hold h9, which is not open" in problems(result, HOLD)[0][1]


def test_a_hold_ended_twice_is_reported(log: Log) -> None:
    log.place_hold("ali", "h1", 20, "tom")
    voided = log.void_hold("ali", "h1")
    row = log.rows[log._index(voided)]
    copy = dataclasses.replace(
        row, id=len(log.rows) + 1, originator_version=log.accounts["ali"].version + 1
    )
    log.rows.append(copy)
    assert positions(log.audit(), HOLD) == [copy.id]


def test_a_void_of_a_different_amount_is_reported(log: Log) -> None:
    log.place_hold("ali", "h1", 20, "tom")
    voided = log.void_hold("ali", "h1")
    log.edit(voided, minutes=2)
    result = log.audit()
    assert positions(result, HOLD) == [voided]
    assert result.balances["ali"].held_minutes == 0


# Cross-bank transfers.


def test_a_committed_transfer_never_posted_is_reported(log: Log) -> None:
    transfer = log.request_transfer("maya", 40)
    committed, posted, credited = log.decide(transfer, commit=True)
    for deleted in (posted, credited):
        log.delete(deleted)
    result = log.audit(contiguous_ids=False)
    [(position, detail)] = problems(result, TRANSFER)
    assert position == committed
    assert "committed, but not posted on both sides" in detail


def test_an_aborted_transfer_that_is_posted_is_reported(log: Log) -> None:
    transfer = log.request_transfer("maya", 40)
    committed, _, _ = log.decide(transfer, commit=True)
    log.replace(committed, topic=get_topic(CrossBankTransfer.Aborted))
    log.edit(committed, reason="payee_refused")
    result = log.audit()
    [(_, detail)] = problems(result, TRANSFER)
    assert "aborted, but posted" in detail


def test_a_transfer_held_for_other_minutes_than_its_own_is_reported(log: Log) -> None:
    transfer = log.request_transfer("maya", 40)
    log.decide(transfer, commit=True)
    log.edit(log.position(CrossBankTransfer.Started), minutes=45)
    result = log.audit()
    [(_, detail)] = problems(result, TRANSFER)
    assert "held on maya for 40 minutes" in detail
    assert "maya is debited 40 minutes for it" in detail


def test_a_payers_transfer_that_was_never_held_is_reported(log: Log) -> None:
    transfer = log.request_transfer("maya", 40)
    aborted, voided = log.decide(transfer, commit=False)
    log.delete(log.position(Account.HoldPlaced, "maya"))
    log.delete(voided)
    result = log.audit(contiguous_ids=False)
    [(position, detail)] = problems(result, TRANSFER)
    assert position == aborted
    assert "the payer's minutes were never held" in detail


def test_a_transfer_held_twice_is_reported(log: Log) -> None:
    transfer = log.request_transfer("maya", 40)
    hold = log.rows[log._index(log.position(Account.HoldPlaced, "maya"))]
    ali = log.accounts["ali"]
    log.rows.append(
        dataclasses.replace(
            hold, id=len(log.rows) + 1, originator_id=ali.id, originator_version=ali.version + 1
        )
    )
    log.decide(transfer, commit=False)
    [(_, detail)] = problems(log.audit(), TRANSFER)
    assert "it is aborted, but its hold is not voided" in detail
    assert "it is held 2 times" in detail
    assert "held on ali for 40 minutes" in detail


def test_a_committed_transfer_credited_twice_is_reported(log: Log) -> None:
    transfer = log.request_transfer("maya", 40)
    _, _, credited = log.decide(transfer, commit=True)
    federation = log.accounts["federation"]
    row = log.rows[log._index(credited)]
    log.rows.append(
        dataclasses.replace(row, id=len(log.rows) + 1, originator_version=federation.version + 1)
    )
    [(_, detail)] = problems(log.audit(), TRANSFER)
    assert "posted 1 time(s) and credited 2 time(s)" in detail


def test_a_pending_transfer_without_its_hold_is_reported(log: Log) -> None:
    log.request_transfer("maya", 40)
    hold = log.position(Account.HoldPlaced, "maya")
    log.delete(hold)
    result = log.audit(contiguous_ids=False)
    [(_, detail)] = problems(result, TRANSFER)
    assert "it started, but no hold was placed" in detail


def test_a_decision_on_a_transfer_that_never_started_is_reported(log: Log) -> None:
    transfer = log.request_transfer("maya", 40)
    aborted, voided = log.decide(transfer, commit=False)
    log.delete(log.position(CrossBankTransfer.Started))
    result = log.audit(contiguous_ids=False)
    # The decision finds nothing pending; the hold, placed and voided, finds no transfer.
    assert positions(result, TRANSFER) == [aborted, voided]


# Up to a moment.


def test_until_replays_only_what_was_stamped_by_then(log: Log) -> None:
    cut = datetime.now(UTC) + timedelta(hours=1)
    later = [
        log.position(Account.Debited, "maya", 1),
        log.position(Account.Credited, "ali"),
    ]
    for position in later:
        log.edit(position, timestamp={"_type_": "datetime_iso", "_data_": f"{cut + timedelta(1)}"})
    result = log.audit(until=cut)
    assert result.ok
    assert result.events == len(log.rows) - 2
    assert result.balances["maya"].posted_minutes == -90
    assert result.balances["ali"].posted_minutes == 0
    assert result.until == cut


def test_until_in_the_middle_of_a_save_finishes_that_save(log: Log) -> None:
    debit, credit = log.exchange("tom", "ali", 5)
    _, after = log.exchange("ali", "tom", 7)
    i, j = log._index(debit), log._index(credit)
    stamp = json.loads(log.rows[i].state)["timestamp"]["_data_"]
    cut = datetime.fromisoformat(stamp)
    result = log.audit(until=cut)
    assert result.ok, result.problems
    assert result.chain_position == log.rows[j].id
    assert result.balances["ali"].posted_minutes == 35
    assert after > credit


def test_until_does_not_wait_for_ever_on_a_half_that_never_completes(log: Log) -> None:
    debit, credit = log.exchange("tom", "ali", 5)
    log.delete(credit)
    for _ in range(10):
        log.exchange("ali", "maya", 1)
    cut = datetime.fromisoformat(
        json.loads(log.rows[log._index(debit)].state)["timestamp"]["_data_"]
    )
    result = log.audit(until=cut, entry_span=3, contiguous_ids=False)
    assert result.chain_position < log.rows[-1].id
    assert debit in positions(result, DOUBLE_ENTRY)


def test_until_before_the_first_event_replays_nothing(log: Log) -> None:
    result = log.audit(until=datetime(2000, 1, 1, tzinfo=UTC))
    assert (result.events, result.balances, result.ok) == (0, {}, True)
