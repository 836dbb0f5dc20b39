"""The clearing house's log, folded into its books: each bank's position and public key, each
transfer's terms, decision and postings, and each bank's signed checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from services.audit.eventlog import UnreadableRow
from services.audit.findings import DECODE, Finding
from services.clearing.domain import (
    CheckpointLog,
    MemberBank,
    Transfer,
)
from services.clearing.domain_terms import TransferPhase
from services.common.chain import StoredEventRow

_ADMITTED = get_topic(MemberBank.Admitted)
_KEY_ROTATED = get_topic(MemberBank.KeyRotated)
_BANK_DEBITED = get_topic(MemberBank.Debited)
_BANK_CREDITED = get_topic(MemberBank.Credited)
_BANK_SETTLED = get_topic(MemberBank.Settled)
_REQUESTED = get_topic(Transfer.Requested)
_COMMITTED = get_topic(Transfer.Committed)
_ABORTED = get_topic(Transfer.Aborted)
_CHECKPOINTS_STARTED = get_topic(CheckpointLog.Started)
_CHECKPOINT_RECORDED = get_topic(CheckpointLog.Recorded)


@dataclass
class ClearingTransfer:
    """A transfer as the clearing house's log shows it."""

    payer_bank: str
    payee_bank: str
    minutes: int
    status: str = TransferPhase.PREPARING
    debited: int = 0
    credited: int = 0


@dataclass
class ClearingBooks:
    """What the clearing house's log says, rebuilt from its events."""

    positions: dict[str, int] = field(default_factory=dict)
    # Every key each bank has held (admitted with, then rotated to), oldest first.
    public_keys: dict[str, list[str]] = field(default_factory=dict)
    transfers: dict[str, ClearingTransfer] = field(default_factory=dict)
    checkpoints: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)
    events: int = 0
    problems: list[Finding] = field(default_factory=list)


def fold_clearing(
    batches: Iterable[Iterable[StoredEventRow | UnreadableRow]],
    decode: Callable[[StoredEventRow], dict[str, Any]],
) -> ClearingBooks:
    """Rebuild positions, transfers and checkpoints from the clearing house's events."""
    books = ClearingBooks()
    banks: dict[UUID, str] = {}
    transfers: dict[UUID, str] = {}
    checkpoint_logs: dict[UUID, str] = {}
    for batch in batches:
        for row in batch:
            books.events += 1
            if isinstance(row, UnreadableRow):
                books.problems.append(Finding(row.id, "?", DECODE, row.reason))
                continue
            try:
                _fold_clearing_event(books, row, decode, banks, transfers, checkpoint_logs)
            except Exception as e:  # a garbled event is a finding, not a crash
                books.problems.append(
                    Finding(row.id, row.topic.rsplit(".", 1)[-1], DECODE, str(e) or repr(e))
                )
    return books


def _moved(books: ClearingBooks, topic: str, bank_id: str, d: dict[str, Any]) -> None:
    """A bank's position moved: by a committed transfer (counted on it) or a settlement."""
    sign = -1 if topic == _BANK_DEBITED else 1
    books.positions[bank_id] += sign * int(d["minutes"])
    if topic != _BANK_SETTLED:
        transfer = books.transfers[d["transfer_id"]]
        if topic == _BANK_DEBITED:
            transfer.debited += 1
        else:
            transfer.credited += 1


def _fold_clearing_event(
    books: ClearingBooks,
    row: StoredEventRow,
    decode: Callable[[StoredEventRow], dict[str, Any]],
    banks: dict[UUID, str],
    transfers: dict[UUID, str],
    checkpoint_logs: dict[UUID, str],
) -> None:
    topic = row.topic
    if topic not in _CLEARING_TOPICS:
        return
    d = decode(row)
    origin = UUID(str(row.originator_id))
    if topic == _ADMITTED:
        banks[origin] = d["bank_id"]
        books.positions[d["bank_id"]] = 0
        books.public_keys[d["bank_id"]] = [d.get("public_key", "")]
    elif topic == _KEY_ROTATED:
        books.public_keys[banks[origin]].append(d["public_key"])
    elif topic in (_BANK_DEBITED, _BANK_CREDITED, _BANK_SETTLED):
        _moved(books, topic, banks[origin], d)
    elif topic == _REQUESTED:
        transfers[origin] = d["transfer_id"]
        books.transfers[d["transfer_id"]] = ClearingTransfer(
            d["payer_bank"], d["payee_bank"], int(d["minutes"])
        )
    elif topic in (_COMMITTED, _ABORTED):
        books.transfers[transfers[origin]].status = (
            TransferPhase.COMMITTED if topic == _COMMITTED else TransferPhase.ABORTED
        )
    elif topic == _CHECKPOINTS_STARTED:
        checkpoint_logs[origin] = d["bank_id"]
        books.checkpoints.setdefault(d["bank_id"], [])
    elif topic == _CHECKPOINT_RECORDED:
        books.checkpoints[checkpoint_logs[origin]].append(
            (int(d["position"]), d["chain_hash"], d["signature"])
        )


_CLEARING_TOPICS = frozenset(
    {
        _ADMITTED,
        _KEY_ROTATED,
        _BANK_DEBITED,
        _BANK_CREDITED,
        _BANK_SETTLED,
        _REQUESTED,
        _COMMITTED,
        _ABORTED,
        _CHECKPOINTS_STARTED,
        _CHECKPOINT_RECORDED,
    }
)
