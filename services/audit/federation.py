"""Auditing a whole federation: the clearing house's log and every bank's, each replayed from its
first event, then cross-checked.

Each bank's own rules come from its replay (services/audit/replay.py). Across logs:

``invariant-2``
    each bank's ``federation`` account equals minus its position at the clearing house (once
    both have applied the same decisions: audit a federation at rest).
``invariant-3``
    the positions, rebuilt from the clearing house's events, sum to zero.
``invariant-4``
    a transfer the clearing house committed is posted exactly once at the payer's bank, once
    at the payee's bank and once at the clearing house (the payer bank debited, the payee bank
    credited); an aborted one is posted nowhere; no bank has a transfer committed that the
    clearing house did not commit.
``checkpoint``
    every checkpoint the clearing house holds for a bank is signed by the key the bank was
    admitted with, and the bank's log reproduces its hash at its position: an edit, deletion or
    re-ordering before a checkpoint shows even when the bank's own records were rewritten to
    match.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from services.audit.clearing_books import ClearingBooks, ClearingTransfer, fold_clearing
from services.audit.eventlog import EventLog
from services.audit.findings import (
    CHECKPOINT,
    INVARIANT_2,
    INVARIANT_3,
    INVARIANT_4,
    BankAudit,
    Finding,
)
from services.audit.replay import Observer
from services.clearing.domain_terms import TransferPhase
from services.common.chain import StoredEventRow
from services.ledger.domain import (
    Account,
    CrossBankTransfer,
)
from services.ledger.domain_terms import (
    FEDERATION_ACCOUNT,
    EntryKind,
    TransferStatus,
)
from shared.signing import checkpoint_payload, verify_any

_TRANSFER_STARTED = get_topic(CrossBankTransfer.Started)
_TRANSFER_COMMITTED = get_topic(CrossBankTransfer.Committed)
_TRANSFER_ABORTED = get_topic(CrossBankTransfer.Aborted)
_HOLD_POSTED = get_topic(Account.HoldPosted)


@dataclass
class BankTransfers:
    """A bank's side of every cross-bank transfer, and its log's hash chain, gathered while
    the bank's replay passes over its log (``observe``)."""

    # The positions the clearing house checkpointed: the chain's head is kept at those.
    wanted_heads: set[int] = field(default_factory=set)
    status: dict[str, str] = field(default_factory=dict)
    # Transfer id -> how often its hold was posted here (payer's or pending credit's).
    posted: Counter[str] = field(default_factory=Counter)
    heads: dict[int, str] = field(default_factory=dict)
    last_position: int = 0
    _transfers: dict[UUID, str] = field(default_factory=dict)

    def observe(self, row: StoredEventRow, d: dict[str, Any] | None, head: bytes) -> None:
        self.last_position = row.id
        if row.id in self.wanted_heads:
            self.heads[row.id] = head.hex()
        topic = row.topic
        if d is None or topic not in _BANK_TOPICS:
            return  # an undecodable event is the bank's replay's to report
        origin = UUID(str(row.originator_id))
        if topic == _TRANSFER_STARTED:
            self._transfers[origin] = d["transfer_id"]
            self.status[d["transfer_id"]] = TransferStatus.PENDING
        elif topic == _TRANSFER_COMMITTED and origin in self._transfers:
            self.status[self._transfers[origin]] = TransferStatus.COMMITTED
        elif topic == _TRANSFER_ABORTED and origin in self._transfers:
            self.status[self._transfers[origin]] = TransferStatus.ABORTED
        elif topic == _HOLD_POSTED and d.get("kind") == EntryKind.TRANSFER:
            self.posted[d["hold_id"]] += 1


_BANK_TOPICS = frozenset({_TRANSFER_STARTED, _TRANSFER_COMMITTED, _TRANSFER_ABORTED, _HOLD_POSTED})


@dataclass(frozen=True)
class FederationAudit:
    clearing_events: int
    positions: dict[str, int]
    banks: dict[str, BankAudit]
    problems: list[Finding]
    # How many of each bank's signed checkpoints the clearing house holds (each one checked).
    checkpoints: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and all(bank.ok for bank in self.banks.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "clearing_events": self.clearing_events,
            "positions": self.positions,
            "banks": {bank_id: audit.to_json() for bank_id, audit in self.banks.items()},
            "checkpoints": self.checkpoints,
            "problems": [p.to_json() for p in self.problems],
            "ok": self.ok,
        }


def cross_check(
    clearing: ClearingBooks,
    bank_audits: dict[str, BankAudit],
    bank_sides: dict[str, BankTransfers],
) -> list[Finding]:
    """Invariants 2, 3 and 4 and the checkpoints, across the clearing house and the banks."""
    problems = list(clearing.problems)
    total = sum(clearing.positions.values())
    if total:
        problems.append(Finding(None, "positions", INVARIANT_3, f"positions sum to {total}"))
    for bank_id, position in sorted(clearing.positions.items()):
        audit = bank_audits.get(bank_id)
        if audit is None:
            problems.append(
                Finding(None, f"bank {bank_id}", INVARIANT_2, "the bank's log was not audited")
            )
            continue
        balance = audit.balances.get(FEDERATION_ACCOUNT)
        federation = balance.posted_minutes if balance is not None else 0
        if federation != -position:
            problems.append(
                Finding(
                    None,
                    f"bank {bank_id}",
                    INVARIANT_2,
                    f"its federation account is {federation} but its position at the clearing "
                    f"house is {position}",
                )
            )
    problems += _check_transfers(clearing, bank_sides)
    for bank_id, side in sorted(bank_sides.items()):
        problems += _check_checkpoints(
            bank_id, clearing.public_keys.get(bank_id, []), clearing.checkpoints, side
        )
    return problems


def _check_transfers(clearing: ClearingBooks, sides: dict[str, BankTransfers]) -> Iterator[Finding]:
    for transfer_id, t in clearing.transfers.items():
        if t.status == TransferPhase.COMMITTED:
            yield from _check_committed(transfer_id, t, sides)
        elif t.status == TransferPhase.ABORTED:
            yield from _check_aborted(transfer_id, t, sides)
    for bank_id, side in sorted(sides.items()):
        yield from _check_bank_commits(bank_id, side, clearing)


def _check_committed(
    transfer_id: str, t: ClearingTransfer, sides: dict[str, BankTransfers]
) -> Iterator[Finding]:
    """A transfer the clearing house committed: posted once there and once at each bank."""
    what = f"transfer {transfer_id}"
    if (t.debited, t.credited) != (1, 1):
        yield Finding(
            None,
            what,
            INVARIANT_4,
            f"the clearing house debited {t.payer_bank} {t.debited} time(s) and "
            f"credited {t.payee_bank} {t.credited} time(s), not once each",
        )
    for bank_id in (t.payer_bank, t.payee_bank):
        side = sides.get(bank_id)
        if side is None:
            continue
        posted = side.posted[transfer_id]
        status = side.status.get(transfer_id, "unknown")
        if posted != 1 or status != TransferStatus.COMMITTED:
            yield Finding(
                None,
                what,
                INVARIANT_4,
                f"committed at the clearing house, but {status} at {bank_id} and posted "
                f"there {posted} time(s)",
            )


def _check_aborted(
    transfer_id: str, t: ClearingTransfer, sides: dict[str, BankTransfers]
) -> Iterator[Finding]:
    """A transfer the clearing house aborted: posted nowhere."""
    what = f"transfer {transfer_id}"
    if t.debited or t.credited:
        yield Finding(None, what, INVARIANT_4, "aborted, but posted at the clearing house")
    for bank_id in (t.payer_bank, t.payee_bank):
        side = sides.get(bank_id)
        if side is not None and (
            side.posted[transfer_id] or side.status.get(transfer_id) == TransferStatus.COMMITTED
        ):
            yield Finding(
                None,
                what,
                INVARIANT_4,
                f"aborted at the clearing house, but {side.status.get(transfer_id)} at "
                f"{bank_id} and posted there {side.posted[transfer_id]} time(s)",
            )


def _check_bank_commits(
    bank_id: str, side: BankTransfers, clearing: ClearingBooks
) -> Iterator[Finding]:
    """No bank has a transfer committed that the clearing house did not commit."""
    for transfer_id, status in side.status.items():
        known = clearing.transfers.get(transfer_id)
        if status == TransferStatus.COMMITTED and (
            known is None or known.status != TransferPhase.COMMITTED
        ):
            yield Finding(
                None,
                f"transfer {transfer_id}",
                INVARIANT_4,
                f"committed at {bank_id}, but "
                + ("unknown" if known is None else known.status)
                + " at the clearing house",
            )


def _check_checkpoints(
    bank_id: str,
    public_keys: list[str],
    all_checkpoints: dict[str, list[tuple[int, str, str]]],
    side: BankTransfers,
) -> Iterator[Finding]:
    """The bank's log against every checkpoint the clearing house holds for it."""
    previous = 0
    for position, chain_hash, signature in sorted(all_checkpoints.get(bank_id, [])):
        where = f"checkpoint of {bank_id} at {position}"
        payload = checkpoint_payload(bank_id, position, chain_hash)
        if not verify_any(public_keys, payload, signature):
            yield Finding(
                position,
                where,
                CHECKPOINT,
                "its signature does not verify against the key the bank was admitted with "
                "(or any it rotated to)",
            )
            continue
        head = side.heads.get(position)
        if head is None:
            yield Finding(
                position,
                where,
                CHECKPOINT,
                f"the log has no event at position {position} (it ends at {side.last_position}"
                " or the event was deleted): the log was cut or edited",
            )
            return
        if head != chain_hash:
            yield Finding(
                position,
                where,
                CHECKPOINT,
                f"the log does not hash to the signed checkpoint: an event between positions "
                f"{previous + 1} and {position} was edited, deleted, inserted or moved",
            )
            return
        previous = position


def wanted_positions(clearing: ClearingBooks, bank_id: str) -> set[int]:
    return {position for position, _, _ in clearing.checkpoints.get(bank_id, [])}


def audit_federation(
    clearing_log: EventLog,
    bank_logs: dict[str, EventLog],
    bank_audit: Callable[[str, EventLog, Observer], BankAudit],
) -> FederationAudit:
    """Replay the clearing house's log and each bank's, then cross-check them. ``bank_audit``
    replays one bank, showing every event to the observer it is given: one pass per log."""
    clearing = fold_clearing(clearing_log.batches(), clearing_log.decode)
    audits: dict[str, BankAudit] = {}
    sides: dict[str, BankTransfers] = {}
    for bank_id, log in bank_logs.items():
        sides[bank_id] = BankTransfers(wanted_positions(clearing, bank_id))
        audits[bank_id] = bank_audit(bank_id, log, sides[bank_id].observe)
    return FederationAudit(
        clearing_events=clearing.events,
        positions=dict(clearing.positions),
        banks=audits,
        problems=cross_check(clearing, audits, sides),
        checkpoints={b: len(clearing.checkpoints.get(b, [])) for b in bank_logs},
    )
