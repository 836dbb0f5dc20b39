"""Signed checkpoints of a bank's log: the bank's Checkpointer follows its own log with the hash
chain and queues a signed checkpoint for the clearing house, which keeps it only if the
signature verifies against the key given at the bank's admission."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from services.clearing.application import Clearing
from services.common.chain import first_mismatch
from services.common.inbox import Outcome, Received
from services.common.outbox import QUEUED_TOPIC, envelope_of
from services.common.stores import parse_store_url
from services.ledger.application import (
    Ledger,
)
from services.ledger.checkpoints import Checkpointer
from shared.protocol import CLEARING, CheckpointPublished, Envelope
from shared.signing import SigningKey
from tests.conftest import LedgerFactory
from tests.helpers import BANK_ID


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def clearing(tmp_path: Path, key: SigningKey) -> Iterator[Clearing]:
    app = Clearing(parse_store_url(f"sqlite:///{tmp_path}/clearing.db"))
    app.admit_bank(BANK_ID, "Rushey Green", 600, public_key=key.public_key)
    yield app
    app.close()


def log_of(ledger: Ledger) -> Iterator[object]:
    position = 1
    while batch := ledger.recorder.select_notifications(start=position, limit=100):
        yield from batch
        position = batch[-1].id + 1


def sent_checkpoints(ledger: Ledger) -> list[Envelope]:
    queued = ledger.recorder.select_notifications(start=1, limit=10_000, topics=[QUEUED_TOPIC])
    envelopes = [envelope_of(ledger.mapper.to_domain_event(n)) for n in queued]  # type: ignore[arg-type]
    return [e for e in envelopes if isinstance(e.message, CheckpointPublished)]


def some_activity(ledger: Ledger, n: int = 3) -> None:
    for i in range(n):
        ledger.open_member(f"m{i}", f"Member {i}", "person")
    ledger.exchange("m0", "m1", 30, "gardening")


def deliver(clearing: Clearing, envelopes: list[Envelope]) -> list[Received]:
    return clearing.receive(envelopes)


def test_a_checkpoint_is_the_chain_head_of_the_log_it_covers_signed_by_the_bank(
    ledger: Ledger, key: SigningKey
) -> None:
    some_activity(ledger)
    checkpointer = Checkpointer(ledger, key)

    checkpoint = checkpointer.checkpoint()

    assert checkpoint is not None
    [envelope] = sent_checkpoints(ledger)
    assert envelope.message == checkpoint
    assert envelope.destination == CLEARING
    # The log reproduces the checkpoint's hash at its position (the checkpoint's own queueing
    # comes after it).
    assert first_mismatch(log_of(ledger), [(checkpoint.position, checkpoint.chain_hash)]) is None  # type: ignore[arg-type]
    assert checkpoint.position < max(n.id for n in log_of(ledger))  # type: ignore[attr-defined]


def test_no_checkpoint_is_sent_when_nothing_but_the_last_checkpoint_was_stored(
    ledger: Ledger, key: SigningKey
) -> None:
    some_activity(ledger)
    checkpointer = Checkpointer(ledger, key)
    assert checkpointer.checkpoint() is not None

    assert checkpointer.checkpoint() is None
    ledger.exchange("m1", "m2", 5, "tea")
    later = checkpointer.checkpoint()

    assert later is not None
    assert len(sent_checkpoints(ledger)) == 2


def test_after_a_restart_the_checkpointer_catches_up_from_the_log_and_sends_nothing_twice(
    open_ledger: LedgerFactory, key: SigningKey
) -> None:
    ledger = open_ledger()
    some_activity(ledger)
    first = Checkpointer(ledger, key).checkpoint()
    assert first is not None

    again = Checkpointer(open_ledger(), key)

    assert again.checkpoint() is None
    assert again.head.hex() != first.chain_hash  # it also folded the checkpoint's own event
    assert len(sent_checkpoints(ledger)) == 1


def test_the_clearing_keeps_a_checkpoint_whose_signature_verifies(
    ledger: Ledger, key: SigningKey, clearing: Clearing
) -> None:
    some_activity(ledger)
    checkpoint = Checkpointer(ledger, key).checkpoint()
    assert checkpoint is not None

    [result] = deliver(clearing, sent_checkpoints(ledger))

    assert result.outcome is Outcome.APPLIED
    assert clearing.checkpoints(BANK_ID) == [
        (checkpoint.position, checkpoint.chain_hash, checkpoint.signature)
    ]


def test_a_checkpoint_signed_with_another_key_is_rejected_and_not_kept(
    ledger: Ledger, clearing: Clearing
) -> None:
    some_activity(ledger)
    Checkpointer(ledger, SigningKey.generate()).checkpoint()

    [result] = deliver(clearing, sent_checkpoints(ledger))

    assert result.outcome is Outcome.REJECTED
    assert "does not verify" in result.reason
    assert clearing.checkpoints(BANK_ID) == []


def test_a_checkpoint_whose_hash_was_changed_in_transit_is_rejected(
    ledger: Ledger, key: SigningKey, clearing: Clearing
) -> None:
    some_activity(ledger)
    Checkpointer(ledger, key).checkpoint()
    [envelope] = sent_checkpoints(ledger)
    message = msgspec.structs.replace(envelope.message, chain_hash="0" * 64)
    forged = msgspec.structs.replace(envelope, message=message)

    [result] = deliver(clearing, [forged])

    assert result.outcome is Outcome.REJECTED
    assert clearing.checkpoints(BANK_ID) == []


def test_a_checkpoint_from_a_bank_admitted_without_a_key_is_rejected(
    ledger: Ledger, key: SigningKey, tmp_path: Path
) -> None:
    clearing = Clearing(parse_store_url(f"sqlite:///{tmp_path}/keyless.db"))
    clearing.admit_bank(BANK_ID, "Rushey Green", 600)
    some_activity(ledger)
    Checkpointer(ledger, key).checkpoint()

    [result] = deliver(clearing, sent_checkpoints(ledger))

    assert result.outcome is Outcome.REJECTED
    assert "no public key" in result.reason
    clearing.close()


def test_two_different_hashes_signed_for_one_position_are_refused_as_a_fork(
    ledger: Ledger, key: SigningKey, clearing: Clearing
) -> None:
    some_activity(ledger)
    checkpointer = Checkpointer(ledger, key)
    first = checkpointer.checkpoint()
    assert first is not None
    deliver(clearing, sent_checkpoints(ledger))
    # A rewritten log, signed with the bank's own key: same position, another hash.
    other_hash = "f" * 64
    fork = CheckpointPublished(
        position=first.position,
        chain_hash=other_hash,
        signature=key.sign(_payload(first.position, other_hash)),
    )
    ledger.send_checkpoint(fork)

    results = deliver(clearing, sent_checkpoints(ledger)[1:])

    assert [r.outcome for r in results] == [Outcome.REJECTED]
    assert "two hashes" in results[0].reason
    assert clearing.checkpoints(BANK_ID) == [(first.position, first.chain_hash, first.signature)]


def test_an_older_checkpoint_repeated_is_ignored(
    ledger: Ledger, key: SigningKey, clearing: Clearing
) -> None:
    some_activity(ledger)
    checkpointer = Checkpointer(ledger, key)
    first = checkpointer.checkpoint()
    ledger.exchange("m1", "m2", 5, "tea")
    second = checkpointer.checkpoint()
    assert first is not None
    assert second is not None
    ledger.send_checkpoint(first)  # sent again, after a later one

    results = deliver(clearing, sent_checkpoints(ledger))

    assert [r.outcome for r in results] == [Outcome.APPLIED] * 3
    assert [c[0] for c in clearing.checkpoints(BANK_ID)] == [first.position, second.position]


def _payload(position: int, chain_hash: str) -> bytes:
    from shared.signing import checkpoint_payload

    return checkpoint_payload(BANK_ID, position, chain_hash)
