"""Replaying one bank's event log from nothing: every balance rebuilt, every invariant checked.

The replay never reads a stored balance or snapshot and never loads an aggregate through a
repository: it folds the decoded events into plain state of its own, one event at a time, in
notification order, and keeps only what later events can still need (accounts, open holds,
undecided transfers, half-recorded double entries), so its memory does not grow with the log.

Each rule it checks has a stable name, used in the problems it reports:

``decode``
    a stored event cannot be decoded, or lacks (or garbles) a field the audit needs, or is of
    a type the audit does not know how to fold.
``version-sequence``
    an aggregate's versions must run 1, 2, 3, ...: a jump means an event was deleted, a repeat
    that one was inserted or copied.
``event-order``
    an aggregate's events are stamped in version order (its events are made one after another
    in one process); swapping two events' stored states breaks that.
``log-gap``
    SQLite numbers the log's rows 1, 2, 3, ... and never skips one, so a missing number there
    is a deleted event. (PostgreSQL skips numbers when a transaction rolls back: not checked.)
``identity``
    an account's or a transfer's aggregate id is derived from its member or transfer id; an
    event whose originator does not match the id it records was moved or edited.
``account``
    an event on an account that was never opened, or an account opened twice.
``double-entry``
    every posting has its other half: a debit (``Debited``, ``HoldPosted``) of an account and a
    credit (``Credited``) of its counterparty, with the same entry id and the same minutes.
``invariant-1``
    the posted balances of all accounts sum to zero (see ``BankReplay`` for when).
``invariant-5``
    no spending (a debit, a hold) takes a member's available balance (posted - held) below
    minus its overdraft limit in force then: its own, or the bank's default as the log records
    it (``BankPolicy``; for a log older than that record, the default the audit is given).
``hold``
    a hold is placed once and ended once, by a post or a void of its own minutes; no post or
    void of a hold that is not open. (An id may be used again once its hold has ended, as the
    ledger allows.)
``transfer``
    a cross-bank transfer is held when it starts; once committed, its hold is posted once (the
    member's side and ``federation``, for its minutes); once aborted, it is posted nowhere and
    its hold, if any, is voided.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from services.audit.eventlog import DEFAULT_BATCH_SIZE, EventLog, UnreadableRow
from services.common.chain import ZERO_HASH, canonical_bytes
from services.common.idempotency import IdempotencyRecord
from services.common.outbox import Outbox
from services.ledger.domain import (
    Account,
    BankDirectory,
    BankPolicy,
    CrossBankTransfer,
)
from services.ledger.domain_terms import (
    FEDERATION_ACCOUNT,
    MEMBER_KINDS,
    MemberKind,
    Role,
    TransferStatus,
    account_id,
    transfer_id_to_uuid,
)
from shared.protocol import CLEARING

DECODE = "decode"
VERSION_SEQUENCE = "version-sequence"
EVENT_ORDER = "event-order"
LOG_GAP = "log-gap"
IDENTITY = "identity"
ACCOUNT = "account"
DOUBLE_ENTRY = "double-entry"
INVARIANT_1 = "invariant-1"
INVARIANT_5 = "invariant-5"
HOLD = "hold"
TRANSFER = "transfer"

FEDERATION = FEDERATION_ACCOUNT
# The two halves of a double entry are saved in one transaction, so they lie close together in
# the log: at most a save apart (a save holds one command's events, or one batch of messages
# from the clearing house, far fewer than this). A half still alone this many events later, or
# a transfer still half-recorded, has lost its other part.
DEFAULT_ENTRY_SPAN = 100_000
# Enough problems to show what broke; a log broken everywhere would otherwise fill memory.
MAX_PROBLEMS = 1_000


@dataclass(frozen=True)
class Problem:
    """A rule that failed, and the event where it showed."""

    position: int | None
    event: str
    rule: str
    detail: str


@dataclass(frozen=True)
class Balance:
    """An account as rebuilt from its events."""

    member_id: str
    kind: str
    posted_minutes: int
    held_minutes: int
    available_minutes: int
    # None: no limit (the bank's system accounts).
    overdraft_limit_minutes: int | None


@dataclass(frozen=True)
class BankAudit:
    """What a replay of one bank's log found."""

    bank: str | None
    events: int
    until: datetime | None
    balances: dict[str, Balance]
    problems: list[Problem]
    problems_omitted: int
    # The rolling hash over every event replayed (services.common.chain), and where it ends.
    chain_position: int
    chain_head: str

    @property
    def ok(self) -> bool:
        return not self.problems and not self.problems_omitted

    def to_json(self) -> dict[str, Any]:
        return {
            "bank": self.bank,
            "events": self.events,
            "until": self.until.isoformat() if self.until else None,
            "balances": {
                member_id: {
                    "kind": b.kind,
                    "posted_minutes": b.posted_minutes,
                    "held_minutes": b.held_minutes,
                    "available_minutes": b.available_minutes,
                    "overdraft_limit_minutes": b.overdraft_limit_minutes,
                }
                for member_id, b in self.balances.items()
            },
            "problems": [
                {"position": p.position, "event": p.event, "rule": p.rule, "detail": p.detail}
                for p in self.problems
            ],
            "problems_omitted": self.problems_omitted,
            "chain": {"position": self.chain_position, "head": self.chain_head},
            "ok": self.ok,
        }


# Called with each event replayed, its decoded state (None if undecodable) and the chain's head.
Observer = Callable[[Notification, "dict[str, Any] | None", bytes], None]


class _Malformed(Exception):
    """An event that decoded but cannot be folded: a field is missing or of the wrong kind."""


class _Ref(NamedTuple):
    """Where an event is, enough to name it in a problem later."""

    position: int
    topic: str
    originator_id: UUID | str
    version: int
    # The aggregate's key in the replay's tables: a UUID's integer hashes faster than a UUID.
    key: int | str


class _Hold(NamedTuple):
    minutes: int
    counterparty: str
    party: str
    ref: _Ref


class _Half(NamedTuple):
    """One half of a double entry, waiting for the other."""

    minutes: int
    is_debit: bool
    ref: _Ref


@dataclass(slots=True)
class _Account:
    member_id: str
    kind: str
    # Its own overdraft limit; None: none of its own (a member follows the bank's default, a
    # system account has no limit).
    limit: int | None
    posted: int = 0
    held: int = 0
    holds: dict[str, _Hold] = field(default_factory=dict)
    # Reported below its limit, and not back above it since: one problem per excursion.
    over_limit: bool = False
    follows_default: bool = False


@dataclass(slots=True)
class _Transfer:
    """This bank's side of a cross-bank transfer, as far as the log has shown it."""

    transfer_id: str
    last: _Ref
    started: bool = False
    role: str = ""
    member_id: str = ""
    minutes: int = 0
    status: str = TransferStatus.PENDING
    holds: list[tuple[str, int]] = field(default_factory=list)
    posted: list[tuple[str, int]] = field(default_factory=list)
    voided: int = 0
    credits: list[tuple[str, int]] = field(default_factory=list)

    @property
    def held_on(self) -> str:
        return self.member_id if self.role == Role.PAYER else FEDERATION

    @property
    def credited(self) -> str:
        return FEDERATION if self.role == Role.PAYER else self.member_id


_WAITING, _OPEN, _DONE = "waiting", "open", "done"
_NEVER = sys.maxsize
# Made by @event("Recorded"), so not an attribute the type checker can see.
_IDEMPOTENCY_RECORDED = f"{get_topic(IdempotencyRecord)}.Recorded"


def _topic(cls: type) -> str:
    return get_topic(cls)


def _int(d: dict[str, Any], name: str, *, positive: bool = True) -> int:
    value = d[name]
    if type(value) is not int or (positive and value <= 0):
        raise _Malformed(f"{name} must be a whole number of minutes > 0, not {value!r}")
    return value


def _str(d: dict[str, Any], name: str) -> str:
    value = d[name]
    if type(value) is not str:
        raise _Malformed(f"{name} must be text, not {value!r}")
    return value


def _party(d: dict[str, Any]) -> str:
    """Who is on the other side in another bank ("college/bob"); empty for a local entry."""
    value = d.get("party", "")
    if type(value) is not str:
        raise _Malformed(f"party must be text, not {value!r}")
    return value


def describe(ref: _Ref, label: str = "") -> str:
    """An event named for a reader: its type, aggregate and version (and what it is of)."""
    kind = ref.topic.rpartition(":")[2] or ref.topic
    text = f"{kind} of {ref.originator_id} v{ref.version}"
    return f"{text} ({label})" if label else text


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
        decode: Callable[[Notification], dict[str, Any]],
        *,
        default_overdraft_minutes: int,
        until: datetime | None = None,
        contiguous_ids: bool = True,
        entry_span: int = DEFAULT_ENTRY_SPAN,
        observe: Observer | None = None,
    ) -> None:
        self._decode = decode
        self._observe = observe
        self.default_overdraft_minutes = default_overdraft_minutes
        self.until = until
        self.contiguous_ids = contiguous_ids
        self.entry_span = entry_span
        self.bank: str | None = None
        self.events = 0
        self.done = False
        self.problems: list[Problem] = []
        self.problems_omitted = 0
        self.head = ZERO_HASH
        self.position = 0
        self._next_id = 1
        self._accounts: dict[int | str, _Account] = {}
        # Aggregate -> (last version, its timestamp); finished aggregates are dropped.
        self._versions: dict[int | str, tuple[int, datetime | None]] = {}
        self._halves: dict[tuple[str, str, str], _Half] = {}
        self._posted_sum = 0
        self._reported_sum = 0
        self._transfers: dict[str, _Transfer] = {}
        # Transfers half-recorded (not yet consistent), and since which position.
        self._unsettled: dict[str, int] = {}
        # Transfers decided and carried out, and since which position: judged once no more of
        # their save can follow (a payee bank's save can hold a credit request and its abort,
        # and the transfer's events come before the hold placed and voided on its account).
        self._finished: dict[str, int] = {}
        # A pending transfer's aggregate id -> its transfer id, so its decision finds it.
        self._transfer_ids: dict[int | str, str] = {}
        self._committed_topic = _topic(CrossBankTransfer.Committed)
        self._cut_at: int | None = None
        # The next position at which something waiting may have waited too long.
        self._expire_at = _NEVER
        self._handlers: dict[str, Callable[[dict[str, Any], _Ref], None]] = {
            _topic(Account.Opened): self._opened,
            _topic(Account.Debited): self._debited,
            _topic(Account.Credited): self._credited,
            _topic(Account.HoldPlaced): self._hold_placed,
            _topic(Account.HoldPosted): self._hold_posted,
            _topic(Account.HoldVoided): self._hold_voided,
            _topic(CrossBankTransfer.Started): self._transfer_started,
            _topic(CrossBankTransfer.Committed): self._transfer_decided,
            _topic(CrossBankTransfer.Aborted): self._transfer_decided,
            _topic(Outbox.Opened): self._outbox_opened,
            _topic(Outbox.Queued): self._ignored,
            _topic(BankDirectory.Opened): self._ignored,
            _topic(BankPolicy.Adopted): self._policy,
            _topic(BankPolicy.DefaultOverdraftChanged): self._policy,
            _topic(BankDirectory.Replaced): self._ignored,
            _IDEMPOTENCY_RECORDED: self._ignored,
        }
        # Aggregates with exactly one event: nothing to remember after it.
        self._single_event_topics = {_IDEMPOTENCY_RECORDED}

    # Reporting.

    def _problem(
        self, ref: _Ref | None, rule: str, detail: str, label: str = "", event: str = ""
    ) -> None:
        if len(self.problems) >= MAX_PROBLEMS:
            self.problems_omitted += 1
            return
        if ref is None:
            self.problems.append(Problem(None, event, rule, detail))
        else:
            self.problems.append(Problem(ref.position, event or describe(ref, label), rule, detail))

    def _label(self, ref: _Ref) -> str:
        account = self._accounts.get(ref.key)
        return f"account {account.member_id}" if account else ""

    # The log, one stored event at a time.

    def feed(self, row: Notification | UnreadableRow) -> None:
        """Replay one stored event (or note that it could not be read). Sets ``done`` when the
        cut-off has been reached; later events must not be fed."""
        if self.done:
            return
        if isinstance(row, UnreadableRow):
            ref = _Ref(row.id, "", "", 0, "")
            self._check_gap(ref)
            self.events += 1
            self.position = row.id
            self._problem(
                ref, DECODE, f"the row cannot be read: {row.reason}", event="an unreadable row"
            )
            return
        originator_id = row.originator_id
        key = originator_id.int if type(originator_id) is UUID else str(originator_id)
        ref = _Ref(row.id, row.topic, originator_id, row.originator_version, key)
        state: dict[str, Any] | None
        try:
            state = self._decode(row)
            timestamp = state["timestamp"]
            if type(timestamp) is not datetime:
                raise _Malformed(f"timestamp must be a date and time, not {timestamp!r}")
        except Exception as e:
            self._problem(ref, DECODE, f"cannot decode: {_one_line(e)}")
            state = None
            timestamp = None
        if self.until is not None and not self._within_cut_off(timestamp, row.id):
            self.done = True
            return
        self.events += 1
        self.position = row.id
        self.head = hashlib.sha256(self.head + canonical_bytes(row)).digest()
        if self._observe is not None:
            self._observe(row, state, self.head)
        if row.id != self._next_id:
            self._check_gap(ref)
        self._next_id = row.id + 1
        self._check_version(ref, timestamp)
        if state is not None:
            handler = self._handlers.get(row.topic)
            try:
                if handler is None:
                    raise _Malformed(f"the audit has no rule for events of type {row.topic}")
                handler(state, ref)
            except (_Malformed, KeyError) as e:
                detail = f"field {e} is missing" if isinstance(e, KeyError) else _one_line(e)
                self._problem(ref, DECODE, f"cannot fold: {detail}", self._label(ref))
        if row.id >= self._expire_at:
            self._expire(row.id)
        if self._cut_at is not None and self._settled():
            self.done = True

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
        return not self._halves and not self._unsettled

    def _check_gap(self, ref: _Ref) -> None:
        position = ref.position
        if self.contiguous_ids and position != self._next_id:
            first, last = self._next_id, position - 1
            missing = f"position {first} is" if first == last else f"positions {first}-{last} are"
            self._problem(
                ref,
                LOG_GAP,
                f"{missing} missing from the log before this event (SQLite never skips a row id)",
                self._label(ref),
            )
        self._next_id = position + 1

    def _check_version(self, ref: _Ref, timestamp: datetime | None) -> None:
        version = ref.version
        previous = self._versions.get(ref.key)
        expected = 1 if previous is None else previous[0] + 1
        if type(version) is not int:
            self._problem(ref, VERSION_SEQUENCE, f"version {version!r} is not a number")
            return
        if version != expected:
            if previous is None:
                detail = (
                    f"version {version} of an aggregate with no earlier event in the log "
                    "(expected version 1)"
                )
            elif version <= previous[0]:
                detail = f"version {version} again after version {previous[0]}"
            else:
                detail = f"version {version} follows version {previous[0]}: events are missing"
            self._problem(ref, VERSION_SEQUENCE, detail, self._label(ref))
        if (
            previous is not None
            and timestamp is not None
            and previous[1] is not None
            and timestamp < previous[1]
        ):
            self._problem(
                ref,
                EVENT_ORDER,
                f"stamped {timestamp.isoformat()}, before version {previous[0]} of the same "
                f"aggregate ({previous[1].isoformat()}): events moved",
                self._label(ref),
            )
        if ref.topic not in self._single_event_topics:
            self._versions[ref.key] = (version, timestamp)

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
        halves = self._halves
        while halves:
            key, half = next(iter(halves.items()))
            if half.ref.position >= horizon:
                break
            # Its minutes stay counted: the next balanced point shows the imbalance.
            self._orphan(key)
        while self._unsettled:
            transfer_id, since = next(iter(self._unsettled.items()))
            if since >= horizon:
                break
            self._give_up_on(transfer_id)
        while self._finished:
            transfer_id, since = next(iter(self._finished.items()))
            if since >= horizon:
                break
            del self._finished[transfer_id]
            self._validate(self._transfers.pop(transfer_id))
        oldest = [
            *(half.ref.position for half in itertools.islice(self._halves.values(), 1)),
            *itertools.islice(self._unsettled.values(), 1),
            *itertools.islice(self._finished.values(), 1),
        ]
        self._expire_at = min(oldest) + self.entry_span + 1 if oldest else _NEVER

    def finish(self) -> BankAudit:
        """The end of the log (or of the replay up to ``until``): whatever is still half
        recorded is reported, and the balances returned."""
        for key in list(self._halves):
            self._orphan(key)
        self._check_books(None)
        for transfer_id in list(self._unsettled):
            self._give_up_on(transfer_id)
        # Finished, or still pending and held (consistent so far, but its hold must be right).
        for transfer in self._transfers.values():
            self._validate(transfer)
        balances = {
            a.member_id: Balance(
                member_id=a.member_id,
                kind=a.kind,
                posted_minutes=a.posted,
                held_minutes=a.held,
                available_minutes=a.posted - a.held,
                overdraft_limit_minutes=self.limit_of(a),
            )
            for a in sorted(self._accounts.values(), key=lambda a: a.member_id)
        }
        return BankAudit(
            bank=self.bank,
            events=self.events,
            until=self.until,
            balances=balances,
            problems=list(self.problems),
            problems_omitted=self.problems_omitted,
            chain_position=self.position,
            chain_head=self.head.hex(),
        )

    # Accounts.

    def _account(self, ref: _Ref) -> _Account:
        account = self._accounts.get(ref.key)
        if account is None:
            account = _Account(member_id=f"?{ref.originator_id}", kind="unknown", limit=None)
            self._accounts[ref.key] = account
            self._problem(ref, ACCOUNT, "an event on an account that was never opened")
        return account

    def _opened(self, d: dict[str, Any], ref: _Ref) -> None:
        member_id = _str(d, "member_id")
        kind = _str(d, "kind")
        own_limit = d["overdraft_limit_minutes"]
        if kind not in (*MEMBER_KINDS, MemberKind.SYSTEM):
            raise _Malformed(f"kind {kind!r} is not a kind of account")
        if own_limit is not None and (type(own_limit) is not int or own_limit < 0):
            raise _Malformed("overdraft_limit_minutes must be a whole number >= 0 or null")
        label = f"account {member_id}"
        if ref.key in self._accounts:
            self._problem(ref, ACCOUNT, f"account {member_id} is opened again", label)
            return
        if ref.originator_id != account_id(member_id):
            self._problem(ref, IDENTITY, f"this aggregate is not the account of {member_id}", label)
        follows_default = kind != MemberKind.SYSTEM and own_limit is None
        limit = own_limit if kind != MemberKind.SYSTEM else None
        self._accounts[ref.key] = _Account(member_id, kind, limit, follows_default=follows_default)

    def _debited(self, d: dict[str, Any], ref: _Ref) -> None:
        entry_id = _str(d, "entry_id")
        minutes = _int(d, "minutes")
        counterparty = _str(d, "counterparty")
        account = self._account(ref)
        account.posted -= minutes
        self._check_available(account, ref, spending=True)
        self._post(entry_id, account.member_id, counterparty, minutes, True, ref)

    def _credited(self, d: dict[str, Any], ref: _Ref) -> None:
        entry_id = _str(d, "entry_id")
        minutes = _int(d, "minutes")
        counterparty = _str(d, "counterparty")
        party = _party(d)
        account = self._account(ref)
        account.posted += minutes
        self._check_available(account, ref)
        self._post(entry_id, counterparty, account.member_id, minutes, False, ref)
        if party:
            transfer = self._transfer(entry_id, ref)
            transfer.credits.append((account.member_id, minutes))
            self._review(transfer, ref)

    def _hold_placed(self, d: dict[str, Any], ref: _Ref) -> None:
        hold_id = _str(d, "hold_id")
        minutes = _int(d, "minutes")
        counterparty = _str(d, "counterparty")
        party = _party(d)
        account = self._account(ref)
        earlier = account.holds.get(hold_id)
        if earlier is not None:
            self._problem(
                ref,
                HOLD,
                f"hold {hold_id} is placed again while open (placed at position "
                f"{earlier.ref.position})",
                f"account {account.member_id}",
            )
            account.held -= earlier.minutes
        account.holds[hold_id] = _Hold(minutes, counterparty, party, ref)
        account.held += minutes
        self._check_available(account, ref, spending=True)
        if party:
            transfer = self._transfer(hold_id, ref)
            transfer.holds.append((account.member_id, minutes))
            self._review(transfer, ref)

    def _end_hold(self, hold_id: str, minutes: int, how: str, ref: _Ref) -> tuple[_Account, str]:
        """Close an open hold; returns the account and the hold's party (who is paid)."""
        account = self._account(ref)
        hold = account.holds.pop(hold_id, None)
        label = f"account {account.member_id}"
        if hold is None:
            self._problem(ref, HOLD, f"{how} of hold {hold_id}, which is not open", label)
            return account, ""
        if hold.minutes != minutes:
            self._problem(
                ref,
                HOLD,
                f"{how} of {minutes} minutes; hold {hold_id} was placed for {hold.minutes} "
                f"(position {hold.ref.position})",
                label,
            )
        account.held -= hold.minutes
        return account, hold.party

    def _hold_posted(self, d: dict[str, Any], ref: _Ref) -> None:
        hold_id = _str(d, "hold_id")
        minutes = _int(d, "minutes")
        counterparty = _str(d, "counterparty")
        event_party = _party(d)
        account, party = self._end_hold(hold_id, minutes, "a post", ref)
        party = party or event_party
        account.posted -= minutes
        self._check_available(account, ref)
        self._post(hold_id, account.member_id, counterparty, minutes, True, ref)
        if party:
            transfer = self._transfer(hold_id, ref)
            transfer.posted.append((account.member_id, minutes))
            self._review(transfer, ref)

    def _hold_voided(self, d: dict[str, Any], ref: _Ref) -> None:
        hold_id = _str(d, "hold_id")
        minutes = _int(d, "minutes")
        account, party = self._end_hold(hold_id, minutes, "a void", ref)
        self._check_available(account, ref)
        if party:
            transfer = self._transfer(hold_id, ref)
            transfer.voided += 1
            self._review(transfer, ref)

    def limit_of(self, account: _Account) -> int | None:
        """The account's overdraft limit now: its own, or the bank's default as recorded."""
        return self.default_overdraft_minutes if account.follows_default else account.limit

    def _check_available(self, account: _Account, ref: _Ref, *, spending: bool = False) -> None:
        """Invariant 5. Only spending (a debit, a hold) can break it: a member left below a
        limit that was lowered later, then credited, broke no rule."""
        limit = self.limit_of(account)
        if limit is None:
            return
        available = account.posted - account.held
        if available >= -limit:
            account.over_limit = False
        elif spending and not account.over_limit:
            account.over_limit = True
            self._problem(
                ref,
                INVARIANT_5,
                f"{account.member_id} has {available} minutes available, below minus its "
                f"overdraft limit of {limit}",
                f"account {account.member_id}",
            )

    # Double entries and the books.

    def _post(
        self, entry_id: str, debit: str, credit: str, minutes: int, is_debit: bool, ref: _Ref
    ) -> None:
        self._posted_sum += -minutes if is_debit else minutes
        key = (entry_id, debit, credit)
        halves = self._halves
        other = halves.get(key)
        if other is None:
            halves[key] = _Half(minutes, is_debit, ref)
            self._waiting_since(ref.position)
            return
        if other.is_debit == is_debit:
            side = "debit" if is_debit else "credit"
            self._problem(
                ref,
                DOUBLE_ENTRY,
                f"entry {entry_id} ({debit} to {credit}) has a second {side} (the first at "
                f"position {other.ref.position}) before its other half",
                self._label(ref),
            )
            return
        del halves[key]
        if other.minutes != minutes:
            debit_half, credit_half = (
                ((minutes, ref), (other.minutes, other.ref))
                if is_debit
                else ((other.minutes, other.ref), (minutes, ref))
            )
            self._problem(
                ref,
                DOUBLE_ENTRY,
                f"entry {entry_id}: {debit} is debited {debit_half[0]} minutes (position "
                f"{debit_half[1].position}) but {credit} is credited {credit_half[0]} "
                f"(position {credit_half[1].position})",
                self._label(ref),
            )
        if not self._halves:
            self._check_books(ref)

    def _orphan(self, key: tuple[str, str, str]) -> None:
        half = self._halves.pop(key)
        entry_id, debit, credit = key
        if half.is_debit:
            detail = f"{debit} is debited {half.minutes} minutes for entry {entry_id}, "
            detail += f"but {credit} is never credited"
        else:
            detail = f"{credit} is credited {half.minutes} minutes for entry {entry_id}, "
            detail += f"but {debit} is never debited"
        self._problem(half.ref, DOUBLE_ENTRY, detail, self._label(half.ref))

    def _check_books(self, ref: _Ref | None) -> None:
        total = self._posted_sum
        if total != self._reported_sum:
            self._reported_sum = total
            if total:
                self._problem(
                    ref,
                    INVARIANT_1,
                    f"the posted balances of all accounts sum to {total} minutes, not 0",
                    self._label(ref) if ref else "",
                )

    # Cross-bank transfers.

    def _transfer(self, transfer_id: str, ref: _Ref) -> _Transfer:
        transfer = self._transfers.get(transfer_id)
        if transfer is None:
            transfer = self._transfers[transfer_id] = _Transfer(transfer_id, ref)
        transfer.last = ref
        return transfer

    def _transfer_started(self, d: dict[str, Any], ref: _Ref) -> None:
        transfer_id = _str(d, "transfer_id")
        role = _str(d, "role")
        member_id = _str(d, "member_id")
        minutes = _int(d, "minutes")
        if role not in (Role.PAYER, Role.PAYEE):
            raise _Malformed(f"role must be {Role.PAYER} or {Role.PAYEE}, not {role!r}")
        label = f"transfer {transfer_id}"
        if ref.originator_id != transfer_id_to_uuid(transfer_id):
            self._problem(ref, IDENTITY, f"this aggregate is not transfer {transfer_id}", label)
        transfer = self._transfer(transfer_id, ref)
        if transfer.started:
            self._problem(ref, TRANSFER, f"transfer {transfer_id} starts again", label)
        transfer.started = True
        transfer.role, transfer.member_id, transfer.minutes = role, member_id, minutes
        # Remembered under the aggregate id, so decisions find it.
        self._transfer_ids[ref.key] = transfer_id
        self._review(transfer, ref)

    def _transfer_decided(self, d: dict[str, Any], ref: _Ref) -> None:
        transfer_id = self._transfer_ids.pop(ref.key, None)
        # A decision ends the aggregate: nothing more to remember of its versions.
        self._versions.pop(ref.key, None)
        if transfer_id is None or transfer_id not in self._transfers:
            self._problem(ref, TRANSFER, "a decision on a transfer that is not pending here")
            return
        transfer = self._transfer(transfer_id, ref)
        transfer.status = (
            TransferStatus.COMMITTED
            if ref.topic == self._committed_topic
            else TransferStatus.ABORTED
        )
        self._review(transfer, ref)

    def _review(self, transfer: _Transfer, ref: _Ref) -> None:
        """Note whether a transfer's events so far are whole: half-recorded (the rest of its
        save should follow), pending and held, or decided and carried out."""
        state, _ = self._state(transfer)
        transfer_id = transfer.transfer_id
        if state == _WAITING:
            self._finished.pop(transfer_id, None)
            if transfer_id not in self._unsettled:
                self._unsettled[transfer_id] = ref.position
                self._waiting_since(ref.position)
            return
        self._unsettled.pop(transfer_id, None)
        if state == _DONE:
            # Moved to the end: the table stays in order of position.
            self._finished.pop(transfer_id, None)
            self._finished[transfer_id] = ref.position
            self._waiting_since(ref.position)
        else:
            self._finished.pop(transfer_id, None)

    @staticmethod
    def _state(t: _Transfer) -> tuple[str, str]:
        if not t.started:
            return _WAITING, "its hold or postings have no Started event here"
        if t.status == TransferStatus.PENDING:
            if t.posted or t.voided or t.credits:
                return _WAITING, "it is posted or voided, but never decided"
            if not t.holds:
                return _WAITING, "it started, but no hold was placed"
            return _OPEN, ""
        if t.status == TransferStatus.COMMITTED:
            if not t.holds:
                return _WAITING, "it is committed, but no hold was ever placed"
            if not t.posted or not t.credits:
                return _WAITING, "it is committed, but not posted on both sides"
            return _DONE, ""
        if t.holds and t.voided < len(t.holds) and not t.posted:
            return _WAITING, "it is aborted, but its hold is not voided"
        return _DONE, ""

    def _validate(self, t: _Transfer) -> None:
        errors = self._errors(t)
        if errors:
            self._problem(
                t.last,
                TRANSFER,
                f"transfer {t.transfer_id} ({t.role}, {t.minutes} minutes, {t.status}): "
                + "; ".join(errors),
                f"transfer {t.transfer_id}",
            )

    @staticmethod
    def _errors(t: _Transfer) -> list[str]:
        """What is wrong with the transfer's holds and postings, against its own terms."""
        errors = []
        if t.role == Role.PAYER and not t.holds:
            errors.append("the payer's minutes were never held")
        if len(t.holds) > 1:
            errors.append(f"it is held {len(t.holds)} times")
        errors += [
            f"it is held on {account} for {minutes} minutes"
            for account, minutes in t.holds
            if (account, minutes) != (t.held_on, t.minutes)
        ]
        if t.status == TransferStatus.COMMITTED:
            if len(t.posted) != 1 or len(t.credits) != 1:
                errors.append(
                    f"it is posted {len(t.posted)} time(s) and credited {len(t.credits)} "
                    "time(s), not once each"
                )
            errors += [
                f"{account} is debited {minutes} minutes for it"
                for account, minutes in t.posted
                if (account, minutes) != (t.held_on, t.minutes)
            ]
            errors += [
                f"{account} is credited {minutes} minutes for it"
                for account, minutes in t.credits
                if (account, minutes) != (t.credited, t.minutes)
            ]
        elif t.status == TransferStatus.ABORTED and (t.posted or t.credits):
            errors.append("it is aborted, but posted")
        return errors

    def _give_up_on(self, transfer_id: str) -> None:
        self._unsettled.pop(transfer_id, None)
        self._finished.pop(transfer_id, None)
        transfer = self._transfers.pop(transfer_id)
        _, reason = self._state(transfer)
        status = transfer.status if transfer.started else "unknown"
        errors = self._errors(transfer) if transfer.started else []
        self._problem(
            transfer.last,
            TRANSFER,
            f"transfer {transfer_id} ({status}): " + "; ".join([reason, *errors]),
            f"transfer {transfer_id}",
        )

    # Everything else.

    def _outbox_opened(self, d: dict[str, Any], ref: _Ref) -> None:
        if _str(d, "destination") == CLEARING:
            self.bank = _str(d, "source")

    def _policy(self, d: dict[str, Any], ref: _Ref) -> None:
        """The bank's default overdraft limit from here on, as the ledger recorded it."""
        self.default_overdraft_minutes = _int(d, "default_overdraft_minutes", positive=False)
        if self.default_overdraft_minutes < 0:
            raise _Malformed("default_overdraft_minutes must be >= 0")

    def _ignored(self, d: dict[str, Any], ref: _Ref) -> None:
        pass


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def replay_events(
    rows: Iterable[Iterable[Notification | UnreadableRow]],
    decode: Callable[[Notification], dict[str, Any]],
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
