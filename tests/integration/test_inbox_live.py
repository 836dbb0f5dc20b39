"""Aggregates kept live between received batches (the clearing house's inbox): changed in place
batch after batch, yet a rejected or failed batch leaves nothing of itself in memory, and a
save by another path is never overwritten by a stale copy."""

from __future__ import annotations

import pytest
from eventsourcing.persistence import IntegrityError

from services.common.inbox import (
    Handler,
    LiveAggregates,
    MessageRejected,
    Outcome,
    UnitOfWork,
    receive_from,
)
from services.ledger.application import Ledger
from services.ledger.domain import Account
from services.ledger.domain_terms import EntryKind, account_id
from shared.protocol import AnyMessage, CheckpointPublished, Envelope
from tests.conftest import LedgerFactory

SENDER = "gp"
CREDIT = 10


def envelopes(*seqs: int) -> list[Envelope]:
    """Messages numbered ``seqs``; each names its own number (as its position)."""
    return [
        Envelope(
            source=SENDER,
            destination="here",
            seq=n,
            message=CheckpointPublished(position=n, chain_hash="0" * 64, signature="s"),
        )
        for n in seqs
    ]


def credit_maya(rejected: frozenset[int] = frozenset()) -> Handler:
    """Credits maya for each message; a message numbered in ``rejected`` credits her and is
    then rejected: a half-done change that must not survive."""

    def handle(source: str, message: AnyMessage, uow: UnitOfWork) -> None:
        assert isinstance(message, CheckpointPublished)
        account = uow.get(account_id("maya"), Account)
        assert account is not None
        n = message.position
        account.credit(f"c{n}", CREDIT, "federation", "in", EntryKind.TRANSFER)
        if n in rejected:
            raise MessageRejected("rejected after changing maya's account")

    return handle


@pytest.fixture
def app(open_ledger: LedgerFactory) -> Ledger:
    ledger = open_ledger()
    ledger.open_member("maya", "Maya", "person")
    return ledger


def balance(app: Ledger) -> int:
    return app.get_member("maya").balance_minutes


def test_a_message_rejected_after_changing_an_aggregate_leaves_no_trace_in_memory(
    app: Ledger,
) -> None:
    live = LiveAggregates(app)
    results = receive_from(app, SENDER, envelopes(1, 2), credit_maya(frozenset({2})), live)
    assert [r.outcome for r in results] == [Outcome.APPLIED, Outcome.REJECTED]
    assert balance(app) == CREDIT

    receive_from(app, SENDER, envelopes(3), credit_maya(), live)

    assert balance(app) == 2 * CREDIT
    maya = live.get(account_id("maya"), Account)
    assert isinstance(maya, Account)
    assert maya.balance_minutes == 2 * CREDIT


def test_aggregates_stay_live_between_batches(app: Ledger) -> None:
    live = LiveAggregates(app)
    receive_from(app, SENDER, envelopes(1), credit_maya(), live)
    kept = live.get(account_id("maya"), Account)

    receive_from(app, SENDER, envelopes(2), credit_maya(), live)

    assert live.get(account_id("maya"), Account) is kept  # the same object: no re-read, no copy
    assert balance(app) == 2 * CREDIT


def test_a_save_by_another_path_is_not_overwritten_by_a_stale_live_copy(app: Ledger) -> None:
    live = LiveAggregates(app)
    receive_from(app, SENDER, envelopes(1), credit_maya(), live)
    maya: Account = app.repository.get(account_id("maya"))
    maya.credit("elsewhere", 5, "federation", "a command", EntryKind.TRANSFER)
    app.save(maya)

    # A stale copy would fail the store's version check here.
    receive_from(app, SENDER, envelopes(2), credit_maya(), live)

    assert balance(app) == 2 * CREDIT + 5


def test_a_batch_whose_save_fails_is_forgotten_and_the_next_reads_the_store(
    app: Ledger, open_ledger: LedgerFactory
) -> None:
    live = LiveAggregates(app)
    receive_from(app, SENDER, envelopes(1), credit_maya(), live)
    # Another writer of the same store, which this application's listeners do not hear.
    other = open_ledger()
    other.open_member("tom", "Tom", "person")
    other.exchange("maya", "tom", 1, "elsewhere")

    with pytest.raises(IntegrityError):
        receive_from(app, SENDER, envelopes(2), credit_maya(), live)
    results = receive_from(app, SENDER, envelopes(2), credit_maya(), live)

    assert [r.outcome for r in results] == [Outcome.APPLIED]
    assert balance(app) == 2 * CREDIT - 1
    # The copy kept in memory is the store's state, other writer's exchange and all.
    maya = live.get(account_id("maya"), Account)
    assert isinstance(maya, Account)
    assert maya.balance_minutes == 2 * CREDIT - 1
