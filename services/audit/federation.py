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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from services.audit.eventlog import EventLog, UnreadableRow
from services.audit.findings import BankAudit, Finding
from services.audit.replay import Observer
from services.clearing.domain import CheckpointLog, MemberBank, Transfer
from services.ledger.domain import (
    FEDERATION_ACCOUNT,
    Account,
)
from services.ledger.domain_federation import (
    CrossBankTransfer,
)
from shared.signing import checkpoint_payload, verify

INVARIANT_2 = "invariant-2"
INVARIANT_3 = "invariant-3"
INVARIANT_4 = "invariant-4"
CHECKPOINT = "checkpoint"
FEDERATION = FEDERATION_ACCOUNT

_ADMITTED = get_topic(MemberBank.Admitted)
_BANK_DEBITED = get_topic(MemberBank.Debited)
_BANK_CREDITED = get_topic(MemberBank.Credited)
_BANK_SETTLED = get_topic(MemberBank.Settled)
_REQUESTED = get_topic(Transfer.Requested)
_COMMITTED = get_topic(Transfer.Committed)
_ABORTED = get_topic(Transfer.Aborted)
_CHECKPOINTS_STARTED = get_topic(CheckpointLog.Started)
_CHECKPOINT_RECORDED = get_topic(CheckpointLog.Recorded)

_TRANSFER_STARTED = get_topic(CrossBankTransfer.Started)
_TRANSFER_COMMITTED = get_topic(CrossBankTransfer.Committed)
_TRANSFER_ABORTED = get_topic(CrossBankTransfer.Aborted)
_HOLD_POSTED = get_topic(Account.HoldPosted)


@dataclass
class _ClearingTransfer:
    payer_bank: str
    payee_bank: str
    minutes: int
    status: str = "preparing"
    debited: int = 0
    credited: int = 0


@dataclass
class ClearingBooks:
    """What the clearing house's log says, rebuilt from its events."""

    positions: dict[str, int] = field(default_factory=dict)
    public_keys: dict[str, str] = field(default_factory=dict)
    transfers: dict[str, _ClearingTransfer] = field(default_factory=dict)
    checkpoints: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)
    events: int = 0
    problems: list[Finding] = field(default_factory=list)


def fold_clearing(
    batches: Iterable[Iterable[Notification | UnreadableRow]],
    decode: Callable[[Notification], dict[str, Any]],
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
                books.problems.append(Finding(row.id, "?", "decode", row.reason))
                continue
            try:
                _fold_clearing_event(books, row, decode, banks, transfers, checkpoint_logs)
            except Exception as e:  # a garbled event is a finding, not a crash
                books.problems.append(
                    Finding(row.id, row.topic.rsplit(".", 1)[-1], "decode", str(e) or repr(e))
                )
    return books


def _fold_clearing_event(
    books: ClearingBooks,
    row: Notification,
    decode: Callable[[Notification], dict[str, Any]],
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
        books.public_keys[d["bank_id"]] = d.get("public_key", "")
    elif topic in (_BANK_DEBITED, _BANK_CREDITED, _BANK_SETTLED):
        bank_id = banks[origin]
        sign = -1 if topic == _BANK_DEBITED else 1
        books.positions[bank_id] += sign * int(d["minutes"])
        if topic != _BANK_SETTLED:
            transfer = books.transfers[d["transfer_id"]]
            if topic == _BANK_DEBITED:
                transfer.debited += 1
            else:
                transfer.credited += 1
    elif topic == _REQUESTED:
        transfers[origin] = d["transfer_id"]
        books.transfers[d["transfer_id"]] = _ClearingTransfer(
            d["payer_bank"], d["payee_bank"], int(d["minutes"])
        )
    elif topic in (_COMMITTED, _ABORTED):
        books.transfers[transfers[origin]].status = (
            "committed" if topic == _COMMITTED else "aborted"
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

    def observe(self, row: Notification, d: dict[str, Any] | None, head: bytes) -> None:
        self.last_position = row.id
        if row.id in self.wanted_heads:
            self.heads[row.id] = head.hex()
        topic = row.topic
        if d is None or topic not in _BANK_TOPICS:
            return  # an undecodable event is the bank's replay's to report
        origin = UUID(str(row.originator_id))
        if topic == _TRANSFER_STARTED:
            self._transfers[origin] = d["transfer_id"]
            self.status[d["transfer_id"]] = "pending"
        elif topic == _TRANSFER_COMMITTED and origin in self._transfers:
            self.status[self._transfers[origin]] = "committed"
        elif topic == _TRANSFER_ABORTED and origin in self._transfers:
            self.status[self._transfers[origin]] = "aborted"
        elif topic == _HOLD_POSTED and d.get("kind") == "transfer":
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
            "problems": [
                {"position": p.position, "event": p.event, "rule": p.rule, "detail": p.detail}
                for p in self.problems
            ],
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
        balance = audit.balances.get(FEDERATION)
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
            bank_id, clearing.public_keys.get(bank_id, ""), clearing.checkpoints, side
        )
    return problems


def _check_transfers(clearing: ClearingBooks, sides: dict[str, BankTransfers]) -> Iterator[Finding]:
    for transfer_id, t in clearing.transfers.items():
        what = f"transfer {transfer_id}"
        if t.status == "committed":
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
                if posted != 1 or status != "committed":
                    yield Finding(
                        None,
                        what,
                        INVARIANT_4,
                        f"committed at the clearing house, but {status} at {bank_id} and posted "
                        f"there {posted} time(s)",
                    )
        elif t.status == "aborted":
            if t.debited or t.credited:
                yield Finding(None, what, INVARIANT_4, "aborted, but posted at the clearing house")
            for bank_id in (t.payer_bank, t.payee_bank):
                side = sides.get(bank_id)
                if side is not None and (
                    side.posted[transfer_id] or side.status.get(transfer_id) == "committed"
                ):
                    yield Finding(
                        None,
                        what,
                        INVARIANT_4,
                        f"aborted at the clearing house, but {side.status.get(transfer_id)} at "
                        f"{bank_id} and posted there {side.posted[transfer_id]} time(s)",
                    )
    for bank_id, side in sorted(sides.items()):
        for transfer_id, status in side.status.items():
            known = clearing.transfers.get(transfer_id)
            if status == "committed" and (known is None or known.status != "committed"):
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
    public_key: str,
    all_checkpoints: dict[str, list[tuple[int, str, str]]],
    side: BankTransfers,
) -> Iterator[Finding]:
    """The bank's log against every checkpoint the clearing house holds for it."""
    previous = 0
    for position, chain_hash, signature in sorted(all_checkpoints.get(bank_id, [])):
        where = f"checkpoint of {bank_id} at {position}"
        if not public_key or not verify(
            public_key, checkpoint_payload(bank_id, position, chain_hash), signature
        ):
            yield Finding(
                position,
                where,
                CHECKPOINT,
                "its signature does not verify against the key the bank was admitted with",
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
