"""The clearing house repeats a decision until every bank told of it has acknowledged it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.clearing.application import Clearing
from services.clearing.coordinator import MAX_RESEND_INTERVAL, MAX_RESENDS
from services.common.outbox import QUEUED_TOPIC, Outbox, envelope_of
from services.common.stores import parse_store_url
from shared.protocol import (
    CLEARING,
    CreditPrepared,
    DecisionApplied,
    Envelope,
    TransferCommitted,
    TransferRequested,
)
from tests.helpers import Clock

START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def open_clearing(store_url: str, clock: Clock) -> Clearing:
    return Clearing(parse_store_url(store_url), resend_after_seconds=10, clock=clock)


def decisions_sent(clearing: Clearing) -> list[str]:
    """The banks each TransferCommitted was queued for, in order."""
    notifications = clearing.recorder.select_notifications(
        start=1, limit=10_000, topics=[QUEUED_TOPIC]
    )
    envelopes: list[Envelope] = []
    for n in notifications:
        event = clearing.mapper.to_domain_event(n)
        assert isinstance(event, Outbox.Queued)
        envelopes.append(envelope_of(event))
    return [e.destination for e in envelopes if isinstance(e.message, TransferCommitted)]


def commit_one_transfer(clearing: Clearing) -> None:
    clearing.admit_bank("alpha", "Alpha", 600)
    clearing.admit_bank("beta", "Beta", 600)
    request = TransferRequested(
        transfer_id="t1",
        payer_bank="alpha",
        payer="maya",
        payee_bank="beta",
        payee="bob",
        minutes=30,
        requested_at=START,
    )
    clearing.receive([Envelope(source="alpha", destination=CLEARING, seq=1, message=request)])
    prepared = CreditPrepared(transfer_id="t1")
    clearing.receive([Envelope(source="beta", destination=CLEARING, seq=1, message=prepared)])


def acknowledge(clearing: Clearing, bank_id: str, seq: int) -> None:
    applied = DecisionApplied(transfer_id="t1", committed=True)
    clearing.receive([Envelope(source=bank_id, destination=CLEARING, seq=seq, message=applied)])


def test_an_unacknowledged_decision_is_sent_again_only_to_the_silent_bank(store_url: str) -> None:
    clock = Clock(START)
    clearing = open_clearing(store_url, clock)
    commit_one_transfer(clearing)
    assert sorted(decisions_sent(clearing)) == ["alpha", "beta"]
    acknowledge(clearing, "alpha", seq=2)

    clock.now += timedelta(seconds=9)
    assert clearing.resend_unacknowledged() == []  # not yet due
    clock.now += timedelta(seconds=2)
    assert clearing.resend_unacknowledged() == ["t1"]
    assert decisions_sent(clearing)[2:] == ["beta"]
    # Not again until another interval has passed since it was re-sent.
    assert clearing.resend_unacknowledged() == []

    acknowledge(clearing, "beta", seq=2)
    clock.now += timedelta(seconds=60)
    assert clearing.resend_unacknowledged() == []
    assert clearing.get_transfer("t1").acknowledged_by == ["alpha", "beta"]
    clearing.close()


def test_what_is_awaited_survives_a_restart_of_the_clearing_house(store_url: str) -> None:
    clock = Clock(START)
    first = open_clearing(store_url, clock)
    commit_one_transfer(first)
    acknowledge(first, "alpha", seq=2)
    first.close()

    clock.now += timedelta(seconds=11)
    restarted = open_clearing(store_url, clock)
    assert restarted.resend_unacknowledged() == ["t1"]
    assert decisions_sent(restarted)[2:] == ["beta"]
    restarted.close()


def test_resends_back_off_and_stop_and_the_transfer_is_listed_as_stuck(store_url: str) -> None:
    """A bank that never applies the decision: re-sent after 10 s, 20 s, 40 s ... (at most
    ten minutes apart), MAX_RESENDS times in all, then listed as stuck and not sent again,
    also after a restart."""
    clock = Clock(START)
    clearing = open_clearing(store_url, clock)
    commit_one_transfer(clearing)
    acknowledge(clearing, "alpha", seq=2)
    assert clearing.stuck_transfers() == []
    pauses = []
    waited = timedelta(0)
    for _ in range(200):  # bounded: 8 re-sends need well under 200 steps of 10 s
        clock.now += timedelta(seconds=10)
        waited += timedelta(seconds=10)
        if clearing.resend_unacknowledged():
            pauses.append(waited)
            waited = timedelta(0)
    assert len(pauses) == MAX_RESENDS
    assert [p.total_seconds() for p in pauses] == [
        min(10 * 2**n, MAX_RESEND_INTERVAL.total_seconds()) for n in range(MAX_RESENDS)
    ]
    assert decisions_sent(clearing)[2:] == ["beta"] * MAX_RESENDS
    [stuck] = clearing.stuck_transfers()
    assert (stuck.transfer_id, stuck.acknowledged_by, stuck.resends) == ("t1", ["alpha"], 8)
    clearing.close()

    again = open_clearing(store_url, clock)
    clock.now += timedelta(hours=5)
    assert again.resend_unacknowledged() == []
    assert [t.transfer_id for t in again.stuck_transfers()] == ["t1"]
    # Once the bank applies it after all, it is no longer stuck.
    acknowledge(again, "beta", seq=2)
    assert again.stuck_transfers() == []
    again.close()
