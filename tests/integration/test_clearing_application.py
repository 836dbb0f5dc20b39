"""The Clearing application (services/clearing/application.py) on real stores: directory,
two-phase transfers, deadlines, exactly-once receipt, rejections and its books' invariants."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.clearing.application import Clearing
from services.clearing.domain_terms import (
    BankExists,
    BankStatus,
    InvalidRequest,
    TransferPhase,
    UnknownBank,
    UnknownTransfer,
)
from services.clearing.views import BankView
from services.common.inbox import Outcome, Received
from services.common.outbox import QUEUED_TOPIC, envelope_of
from services.common.stores import parse_store_url
from shared.protocol import (
    CLEARING,
    AnyMessage,
    Codec,
    CreditPrepared,
    CreditRefused,
    CreditRequested,
    DecisionApplied,
    DirectoryChanged,
    Envelope,
    TransferAborted,
    TransferCommitted,
    TransferRequested,
)
from tests.helpers import Clock

DEADLINE_SECONDS = 30
START = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
LIMIT = 600


class Senders:
    """Numbers each bank's envelopes to the clearing house 1, 2, 3, ... as its outbox would."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def __call__(self, source: str, message: AnyMessage) -> Envelope:
        seq = self.last.get(source, 0) + 1
        self.last[source] = seq
        return envelope(source, seq, message)


def envelope(source: str, seq: int, message: AnyMessage) -> Envelope:
    return Envelope(source=source, destination=CLEARING, seq=seq, message=message)


def request(
    transfer_id: str,
    payer_bank: str = "alpha",
    payee_bank: str = "beta",
    minutes: int = 60,
) -> TransferRequested:
    return TransferRequested(
        transfer_id=transfer_id,
        payer_bank=payer_bank,
        payer="maya",
        payee_bank=payee_bank,
        payee="bob",
        minutes=minutes,
        memo=f"help for {transfer_id}",
        requested_at=START,
    )


def queued(app: Clearing) -> list[Envelope]:
    """Everything the clearing house has queued to send, in the order it was saved."""
    envelopes: list[Envelope] = []
    start = 1
    for _ in range(1000):
        batch = app.recorder.select_notifications(start=start, limit=500, topics=[QUEUED_TOPIC])
        if not batch:
            break
        envelopes += [envelope_of(app.mapper.to_domain_event(n)) for n in batch]  # type: ignore[arg-type]
        start = batch[-1].id + 1
    return envelopes


def sent_to(app: Clearing, bank_id: str, kind: type[Any] | None = None) -> list[Any]:
    """The messages queued to one bank (of one kind, if given), oldest first."""
    return [
        e.message
        for e in queued(app)
        if e.destination == bank_id and (kind is None or isinstance(e.message, kind))
    ]


def for_transfer(app: Clearing, transfer_id: str) -> list[tuple[str, str]]:
    """(destination, message type) of everything queued about one transfer."""
    return [
        (e.destination, type(e.message).__name__)
        for e in queued(app)
        if getattr(e.message, "transfer_id", None) == transfer_id
    ]


def outcomes(results: list[Received]) -> list[Outcome]:
    return [r.outcome for r in results]


def bank(app: Clearing, bank_id: str) -> BankView:
    return next(b for b in app.banks() if b.bank_id == bank_id)


def reserved(app: Clearing) -> dict[str, int]:
    return {b.bank_id: b.reserved_minutes for b in app.banks()}


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def open_clearing(store_url: str, clock: Clock) -> Iterator[Callable[[], Clearing]]:
    """Open a Clearing on the test's store (again, to simulate a restart); all closed after."""
    opened: list[Clearing] = []

    def factory() -> Clearing:
        app = Clearing(parse_store_url(store_url), deadline_seconds=DEADLINE_SECONDS, clock=clock)
        opened.append(app)
        return app

    yield factory
    for app in opened:
        app.close()


@pytest.fixture
def empty_clearing(open_clearing: Callable[[], Clearing]) -> Clearing:
    return open_clearing()


@pytest.fixture
def clearing(empty_clearing: Clearing) -> Clearing:
    """A clearing house with alpha, beta and gamma admitted, each with the same limit."""
    for bank_id in ("alpha", "beta", "gamma"):
        empty_clearing.admit_bank(bank_id, bank_id.title(), LIMIT)
    return empty_clearing


@pytest.fixture
def send() -> Senders:
    return Senders()


# Admitting, suspending and reinstating banks.


def test_admitting_banks_announces_the_full_directory_to_every_bank(
    empty_clearing: Clearing,
) -> None:
    app = empty_clearing
    app.admit_bank("alpha", "Alpha", 100)
    app.admit_bank("beta", "Beta", 200)
    announced = [
        (e.destination, e.seq, [(b.bank_id, b.name, b.status) for b in e.message.banks])
        for e in queued(app)
        if isinstance(e.message, DirectoryChanged)
    ]
    both = [("alpha", "Alpha", BankStatus.ACTIVE), ("beta", "Beta", BankStatus.ACTIVE)]
    assert announced == [
        ("alpha", 1, [("alpha", "Alpha", BankStatus.ACTIVE)]),
        ("alpha", 2, both),
        ("beta", 1, both),
    ]
    assert all(e.source == CLEARING for e in queued(app))


def test_admitting_a_member_bank_again_raises_bank_exists_and_writes_nothing(
    clearing: Clearing,
) -> None:
    before = (clearing.banks(), queued(clearing))
    with pytest.raises(BankExists) as exists:
        clearing.admit_bank("alpha", "Another Alpha", 5)
    assert exists.value.extra == {"bank_id": "alpha"}
    assert (clearing.banks(), queued(clearing)) == before


@pytest.mark.parametrize("bank_id", ["", "Alpha", "-alpha", "alpha-", "al pha", "a" * 33, "a.b"])
def test_admitting_a_bank_with_an_invalid_id_is_refused(
    empty_clearing: Clearing, bank_id: str
) -> None:
    with pytest.raises(InvalidRequest, match="bank id"):
        empty_clearing.admit_bank(bank_id, "Name", 100)
    assert empty_clearing.banks() == []
    assert queued(empty_clearing) == []


@pytest.mark.parametrize(("name", "limit"), [("", 100), ("x" * 201, 100), ("Name", -1)])
def test_admitting_a_bank_with_an_invalid_name_or_limit_writes_nothing(
    empty_clearing: Clearing, name: str, limit: int
) -> None:
    with pytest.raises(InvalidRequest):
        empty_clearing.admit_bank("alpha", name, limit)
    assert empty_clearing.banks() == []
    assert queued(empty_clearing) == []
    # Nothing half-written blocks a correct admission afterwards.
    assert empty_clearing.admit_bank("alpha", "Alpha", 100).bank_id == "alpha"


def test_the_clearing_house_own_name_cannot_be_admitted_as_a_bank(
    empty_clearing: Clearing,
) -> None:
    try:
        empty_clearing.admit_bank(CLEARING, "Impostor", 100)
    except InvalidRequest:
        return
    codec = Codec()
    # What the relay would publish must be something a receiver can decode.
    for queued_envelope in queued(empty_clearing):
        codec.decode(codec.encode(queued_envelope))


def test_suspending_a_bank_changes_its_status_and_reannounces_the_directory(
    clearing: Clearing,
) -> None:
    view = clearing.suspend_bank("beta")
    assert view.status == BankStatus.SUSPENDED
    assert bank(clearing, "beta").status == BankStatus.SUSPENDED
    for bank_id in ("alpha", "beta", "gamma"):
        latest = sent_to(clearing, bank_id, DirectoryChanged)[-1]
        assert [(b.bank_id, b.status) for b in latest.banks] == [
            ("alpha", BankStatus.ACTIVE),
            ("beta", BankStatus.SUSPENDED),
            ("gamma", BankStatus.ACTIVE),
        ]


def test_reinstating_a_bank_makes_it_active_and_reannounces_the_directory(
    clearing: Clearing,
) -> None:
    clearing.suspend_bank("beta")
    announced = len(sent_to(clearing, "alpha", DirectoryChanged))
    assert clearing.reinstate_bank("beta").status == BankStatus.ACTIVE
    assert bank(clearing, "beta").status == BankStatus.ACTIVE
    alpha_directories = sent_to(clearing, "alpha", DirectoryChanged)
    assert len(alpha_directories) == announced + 1
    assert {b.bank_id: b.status for b in alpha_directories[-1].banks}["beta"] == BankStatus.ACTIVE


def test_a_lower_limit_refuses_new_transfers_past_it_and_leaves_reserved_ones(
    clearing: Clearing, send: Senders
) -> None:
    clearing.receive([send("alpha", request("t1", minutes=100))])
    view = clearing.change_bank("alpha", limit_minutes=150)
    assert view.limit_minutes == 150
    assert reserved(clearing)["alpha"] == 100
    clearing.receive([send("alpha", request("t2", minutes=51))])
    assert_aborted(clearing, "t2", "bank_limit_exceeded", ["alpha"])
    clearing.receive([send("alpha", request("t3", minutes=50))])
    assert reserved(clearing)["alpha"] == 150


def test_renaming_a_bank_announces_the_directory_and_the_same_terms_write_nothing(
    clearing: Clearing,
) -> None:
    clearing.change_bank("beta", name="Beta Community Bank")
    latest = sent_to(clearing, "gamma", DirectoryChanged)[-1]
    assert [b.name for b in latest.banks] == ["Alpha", "Beta Community Bank", "Gamma"]
    written = clearing.recorder.max_notification_id()
    clearing.change_bank("beta", name="Beta Community Bank", limit_minutes=LIMIT)
    assert clearing.recorder.max_notification_id() == written
    with pytest.raises(InvalidRequest):
        clearing.change_bank("beta", name=" ")
    with pytest.raises(UnknownBank):
        clearing.change_bank("delta", limit_minutes=1)
    assert clearing.recorder.max_notification_id() == written


@pytest.mark.parametrize("change", ["suspend_bank", "reinstate_bank"])
def test_changing_the_status_of_an_unknown_bank_raises_unknown_bank(
    clearing: Clearing, change: str
) -> None:
    before = queued(clearing)
    with pytest.raises(UnknownBank):
        getattr(clearing, change)("nowhere")
    assert queued(clearing) == before


def test_banks_lists_every_member_in_admission_order_with_its_books(
    empty_clearing: Clearing,
) -> None:
    empty_clearing.admit_bank("gamma", "Gamma", 30)
    empty_clearing.admit_bank("alpha", "Alpha", 10)
    assert empty_clearing.banks() == [
        BankView("gamma", "Gamma", BankStatus.ACTIVE, 30, 0, 0, ""),
        BankView("alpha", "Alpha", BankStatus.ACTIVE, 10, 0, 0, ""),
    ]
    assert empty_clearing.positions() == {"gamma": 0, "alpha": 0}


def test_unknown_transfer_is_reported(clearing: Clearing) -> None:
    with pytest.raises(UnknownTransfer):
        clearing.get_transfer("never")


# The commit path.


def test_transfer_request_reserves_and_asks_the_payee_bank_for_credit(
    clearing: Clearing, send: Senders, clock: Clock
) -> None:
    results = clearing.receive([send("alpha", request("t1", minutes=90))])
    assert outcomes(results) == [Outcome.APPLIED]
    assert sent_to(clearing, "beta", CreditRequested) == [
        CreditRequested(
            transfer_id="t1",
            payer_bank="alpha",
            payer="maya",
            payee="bob",
            minutes=90,
            memo="help for t1",
        )
    ]
    assert reserved(clearing) == {"alpha": 90, "beta": 0, "gamma": 0}
    assert clearing.positions() == {"alpha": 0, "beta": 0, "gamma": 0}
    transfer = clearing.get_transfer("t1")
    assert (transfer.status, transfer.payer_bank, transfer.payee_bank) == (
        TransferPhase.PREPARING,
        "alpha",
        "beta",
    )
    assert transfer.deadline == clock.now + timedelta(seconds=DEADLINE_SECONDS)
    # Nobody is told of a decision that has not been made.
    assert for_transfer(clearing, "t1") == [("beta", "CreditRequested")]


def test_credit_prepared_commits_and_moves_the_positions(clearing: Clearing, send: Senders) -> None:
    clearing.receive([send("alpha", request("t1", minutes=90))])
    results = clearing.receive([send("beta", CreditPrepared(transfer_id="t1"))])
    assert outcomes(results) == [Outcome.APPLIED]
    assert clearing.get_transfer("t1").status == TransferPhase.COMMITTED
    positions = clearing.positions()
    assert positions == {"alpha": -90, "beta": 90, "gamma": 0}
    assert sum(positions.values()) == 0
    assert reserved(clearing) == {"alpha": 0, "beta": 0, "gamma": 0}
    committed = TransferCommitted(
        transfer_id="t1", payer_bank="alpha", payee_bank="beta", minutes=90
    )
    assert sent_to(clearing, "alpha", TransferCommitted) == [committed]
    assert sent_to(clearing, "beta", TransferCommitted) == [committed]


def test_decision_applied_by_both_banks_is_recorded(clearing: Clearing, send: Senders) -> None:
    clearing.receive([send("alpha", request("t1"))])
    clearing.receive([send("beta", CreditPrepared(transfer_id="t1"))])
    assert clearing.get_transfer("t1").acknowledged_by == []
    applied = clearing.receive(
        [
            send("beta", DecisionApplied(transfer_id="t1", committed=True)),
            send("alpha", DecisionApplied(transfer_id="t1", committed=True)),
        ]
    )
    assert outcomes(applied) == [Outcome.APPLIED, Outcome.APPLIED]
    assert sorted(clearing.get_transfer("t1").acknowledged_by) == ["alpha", "beta"]


def test_positions_after_transfers_both_ways_net_out(clearing: Clearing, send: Senders) -> None:
    clearing.receive([send("alpha", request("t1", minutes=100))])
    clearing.receive([send("beta", request("t2", "beta", "alpha", minutes=30))])
    clearing.receive([send("beta", CreditPrepared(transfer_id="t1"))])
    clearing.receive([send("alpha", CreditPrepared(transfer_id="t2"))])
    assert clearing.positions() == {"alpha": -70, "beta": 70, "gamma": 0}


# Abort paths.


def assert_aborted(
    app: Clearing, transfer_id: str, reason: str, informed: list[str]
) -> TransferAborted:
    """The transfer is aborted for this reason and only these banks were told, once each."""
    transfer = app.get_transfer(transfer_id)
    assert (transfer.status, transfer.reason) == (TransferPhase.ABORTED, reason)
    told = [(d, kind) for d, kind in for_transfer(app, transfer_id) if kind != "CreditRequested"]
    assert told == [(b, "TransferAborted") for b in informed]
    aborted: TransferAborted = sent_to(app, informed[0], TransferAborted)[-1]
    assert (aborted.transfer_id, aborted.reason) == (transfer_id, reason)
    return aborted


def test_transfer_to_an_unknown_bank_is_aborted_telling_only_the_payer_bank(
    clearing: Clearing, send: Senders
) -> None:
    results = clearing.receive([send("alpha", request("t1", payee_bank="nowhere"))])
    assert outcomes(results) == [Outcome.APPLIED]
    assert_aborted(clearing, "t1", "unknown_bank", ["alpha"])
    assert sent_to(clearing, "beta", CreditRequested) == []
    assert reserved(clearing)["alpha"] == 0


@pytest.mark.parametrize("suspended", ["alpha", "beta"], ids=["payer-bank", "payee-bank"])
def test_transfer_involving_a_suspended_bank_is_aborted(
    clearing: Clearing, send: Senders, suspended: str
) -> None:
    clearing.suspend_bank(suspended)
    results = clearing.receive([send("alpha", request("t1"))])
    assert outcomes(results) == [Outcome.APPLIED]
    assert_aborted(clearing, "t1", "bank_suspended", ["alpha"])
    assert reserved(clearing)["alpha"] == 0
    assert sent_to(clearing, "beta", CreditRequested) == []


def test_transfer_over_the_payer_banks_limit_is_aborted_and_one_that_fits_commits(
    clearing: Clearing, send: Senders
) -> None:
    clearing.receive([send("alpha", request("t1", minutes=LIMIT - 100))])
    clearing.receive([send("alpha", request("t2", minutes=101))])
    aborted = assert_aborted(clearing, "t2", "bank_limit_exceeded", ["alpha"])
    assert aborted.detail
    assert reserved(clearing)["alpha"] == LIMIT - 100
    clearing.receive([send("alpha", request("t3", minutes=100))])
    assert reserved(clearing)["alpha"] == LIMIT
    clearing.receive([send("beta", CreditPrepared(transfer_id="t3"))])
    assert clearing.get_transfer("t3").status == TransferPhase.COMMITTED
    assert clearing.positions()["alpha"] == -100


def test_credit_refused_for_an_unknown_payee_releases_the_reservation_and_tells_both(
    clearing: Clearing, send: Senders
) -> None:
    clearing.receive([send("alpha", request("t1", minutes=80))])
    refusal = CreditRefused(transfer_id="t1", reason="unknown_payee", detail="no member bob")
    assert outcomes(clearing.receive([send("beta", refusal)])) == [Outcome.APPLIED]
    aborted = assert_aborted(clearing, "t1", "unknown_payee", ["alpha", "beta"])
    assert aborted.detail == "no member bob"
    assert sent_to(clearing, "beta", TransferAborted) == [aborted]
    assert reserved(clearing) == {"alpha": 0, "beta": 0, "gamma": 0}
    assert clearing.positions() == {"alpha": 0, "beta": 0, "gamma": 0}


def test_unrecognised_refusal_reason_becomes_payee_refused(
    clearing: Clearing, send: Senders
) -> None:
    clearing.receive([send("alpha", request("t1"))])
    clearing.receive([send("beta", CreditRefused(transfer_id="t1", reason="member_on_holiday"))])
    assert_aborted(clearing, "t1", "payee_refused", ["alpha", "beta"])
    assert reserved(clearing)["alpha"] == 0


def test_transfer_within_one_bank_is_aborted_as_invalid(clearing: Clearing, send: Senders) -> None:
    clearing.receive([send("alpha", request("t1", payee_bank="alpha"))])
    assert_aborted(clearing, "t1", "invalid_transfer", ["alpha"])
    assert reserved(clearing)["alpha"] == 0
    assert sent_to(clearing, "alpha", CreditRequested) == []


def test_credit_answer_after_a_refusal_changes_nothing(clearing: Clearing, send: Senders) -> None:
    clearing.receive([send("alpha", request("t1"))])
    clearing.receive([send("beta", CreditRefused(transfer_id="t1", reason="unknown_payee"))])
    before = (queued(clearing), clearing.banks())
    late = clearing.receive([send("beta", CreditPrepared(transfer_id="t1"))])
    assert outcomes(late) == [Outcome.APPLIED]
    assert (queued(clearing), clearing.banks()) == before
    assert clearing.get_transfer("t1").reason == "unknown_payee"


# Deadlines.


def test_expire_overdue_aborts_only_transfers_past_their_deadline(
    clearing: Clearing, send: Senders, clock: Clock
) -> None:
    clearing.receive([send("alpha", request("t1", minutes=40))])
    clock.advance(seconds=20)
    clearing.receive([send("alpha", request("t2", minutes=25))])
    clock.advance(seconds=DEADLINE_SECONDS - 21)
    assert clearing.expire_overdue() == []
    clock.advance(seconds=2)
    assert clearing.expire_overdue() == ["t1"]
    assert_aborted(clearing, "t1", "deadline_exceeded", ["alpha", "beta"])
    assert clearing.get_transfer("t2").status == TransferPhase.PREPARING
    assert reserved(clearing)["alpha"] == 25
    # Expiring again finds nothing new: t1 is decided once.
    assert clearing.expire_overdue() == []
    assert len(sent_to(clearing, "alpha", TransferAborted)) == 1


def test_late_credit_prepared_after_expiry_is_acknowledged_but_changes_nothing(
    clearing: Clearing, send: Senders, clock: Clock
) -> None:
    clearing.receive([send("alpha", request("t1", minutes=40))])
    clock.advance(seconds=DEADLINE_SECONDS + 1)
    assert clearing.expire_overdue() == ["t1"]
    before = (queued(clearing), clearing.banks())
    late = clearing.receive([send("beta", CreditPrepared(transfer_id="t1"))])
    assert outcomes(late) == [Outcome.APPLIED]
    assert (queued(clearing), clearing.banks()) == before
    assert clearing.positions() == {"alpha": 0, "beta": 0, "gamma": 0}
    assert clearing.get_transfer("t1").status == TransferPhase.ABORTED


def test_waiting_transfers_survive_reopening_the_clearing_on_the_same_store(
    open_clearing: Callable[[], Clearing], send: Senders, clock: Clock
) -> None:
    first = open_clearing()
    first.admit_bank("alpha", "Alpha", LIMIT)
    first.admit_bank("beta", "Beta", LIMIT)
    first.receive([send("alpha", request("t1", minutes=40))])
    first.receive([send("alpha", request("t2", minutes=10))])
    first.receive([send("beta", CreditPrepared(transfer_id="t2"))])
    first.close()
    clock.advance(seconds=DEADLINE_SECONDS + 1)
    second = open_clearing()
    assert second.expire_overdue() == ["t1"]
    assert_aborted(second, "t1", "deadline_exceeded", ["alpha", "beta"])
    assert {b.bank_id: b.reserved_minutes for b in second.banks()} == {"alpha": 0, "beta": 0}
    assert second.positions() == {"alpha": -10, "beta": 10}


# Exactly once.


def test_same_envelope_twice_is_a_duplicate_with_no_second_effect(
    clearing: Clearing, send: Senders
) -> None:
    first = send("alpha", request("t1", minutes=50))
    assert outcomes(clearing.receive([first])) == [Outcome.APPLIED]
    before = (queued(clearing), clearing.banks())
    assert outcomes(clearing.receive([first])) == [Outcome.DUPLICATE]
    assert outcomes(clearing.receive([first, first])) == [Outcome.DUPLICATE] * 2
    assert (queued(clearing), clearing.banks()) == before


def test_same_envelope_twice_in_one_batch_is_applied_once(
    clearing: Clearing, send: Senders
) -> None:
    first = send("alpha", request("t1", minutes=50))
    assert outcomes(clearing.receive([first, first])) == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert reserved(clearing)["alpha"] == 50
    assert len(sent_to(clearing, "beta", CreditRequested)) == 1


def test_prepared_answer_resent_with_a_new_seq_commits_once(
    clearing: Clearing, send: Senders
) -> None:
    clearing.receive([send("alpha", request("t1", minutes=50))])
    clearing.receive([send("beta", CreditPrepared(transfer_id="t1"))])
    again = clearing.receive([send("beta", CreditPrepared(transfer_id="t1"))])
    assert outcomes(again) == [Outcome.APPLIED]
    assert clearing.positions() == {"alpha": -50, "beta": 50, "gamma": 0}
    assert len(sent_to(clearing, "alpha", TransferCommitted)) == 1


def test_request_resent_with_a_new_seq_reserves_and_asks_only_once(
    clearing: Clearing, send: Senders
) -> None:
    clearing.receive([send("alpha", request("t1", minutes=50))])
    before = (queued(clearing), clearing.banks())
    again = clearing.receive([send("alpha", request("t1", minutes=50))])
    assert outcomes(again) == [Outcome.APPLIED]
    assert (queued(clearing), clearing.banks()) == before
    assert reserved(clearing)["alpha"] == 50


def test_message_after_a_gap_waits_until_the_missing_one_arrives(
    clearing: Clearing, send: Senders
) -> None:
    one, two, three = (send("alpha", request(f"t{i}", minutes=10)) for i in (1, 2, 3))
    assert outcomes(clearing.receive([one])) == [Outcome.APPLIED]
    before = (queued(clearing), clearing.banks())
    assert outcomes(clearing.receive([three])) == [Outcome.GAP]
    assert (queued(clearing), clearing.banks()) == before
    with pytest.raises(UnknownTransfer):
        clearing.get_transfer("t3")
    assert outcomes(clearing.receive([two])) == [Outcome.APPLIED]
    assert outcomes(clearing.receive([three])) == [Outcome.APPLIED]
    assert reserved(clearing)["alpha"] == 30
    assert [m.transfer_id for m in sent_to(clearing, "beta", CreditRequested)] == [
        "t1",
        "t2",
        "t3",
    ]


def test_batch_out_of_order_is_applied_in_sequence_order(clearing: Clearing, send: Senders) -> None:
    one, two = send("alpha", request("t1", minutes=10)), send("alpha", request("t2", minutes=10))
    assert outcomes(clearing.receive([two, one])) == [Outcome.APPLIED, Outcome.APPLIED]
    assert [m.transfer_id for m in sent_to(clearing, "beta", CreditRequested)] == ["t1", "t2"]


def test_applied_messages_are_duplicates_after_a_restart(
    open_clearing: Callable[[], Clearing], send: Senders
) -> None:
    first = open_clearing()
    first.admit_bank("alpha", "Alpha", LIMIT)
    first.admit_bank("beta", "Beta", LIMIT)
    one, two = send("alpha", request("t1", minutes=10)), send("alpha", request("t2", minutes=10))
    first.receive([one, two])
    first.close()
    second = open_clearing()
    before = (queued(second), second.banks())
    assert outcomes(second.receive([one, two])) == [Outcome.DUPLICATE] * 2
    assert (queued(second), second.banks()) == before
    three = send("alpha", request("t3", minutes=10))
    assert outcomes(second.receive([three])) == [Outcome.APPLIED]
    assert bank(second, "alpha").reserved_minutes == 30


# Rejections: a message that can never be applied is skipped; the sender's stream goes on.


def _prepared_from_payer_bank(app: Clearing, send: Senders) -> tuple[str, AnyMessage]:
    app.receive([send("alpha", request("p1"))])
    return ("alpha", CreditPrepared(transfer_id="p1"))


def _prepared_from_third_bank(app: Clearing, send: Senders) -> tuple[str, AnyMessage]:
    app.receive([send("alpha", request("p1"))])
    return ("gamma", CreditPrepared(transfer_id="p1"))


def _prepared_for_unknown_transfer(app: Clearing, send: Senders) -> tuple[str, AnyMessage]:
    return ("beta", CreditPrepared(transfer_id="p1"))


def _refused_for_unknown_transfer(app: Clearing, send: Senders) -> tuple[str, AnyMessage]:
    return ("beta", CreditRefused(transfer_id="p1", reason="unknown_payee"))


def _request_for_another_payer_bank(app: Clearing, send: Senders) -> tuple[str, AnyMessage]:
    return ("gamma", request("p1", payer_bank="alpha"))


def _decision_message_from_a_bank(app: Clearing, send: Senders) -> tuple[str, AnyMessage]:
    app.receive([send("alpha", request("p1"))])
    forged = TransferCommitted(transfer_id="p1", payer_bank="alpha", payee_bank="beta", minutes=60)
    return ("beta", forged)


def _directory_from_a_bank(app: Clearing, send: Senders) -> tuple[str, AnyMessage]:
    return ("gamma", DirectoryChanged(banks=[]))


def _credit_request_from_a_bank(app: Clearing, send: Senders) -> tuple[str, AnyMessage]:
    forged = CreditRequested(transfer_id="p1", payer_bank="gamma", payer="x", payee="y", minutes=5)
    return ("gamma", forged)


def _decision_applied_before_a_decision(app: Clearing, send: Senders) -> tuple[str, AnyMessage]:
    app.receive([send("alpha", request("p1"))])
    return ("beta", DecisionApplied(transfer_id="p1", committed=True))


def _decision_applied_for_unknown_transfer(app: Clearing, send: Senders) -> tuple[str, AnyMessage]:
    return ("beta", DecisionApplied(transfer_id="p1", committed=True))


def _decision_applied_by_a_bank_never_told(app: Clearing, send: Senders) -> tuple[str, AnyMessage]:
    app.receive([send("alpha", request("p1", minutes=LIMIT + 1))])
    return ("beta", DecisionApplied(transfer_id="p1", committed=False))


def _transfer_id_used_by_another_bank(app: Clearing, send: Senders) -> tuple[str, AnyMessage]:
    app.receive([send("alpha", request("p1"))])
    return ("beta", request("p1", payer_bank="beta", payee_bank="alpha"))


def _applied_says_commit_for_an_abort(app: Clearing, send: Senders) -> tuple[str, AnyMessage]:
    app.receive([send("alpha", request("p1"))])
    app.receive([send("beta", CreditRefused(transfer_id="p1", reason="unknown_payee"))])
    return ("beta", DecisionApplied(transfer_id="p1", committed=True))


BAD_MESSAGES = {
    "transfer-id-of-another-bank": (_transfer_id_used_by_another_bank, "already used by alpha"),
    "applied-commit-for-abort": (_applied_says_commit_for_an_abort, "is aborted"),
    "prepared-from-payer-bank": (_prepared_from_payer_bank, "not the payee's bank"),
    "prepared-from-third-bank": (_prepared_from_third_bank, "not the payee's bank"),
    "prepared-unknown-transfer": (_prepared_for_unknown_transfer, "no transfer"),
    "refused-unknown-transfer": (_refused_for_unknown_transfer, "no transfer"),
    "request-for-another-bank": (_request_for_another_payer_bank, "may not request"),
    "transfer-committed": (_decision_message_from_a_bank, "may not send"),
    "directory-changed": (_directory_from_a_bank, "may not send"),
    "credit-requested": (_credit_request_from_a_bank, "may not send"),
    "applied-before-decision": (_decision_applied_before_a_decision, "no decision"),
    "applied-unknown-transfer": (_decision_applied_for_unknown_transfer, "no transfer"),
    "applied-by-bank-never-told": (_decision_applied_by_a_bank_never_told, "not told"),
}


@pytest.mark.parametrize("case", list(BAD_MESSAGES))
def test_rejected_message_applies_nothing_and_the_senders_next_message_still_applies(
    clearing: Clearing, send: Senders, case: str
) -> None:
    make_bad, because = BAD_MESSAGES[case]
    sender, bad_message = make_bad(clearing, send)
    before = queued(clearing)
    status_before = (clearing.banks(), _status_of(clearing, "p1"))
    # A good message on each side of the bad one: the retry without it must not apply either twice.
    good_before = send(sender, request("g1", sender, _other(sender), minutes=7))
    bad = send(sender, bad_message)
    good_after = send(sender, request("g2", sender, _other(sender), minutes=11))
    results = clearing.receive([good_before, bad, good_after])
    assert outcomes(results) == [Outcome.APPLIED, Outcome.REJECTED, Outcome.APPLIED]
    assert because in results[1].reason
    # Only the good messages' effects: one reservation and one credit request each.
    new = [(e.destination, type(e.message).__name__) for e in queued(clearing)[len(before) :]]
    assert new == [(_other(sender), "CreditRequested")] * 2
    banks_after = {b.bank_id: b for b in clearing.banks()}
    for was in status_before[0]:
        extra = 18 if was.bank_id == sender else 0
        assert banks_after[was.bank_id].reserved_minutes == was.reserved_minutes + extra
        assert banks_after[was.bank_id].position_minutes == was.position_minutes
    assert _status_of(clearing, "p1") == status_before[1]
    # The rejected seq counts as used: the next one is applied, not held back as a gap.
    following = send(sender, request("g3", sender, _other(sender), minutes=1))
    assert outcomes(clearing.receive([following])) == [Outcome.APPLIED]


def _other(bank_id: str) -> str:
    return "beta" if bank_id != "beta" else "alpha"


def _status_of(app: Clearing, transfer_id: str) -> tuple[Any, ...] | None:
    try:
        view = app.get_transfer(transfer_id)
    except UnknownTransfer:
        return None
    return (view.status, view.reason, view.acknowledged_by)


def test_rejected_message_is_rejected_again_when_redelivered(
    clearing: Clearing, send: Senders
) -> None:
    bad = send("beta", CreditPrepared(transfer_id="nope"))
    first = clearing.receive([bad])
    assert outcomes(first) == [Outcome.REJECTED]
    # Its seq is used up: redelivery is a duplicate, not a second chance.
    assert outcomes(clearing.receive([bad])) == [Outcome.DUPLICATE]


def test_envelope_addressed_to_another_party_is_rejected(clearing: Clearing, send: Senders) -> None:
    misrouted = Envelope(source="alpha", destination="beta", seq=1, message=request("m1"))
    results = clearing.receive([misrouted])
    assert outcomes(results) == [Outcome.REJECTED]
    assert "not the clearing house" in results[0].reason
    with pytest.raises(UnknownTransfer):
        clearing.get_transfer("m1")


def test_message_from_a_bank_that_is_not_a_member_is_rejected(
    clearing: Clearing, send: Senders
) -> None:
    stranger = send("stranger", request("s1", "stranger", "alpha"))
    member = send("alpha", request("t1", minutes=20))
    before = queued(clearing)
    results = clearing.receive([stranger, member])
    assert outcomes(results) == [Outcome.REJECTED, Outcome.APPLIED]
    assert "not a member" in results[0].reason
    with pytest.raises(UnknownTransfer):
        clearing.get_transfer("s1")
    assert [type(e.message) for e in queued(clearing)[len(before) :]] == [CreditRequested]
    assert "stranger" not in clearing.positions()
    # Every message from it is rejected, none is held back as a gap.
    again = clearing.receive([send("stranger", request("s2", "stranger", "alpha"))])
    assert outcomes(again) == [Outcome.REJECTED]


# Invariants after a random mix.

BANKS = ("alpha", "beta", "gamma")


def run_random_mix(app: Clearing, send: Senders, clock: Clock, rng: random.Random) -> list[str]:
    """200 transfers with random answers, silences, expiries, redeliveries and suspensions;
    returns the ids of the transfers still waiting for the payee's bank."""
    payee_banks: dict[str, str] = {}
    waiting: list[str] = []
    last: Envelope | None = None
    for i in range(200):
        payer = rng.choice(BANKS)
        draw = rng.random()
        payee = (
            "nowhere"
            if draw < 0.02
            else payer
            if draw < 0.05
            else rng.choice([b for b in BANKS if b != payer])
        )
        payee_banks[f"r{i}"] = payee
        last = send(payer, request(f"r{i}", payer, payee, rng.randint(1, 250)))
        app.receive([last])
        if app.get_transfer(f"r{i}").status == TransferPhase.PREPARING:
            waiting.append(f"r{i}")
        if waiting and rng.random() < 0.55:
            answered = waiting.pop(rng.randrange(len(waiting)))
            answer: AnyMessage = (
                CreditPrepared(transfer_id=answered)
                if rng.random() < 0.75
                else CreditRefused(transfer_id=answered, reason="unknown_payee")
            )
            last = send(payee_banks[answered], answer)
            assert outcomes(app.receive([last])) == [Outcome.APPLIED]
        if rng.random() < 0.1:
            assert outcomes(app.receive([last])) == [Outcome.DUPLICATE]
        if i % 50 == 10:
            app.suspend_bank(rng.choice(BANKS))
        elif i % 50 == 20:
            for bank_id in BANKS:
                app.reinstate_bank(bank_id)
        clock.advance(seconds=rng.uniform(0, 6))
        if i % 25 == 24:
            for expired in app.expire_overdue():
                waiting.remove(expired)
                if rng.random() < 0.5:  # the payee's bank answers too late
                    app.receive([send(payee_banks[expired], CreditPrepared(transfer_id=expired))])
            assert_books_balance(app)
    return waiting


def assert_books_balance(app: Clearing) -> None:
    views = app.banks()
    assert sum(b.position_minutes for b in views) == 0
    for view in views:
        assert view.reserved_minutes >= 0
        assert view.reserved_minutes - view.position_minutes <= view.limit_minutes


def test_books_keep_their_invariants_through_a_random_mix_of_transfers(
    clearing: Clearing, send: Senders, clock: Clock
) -> None:
    waiting = run_random_mix(clearing, send, clock, random.Random(20260101))
    assert_books_balance(clearing)
    views = [clearing.get_transfer(f"r{i}") for i in range(200)]
    assert {v.status for v in views} <= {
        TransferPhase.PREPARING,
        TransferPhase.COMMITTED,
        TransferPhase.ABORTED,
    }
    assert sorted(v.transfer_id for v in views if v.status == TransferPhase.PREPARING) == sorted(
        waiting
    )
    expected_reserved = dict.fromkeys(BANKS, 0)
    expected_positions = dict.fromkeys(BANKS, 0)
    for view in views:
        if view.status == TransferPhase.PREPARING:
            expected_reserved[view.payer_bank] += view.minutes
        elif view.status == TransferPhase.COMMITTED:
            expected_positions[view.payer_bank] -= view.minutes
            expected_positions[view.payee_bank] += view.minutes
    assert reserved(clearing) == expected_reserved
    assert clearing.positions() == expected_positions
    # The seed drives the run down every path, so each rule above was really exercised.
    assert {v.reason for v in views} >= {
        None,
        "bank_limit_exceeded",
        "bank_suspended",
        "deadline_exceeded",
        "unknown_payee",
        "unknown_bank",
        "invalid_transfer",
    }
