"""The rolling hash over a log: any edit, deletion or re-ordering changes every head from there
on, and a comparison with checkpoints names the first that no longer holds."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import Notification

from services.common.chain import (
    ZERO_HASH,
    canonical_bytes,
    first_mismatch,
    next_head,
    rolling_hashes,
)


def make_log(length: int = 8) -> list[Notification]:
    ids = [uuid4(), uuid4()]
    return [
        Notification(
            id=n,
            originator_id=ids[n % 2],
            originator_version=(n + 1) // 2,
            topic="services.ledger.domain:Account.Credited",
            state=b'{"minutes":%d}' % (n * 10),
        )
        for n in range(1, length + 1)
    ]


def heads(log: list[Notification]) -> list[tuple[int, bytes]]:
    return list(rolling_hashes(log))


def test_the_chain_starts_from_32_zero_bytes_and_links_each_event_with_sha256() -> None:
    log = make_log(2)
    first = hashlib.sha256(ZERO_HASH + canonical_bytes(log[0])).digest()
    second = hashlib.sha256(first + canonical_bytes(log[1])).digest()
    assert bytes(32) == ZERO_HASH
    assert heads(log) == [(1, first), (2, second)]
    assert next_head(first, log[1]) == second


def test_canonical_bytes_length_prefix_each_field_in_order() -> None:
    event = Notification(
        id=42,
        originator_id=UUID(int=1),
        originator_version=3,
        topic="t:T",
        state=b"{}",
    )

    def field(data: bytes) -> bytes:
        return len(data).to_bytes(8, "big") + data

    expected = field(b"42") + field(UUID(int=1).bytes) + field(b"3") + field(b"t:T") + field(b"{}")
    assert canonical_bytes(event) == expected


def test_fields_cannot_run_together() -> None:
    one = Notification(id=1, originator_id="ab", originator_version=1, topic="c", state=b"d")
    other = dataclasses.replace(one, originator_id="a", topic="bc")
    assert canonical_bytes(one) != canonical_bytes(other)


def test_an_odd_column_still_hashes_instead_of_failing() -> None:
    # An editor may put text where SQLite kept an integer or bytes: the chain must still move.
    usual = make_log(1)[0]
    odd = dataclasses.replace(usual, originator_version="1", state="text")  # type: ignore[arg-type]
    assert canonical_bytes(odd) != canonical_bytes(usual)
    assert len(next_head(ZERO_HASH, odd)) == 32


@pytest.mark.parametrize("position", [1, 4, 8])
def test_an_edited_state_changes_the_hash_at_and_after_that_position_only(position: int) -> None:
    log = make_log()
    edited = list(log)
    edited[position - 1] = dataclasses.replace(log[position - 1], state=b'{"minutes":9999}')
    before, after = heads(log), heads(edited)
    assert before[: position - 1] == after[: position - 1]
    assert all(
        b[1] != a[1] for b, a in zip(before[position - 1 :], after[position - 1 :], strict=True)
    )


@pytest.mark.parametrize(
    "change",
    [
        {"topic": "services.ledger.domain:Account.Debited"},
        {"originator_version": 99},
        {"originator_id": UUID(int=7)},
        {"id": 100},
    ],
)
def test_an_edit_of_any_covered_field_changes_the_hash(change: dict[str, object]) -> None:
    log = make_log()
    edited = list(log)
    edited[2] = dataclasses.replace(log[2], **change)  # type: ignore[arg-type]
    assert heads(edited)[2][1] != heads(log)[2][1]
    assert heads(edited)[-1][1] != heads(log)[-1][1]


def test_a_deleted_event_changes_every_hash_after_it() -> None:
    log = make_log()
    shortened = log[:3] + log[4:]
    before = dict(heads(log))
    after = dict(heads(shortened))
    assert all(before[p] == after[p] for p in (1, 2, 3))
    assert all(before[p] != after[p] for p in (5, 6, 7, 8))


def test_two_swapped_states_change_the_hash_from_the_first_of_them() -> None:
    log = make_log()
    swapped = list(log)
    swapped[2] = dataclasses.replace(log[2], state=log[5].state)
    swapped[5] = dataclasses.replace(log[5], state=log[2].state)
    before, after = heads(log), heads(swapped)
    assert before[:2] == after[:2]
    assert all(b[1] != a[1] for b, a in zip(before[2:], after[2:], strict=True))


def test_checkpoints_of_the_log_itself_all_hold() -> None:
    log = make_log()
    checkpoints = [(p, h.hex()) for p, h in heads(log) if p % 3 == 0]
    assert first_mismatch(log, checkpoints) is None
    assert first_mismatch(log, []) is None


def test_the_first_mismatching_checkpoint_is_reported_with_both_hashes() -> None:
    log = make_log()
    checkpoints = [(p, h.hex()) for p, h in heads(log) if p in (2, 5, 7)]
    edited = list(log)
    edited[3] = dataclasses.replace(log[3], state=b'{"minutes":1}')
    mismatch = first_mismatch(edited, checkpoints)
    assert mismatch is not None
    assert mismatch.position == 5
    assert mismatch.expected == checkpoints[1][1]
    assert mismatch.actual == dict(heads(edited))[5].hex()


def test_checkpoints_are_compared_in_position_order_whatever_order_they_come_in() -> None:
    log = make_log()
    checkpoints = [(p, h.hex()) for p, h in heads(log) if p in (2, 5, 7)]
    edited = list(log)
    edited[0] = dataclasses.replace(log[0], state=b"{}")
    mismatch = first_mismatch(edited, list(reversed(checkpoints)))
    assert mismatch is not None
    assert mismatch.position == 2


def test_a_checkpoint_at_a_deleted_position_is_reported_as_missing() -> None:
    log = make_log()
    checkpoints = [(p, h.hex()) for p, h in heads(log) if p in (4, 8)]
    mismatch = first_mismatch(log[:3] + log[4:], checkpoints)
    assert mismatch is not None
    assert (mismatch.position, mismatch.actual) == (4, None)
    assert "no event at position 4" in mismatch.detail


def test_a_checkpoint_beyond_the_end_of_a_truncated_log_is_reported() -> None:
    log = make_log()
    checkpoints = [(8, heads(log)[-1][1].hex())]
    mismatch = first_mismatch(log[:6], checkpoints)
    assert mismatch is not None
    assert (mismatch.position, mismatch.actual) == (8, None)
    assert "ends at position 6" in mismatch.detail


def test_comparison_reads_no_further_than_the_last_checkpoint() -> None:
    log = make_log()
    read: list[int] = []

    def stream() -> Iterator[Notification]:
        for event in log:
            read.append(event.id)
            yield event

    assert first_mismatch(stream(), [(3, heads(log)[2][1].hex())]) is None
    assert read == [1, 2, 3]


@pytest.mark.parametrize(
    ("position", "hash_hex"),
    [(0, "00" * 32), (1, "zz" * 32), (1, "00" * 31), (True, "00" * 32)],
)
def test_a_malformed_checkpoint_is_refused(position: int, hash_hex: str) -> None:
    with pytest.raises(ValueError, match="checkpoint"):
        first_mismatch(make_log(), [(position, hash_hex)])
