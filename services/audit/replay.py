"""Replaying one bank's event log from nothing: every balance rebuilt, every invariant checked.

The replay never reads a stored balance or snapshot and never loads an aggregate through a
repository: it folds the decoded events into plain state of its own, one event at a time, in
notification order, and keeps only what later events can still need (accounts, open holds,
undecided transfers, half-recorded double entries), so its memory does not grow with the log.

It checks the rules named in services/audit/findings.py, one event at a time.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from services.audit.accounts import AccountBook
from services.audit.decoding import (
    FOLDED,
    ClearingOutboxOpened,
    DefaultOverdraftChanged,
    Folded,
    OutboxOpened,
    PolicyAdopted,
    TransferAborted,
    TransferCommitted,
    TransferStarted,
    Unread,
    converter,
    explain,
)
from services.audit.eventlog import DEFAULT_BATCH_SIZE, EventLog, UnreadableRow
from services.audit.findings import DECODE, BankAudit, EventRef, Findings
from services.audit.ordering import LogOrder
from services.audit.transfers import TransferBook
from services.common.chain import ZERO_HASH, StoredEventRow, canonical_bytes
from services.ledger.domain_terms import (
    TransferStatus,
)

# The two halves of a double entry are saved in one transaction, so they lie close together in
# the log: at most a save apart (a save holds one command's events, or one batch of messages
# from the clearing house, far fewer than this). A half still alone this many events later, or
# a transfer still half-recorded, has lost its other part.
DEFAULT_ENTRY_SPAN = 100_000

# Called with each event replayed, its decoded state (None if undecodable) and the chain's head.
Observer = Callable[[StoredEventRow, "dict[str, Any] | None", bytes], None]

_NEVER = sys.maxsize


class _Malformed(Exception):
    """An event that decoded but cannot be folded: a field is missing or of the wrong kind."""


class BankReplay:
    """Folds one bank's stored events, in log order, into balances, checking as it goes.

    When the books must balance (invariant 1). Event by event they need not: a debit and its
    credit are two events of one save, and the log shows no save boundaries. Timestamps do not
    mark them either: every event is stamped when it is made, and a save from a batch of the
    clearing house's messages groups its events by aggregate, so a credit can come thousands
    of events before its debit. So the replay pairs each posting with its other half (same
    entry id, the two accounts, debit and credit) and checks the sum of all posted balances at
    every *balanced point*: each time the last half-recorded double entry is completed. Those
    are the points where every save seen so far is whole as far as postings go. A half that
    finds no partner is reported under ``double-entry`` (after ``entry_span`` events, or at the
    end) and waited for no longer; its minutes stay counted, so the next balanced point shows
    the books out of balance. An imbalance is reported where it appears and again only when it
    changes, not at every later point.

    Available balances (invariant 5) are checked after every event on a member's account: an
    account's own events are in the order its rules were checked in, so every intermediate
    value is one the ledger really held.

    ``until``: the log is replayed up to the first event stamped after it. The log is in commit
    order and an event is stamped before its save commits, so that prefix holds every save
    committed by then. A save in flight at that moment can be cut in two (a save's events are
    not in time order); then the replay goes on just until no double entry or transfer is left
    half-recorded, i.e. to the end of that save, rather than report the cut as a broken log.
    """

    def __init__(
        self,
        decode: Callable[[StoredEventRow], dict[str, Any]],
        *,
        default_overdraft_minutes: int,
        until: datetime | None = None,
        contiguous_ids: bool = True,
        entry_span: int = DEFAULT_ENTRY_SPAN,
        observe: Observer | None = None,
    ) -> None:
        self._decode = decode
        self._observe = observe
        self.until = until
        self.contiguous_ids = contiguous_ids
        self.entry_span = entry_span
        self.bank: str | None = None
        self.events = 0
        self.done = False
        self.findings = Findings()
        self.head = ZERO_HASH
        self.position = 0
        self.transfers = TransferBook(self.findings.add, self._waiting_since)
        self.accounts = AccountBook(
            self.findings.add, self._waiting_since, self.transfers, default_overdraft_minutes
        )
        self.order = LogOrder(self.findings.add, self.accounts.label, contiguous_ids)
        self._cut_at: int | None = None
        # The next position at which something waiting may have waited too long.
        self._expire_at = _NEVER
        # Each event type folded -> how its state is converted, and what folds it.
        folders = self._folders()
        self._folds: dict[str, tuple[Callable[[dict[str, Any]], Folded], Callable[..., None]]] = {
            topic: (converter(struct), folders[struct]) for topic, struct in FOLDED.items()
        }

    def _folders(self) -> dict[type[Folded], Callable[..., None]]:
        return {
            **self.accounts.folders(),
            TransferStarted: self.transfers.started,
            TransferCommitted: self._transfer_committed,
            TransferAborted: self._transfer_aborted,
            OutboxOpened: self._outbox_opened,
            PolicyAdopted: self._policy,
            DefaultOverdraftChanged: self._policy,
            Unread: _ignored,
        }

    # The log, one stored event at a time.

    def feed(self, row: StoredEventRow | UnreadableRow) -> None:
        """Replay one stored event (or note that it could not be read). Sets ``done`` when the
        cut-off has been reached; later events must not be fed."""
        if self.done:
            return
        if isinstance(row, UnreadableRow):
            self._unreadable(row)
            return
        originator_id = row.originator_id
        key = originator_id.int if type(originator_id) is UUID else str(originator_id)
        ref = EventRef(row.id, row.topic, originator_id, row.originator_version, key)
        state, timestamp = self._decoded(row, ref)
        if self.until is not None and not self._within_cut_off(timestamp, row.id):
            self.done = True
            return
        self.events += 1
        self.position = row.id
        self.head = hashlib.sha256(self.head + canonical_bytes(row)).digest()
        if self._observe is not None:
            self._observe(row, state, self.head)
        self.order.check(ref, timestamp)
        if state is not None:
            self._fold(state, ref)
        if row.id >= self._expire_at:
            self._expire(row.id)
        if self._cut_at is not None and self._settled():
            self.done = True

    def _unreadable(self, row: UnreadableRow) -> None:
        ref = EventRef(row.id, "", "", 0, "")
        self.order.check_gap(ref)
        self.events += 1
        self.position = row.id
        self.findings.add(
            ref, DECODE, f"the row cannot be read: {row.reason}", event="an unreadable row"
        )

    def _decoded(
        self, row: StoredEventRow, ref: EventRef
    ) -> tuple[dict[str, Any] | None, datetime | None]:
        """The event's stored state and its timestamp; (None, None) if it cannot be decoded."""
        try:
            state = self._decode(row)
            timestamp = state["timestamp"]
            if type(timestamp) is not datetime:
                raise _Malformed(f"timestamp must be a date and time, not {timestamp!r}")
        except Exception as e:
            self.findings.add(ref, DECODE, f"cannot decode: {_one_line(e)}")
            return None, None
        return state, timestamp

    def _fold(self, state: dict[str, Any], ref: EventRef) -> None:
        fold = self._folds.get(ref.topic)
        if fold is None:
            detail = f"the audit has no rule for events of type {ref.topic}"
        else:
            convert, folder = fold
            try:
                event = convert(state)
            except msgspec.ValidationError as e:
                detail = explain(e, state)
            else:
                folder(event, ref)
                return
        self.findings.add(ref, DECODE, f"cannot fold: {detail}", self.accounts.label(ref))

    def _within_cut_off(self, timestamp: datetime | None, position: int) -> bool:
        """Whether the event belongs in a replay up to ``until``."""
        assert self.until is not None
        if self._cut_at is None:
            if timestamp is None or timestamp <= self.until:
                return True
            self._cut_at = position
        # Past the cut-off: only to finish what is half-recorded (which cannot wait longer
        # than the entry span: then it is given up on, and the replay is settled).
        return not self._settled()

    def _settled(self) -> bool:
        return self.accounts.settled and self.transfers.settled

    def _waiting_since(self, position: int) -> None:
        """Note that something began waiting (for its other half, or the rest of its save)."""
        expiry = position + self.entry_span + 1
        if expiry < self._expire_at:
            self._expire_at = expiry

    def _expire(self, position: int) -> None:
        """Give up on halves and transfers that waited too long (see DEFAULT_ENTRY_SPAN).

        Each table is kept in the order its entries began waiting, so only its oldest entries
        need looking at, and only when the oldest of all may be due.
        """
        horizon = position - self.entry_span
        self.accounts.expire(horizon)
        self.transfers.expire(horizon)
        oldest = [*self.accounts.oldest(), *self.transfers.oldest()]
        self._expire_at = min(oldest) + self.entry_span + 1 if oldest else _NEVER

    def finish(self) -> BankAudit:
        """The end of the log (or of the replay up to ``until``): whatever is still half
        recorded is reported, and the balances returned."""
        self.accounts.finish()
        self.transfers.finish()
        return BankAudit(
            bank=self.bank,
            events=self.events,
            until=self.until,
            balances=self.accounts.balances(),
            problems=list(self.findings.listed),
            problems_omitted=self.findings.omitted,
            chain_position=self.position,
            chain_head=self.head.hex(),
        )

    # Everything else.

    def _transfer_committed(self, event: object, ref: EventRef) -> None:
        self._transfer_decided(TransferStatus.COMMITTED, ref)

    def _transfer_aborted(self, event: object, ref: EventRef) -> None:
        self._transfer_decided(TransferStatus.ABORTED, ref)

    def _transfer_decided(self, status: TransferStatus, ref: EventRef) -> None:
        # A decision ends the aggregate: nothing more to remember of its versions.
        self.order.forget(ref.key)
        self.transfers.decided(status, ref)

    def _outbox_opened(self, event: OutboxOpened, ref: EventRef) -> None:
        if isinstance(event, ClearingOutboxOpened):
            self.bank = event.source

    def _policy(self, event: PolicyAdopted, ref: EventRef) -> None:
        """The bank's default overdraft limit from here on, as the ledger recorded it."""
        self.accounts.default_overdraft_minutes = event.default_overdraft_minutes


def _ignored(event: object, ref: EventRef) -> None:
    pass


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def replay_events(
    rows: Iterable[Iterable[StoredEventRow | UnreadableRow]],
    decode: Callable[[StoredEventRow], dict[str, Any]],
    *,
    default_overdraft_minutes: int,
    until: datetime | None = None,
    contiguous_ids: bool = True,
    entry_span: int = DEFAULT_ENTRY_SPAN,
    on_progress: Callable[[int, int], None] | None = None,
    observe: Observer | None = None,
) -> BankAudit:
    """Replay batches of stored events; ``on_progress(events, position)`` after each batch."""
    replay = BankReplay(
        decode,
        default_overdraft_minutes=default_overdraft_minutes,
        until=until,
        contiguous_ids=contiguous_ids,
        entry_span=entry_span,
        observe=observe,
    )
    feed = replay.feed
    for batch in rows:
        for row in batch:
            feed(row)
            if replay.done:
                break
        if on_progress is not None:
            on_progress(replay.events, replay.position)
        if replay.done:
            break
    return replay.finish()


def audit_bank(
    log: EventLog,
    *,
    default_overdraft_minutes: int,
    until: datetime | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
    observe: Observer | None = None,
) -> BankAudit:
    """Replay a bank's log from its first event (up to ``until``), streaming, and check it.
    ``observe`` sees every event replayed, decoded (None if it cannot be), with the chain's
    head after it: what a wider audit needs of the log, in the same single pass."""
    return replay_events(
        log.batches(batch_size=batch_size),
        log.decode,
        default_overdraft_minutes=default_overdraft_minutes,
        until=until,
        contiguous_ids=log.contiguous_ids,
        on_progress=on_progress,
        observe=observe,
    )
