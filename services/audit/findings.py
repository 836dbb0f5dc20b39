"""What an audit reports: the rules' names, the findings against them and a bank's verdict.

Each rule a bank's replay checks (services/audit/replay.py) has a stable name, used in the
findings and in the JSON verdict:

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

The federation's own rules are in services/audit/federation.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol
from uuid import UUID

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
# Across the logs of a federation (services/audit/federation.py).
INVARIANT_2 = "invariant-2"
INVARIANT_3 = "invariant-3"
INVARIANT_4 = "invariant-4"
CHECKPOINT = "checkpoint"

# Enough findings to show what broke; a log broken everywhere would otherwise fill memory.
MAX_PROBLEMS = 1_000


@dataclass(frozen=True)
class Finding:
    """A rule that failed, and the event where it showed."""

    position: int | None
    event: str
    rule: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class EventRef(NamedTuple):
    """Where an event is, enough to name it in a finding later."""

    position: int
    topic: str
    originator_id: UUID | str
    version: int
    # The aggregate's key in the replay's tables: a UUID's integer hashes faster than a UUID.
    key: int | str


def describe(ref: EventRef, label: str = "") -> str:
    """An event named for a reader: its type, aggregate and version (and what it is of)."""
    kind = ref.topic.rpartition(":")[2] or ref.topic
    text = f"{kind} of {ref.originator_id} v{ref.version}"
    return f"{text} ({label})" if label else text


class Report(Protocol):
    """Where a part of the replay reports what it finds (``Findings.add``)."""

    def __call__(self, ref: EventRef | None, rule: str, detail: str, label: str = "") -> None: ...


class Findings:
    """The findings of one replay, at most MAX_PROBLEMS of them; the rest only counted."""

    def __init__(self) -> None:
        self.listed: list[Finding] = []
        self.omitted = 0

    def add(
        self, ref: EventRef | None, rule: str, detail: str, label: str = "", event: str = ""
    ) -> None:
        """A finding at ``ref`` (named ``event``, or after the event and its ``label``)."""
        if len(self.listed) >= MAX_PROBLEMS:
            self.omitted += 1
        elif ref is None:
            self.listed.append(Finding(None, event, rule, detail))
        else:
            self.listed.append(Finding(ref.position, event or describe(ref, label), rule, detail))


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

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "posted_minutes": self.posted_minutes,
            "held_minutes": self.held_minutes,
            "available_minutes": self.available_minutes,
            "overdraft_limit_minutes": self.overdraft_limit_minutes,
        }


@dataclass(frozen=True)
class BankAudit:
    """What a replay of one bank's log found. The JSON keys are the CLI's contract: the
    findings are listed under "problems"."""

    bank: str | None
    events: int
    until: datetime | None
    balances: dict[str, Balance]
    problems: list[Finding]
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
            "balances": {member_id: b.to_json() for member_id, b in self.balances.items()},
            "problems": [p.to_json() for p in self.problems],
            "problems_omitted": self.problems_omitted,
            "chain": {"position": self.chain_position, "head": self.chain_head},
            "ok": self.ok,
        }
