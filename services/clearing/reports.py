"""The clearing house administrator's reports: each bank's position over time, the minutes that
moved between banks, the settlement cycles, and the transfers still waiting for a decision.

What moves a bank's position (exactly what moves ``MemberBank.position_minutes``, so a series
ends where GET /v1/positions stands):
- a committed transfer: the payer's bank by minus its minutes, the payee's bank by plus them,
  at the moment the clearing house decided it (``Transfer.Committed.decided_at``, its own
  clock); a transfer requested or aborted moves nothing (a reservation is not a position);
- a completed settlement cycle: each bank by what it paid less what it was paid, outside the
  system, by the cycle's obligations, at the cycle's completion (``completed_at``).

Transfers and positions are folded from the clearing's own log incrementally: each call reads
on only from where the last ended, under a lock, to a whole-transaction boundary (the fold is
a few small records per transfer, cheap to keep). The settlement cycles are read on request,
through the clearing's own settlement views (there are few cycles).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.utils import get_topic

from services.clearing.application import Clearing
from services.clearing.domain import Transfer
from services.clearing.domain_terms import InvalidRequest, TransferPhase
from services.clearing.settlement import CycleStatus, SettlementCycle

# A positions report has at most this many points a bank (about 2.7 years of days).
MAX_POINTS = 1_000
DEFAULT_OLDER_THAN_SECONDS = 60
MAX_OLDER_THAN_SECONDS = 366 * 24 * 3600

# The application's follow_events: (position, event) from a position on, of these topics.
Follow = Callable[[int, Sequence[str]], Iterator[tuple[int, DomainEventProtocol[UUID]]]]


class Interval(StrEnum):
    """Where a positions series has a point: at each UTC midnight, each Monday's UTC
    midnight, or each first of a month's UTC midnight."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"


def interval_start(moment: datetime, interval: Interval) -> datetime:
    """The boundary of ``interval`` at or before ``moment`` (UTC)."""
    midnight = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == Interval.DAY:
        return midnight
    if interval == Interval.WEEK:
        return midnight - timedelta(days=midnight.weekday())
    return midnight.replace(day=1)


def next_boundary(moment: datetime, interval: Interval) -> datetime:
    """The first boundary of ``interval`` strictly after ``moment`` (UTC)."""
    start = interval_start(moment, interval)
    if interval == Interval.DAY:
        return start + timedelta(days=1)
    if interval == Interval.WEEK:
        return start + timedelta(days=7)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def points_between(start: datetime, end: datetime, interval: Interval) -> list[datetime]:
    """``start``, each boundary strictly between, and ``end`` (just ``start`` if they are
    equal); InvalidRequest past MAX_POINTS."""
    points = [start.astimezone(UTC)]
    boundary = next_boundary(start, interval)
    while boundary < end:
        points.append(boundary)
        boundary = next_boundary(boundary, interval)
        if len(points) >= MAX_POINTS:
            raise InvalidRequest(
                f"a positions report has at most {MAX_POINTS} points a bank: choose a "
                "shorter window or a longer interval"
            )
    if end > start:
        points.append(end.astimezone(UTC))
    return points


def check_window(start: datetime | None, end: datetime | None) -> None:
    """Moments must say their time zone, and ``from`` may not come after ``to``."""
    for moment in (start, end):
        if moment is not None and moment.tzinfo is None:
            raise InvalidRequest("from and to must say their time zone (e.g. Z)")
    if start is not None and end is not None and start > end:
        raise InvalidRequest("from must not be after to")


# The reports' shapes (the HTTP API answers them as they are).


@dataclass(frozen=True)
class PositionPoint:
    at: datetime
    position_minutes: int = field(
        metadata={"description": "The position after every move at or before `at`."}
    )


@dataclass(frozen=True)
class BankPositions:
    bank_id: str
    points: list[PositionPoint] = field(metadata={"description": "Oldest first."})


@dataclass(frozen=True)
class PositionsReport:
    start: datetime = field(metadata={"description": "The first point's moment (`from`)."})
    end: datetime = field(metadata={"description": "The last point's moment (`to`)."})
    interval: Interval
    banks: list[BankPositions] = field(
        metadata={"description": "Every admitted bank, in order of admission."}
    )


@dataclass(frozen=True)
class Flow:
    payer_bank: str
    payee_bank: str
    transfers: int = field(metadata={"description": "Transfers committed in the window."})
    minutes: int


@dataclass(frozen=True)
class FlowsReport:
    start: datetime | None = field(metadata={"description": "`from`; null: from the first."})
    end: datetime | None = field(metadata={"description": "`to`; null: to the last."})
    flows: list[Flow] = field(
        metadata={"description": "Each ordered pair of banks that moved minutes, by payer, payee."}
    )
    transfers: int
    minutes: int = field(metadata={"description": "All the flows' minutes."})


@dataclass(frozen=True)
class CycleSummary:
    settlement_id: int
    status: CycleStatus
    opened_at: datetime = field(metadata={"description": "Its cut-off: when it was opened."})
    closed_at: datetime | None = field(metadata={"description": "When it completed."})
    obligations: int
    obligation_minutes: int = field(metadata={"description": "What its obligations move."})
    confirmed_obligations: int


@dataclass(frozen=True)
class SettlementsReport:
    settlements: list[CycleSummary] = field(metadata={"description": "Oldest first."})
    open_settlements: int
    settled_minutes: int = field(
        metadata={"description": "The obligations' minutes of every completed cycle."}
    )


@dataclass(frozen=True)
class WaitingTransfer:
    transfer_id: str
    status: TransferPhase = field(metadata={"description": "Always `preparing`: undecided."})
    payer_bank: str
    payer: str
    payee_bank: str = field(metadata={"description": "The bank whose answer is awaited."})
    payee: str
    minutes: int
    requested_at: datetime = field(
        metadata={"description": "Its deadline less the deadline period."}
    )
    deadline: datetime = field(metadata={"description": "When it is aborted unanswered."})
    age_seconds: int


@dataclass(frozen=True)
class StuckTransfersReport:
    older_than_seconds: int
    transfers: list[WaitingTransfer] = field(metadata={"description": "Oldest first."})


def settlements_report(clearing: Clearing) -> SettlementsReport:
    """The cycles as the clearing's settlement views give them, each with its totals."""
    summaries = [
        CycleSummary(
            settlement_id=c.settlement_id,
            status=c.status,
            opened_at=c.cut_off_at,
            closed_at=c.completed_at,
            obligations=len(c.obligations),
            obligation_minutes=sum(o.minutes for o in c.obligations),
            confirmed_obligations=sum(o.confirmed_at is not None for o in c.obligations),
        )
        for c in clearing.settlements()
    ]
    return SettlementsReport(
        settlements=summaries,
        open_settlements=sum(s.closed_at is None for s in summaries),
        settled_minutes=sum(s.obligation_minutes for s in summaries if s.closed_at is not None),
    )


# The fold.


@dataclass(frozen=True, order=True)
class Move:
    at: datetime
    bank_id: str = field(compare=False)
    minutes: int = field(compare=False)


@dataclass(frozen=True, order=True)
class Commit:
    at: datetime
    payer_bank: str = field(compare=False)
    payee_bank: str = field(compare=False)
    minutes: int = field(compare=False)


def _at(commit: Commit) -> datetime:
    return commit.at


class ClearingReports:
    """Position moves and committed transfers (each list kept in time order) and the
    transfers not decided yet, folded from the clearing's transfer and cycle events."""

    def __init__(self) -> None:
        self.next_position = 1
        self.lock = threading.Lock()
        self._moves: list[Move] = []
        self._commits: list[Commit] = []
        self._undecided: dict[UUID, Transfer.Requested] = {}
        # An open cycle's moves, by cycle aggregate: made when it completes.
        self._settling: dict[UUID, dict[str, int]] = {}

    def catch_up(self, follow: Follow) -> None:
        """Fold what the log holds past the last call; the caller holds the lock."""
        for position, event in follow(self.next_position, TOPICS):
            FOLDS[type(event)](self, event)
            self.next_position = position + 1

    def positions(
        self, follow: Follow, bank_ids: Sequence[str], points: Sequence[datetime]
    ) -> list[BankPositions]:
        with self.lock:
            self.catch_up(follow)
            running = dict.fromkeys(bank_ids, 0)
            series: dict[str, list[PositionPoint]] = {b: [] for b in bank_ids}
            n = 0
            for at in points:
                while n < len(self._moves) and self._moves[n].at <= at:
                    move = self._moves[n]
                    running[move.bank_id] = running.get(move.bank_id, 0) + move.minutes
                    n += 1
                for bank_id in bank_ids:
                    series[bank_id].append(PositionPoint(at, running[bank_id]))
        return [BankPositions(b, series[b]) for b in bank_ids]

    def first_move(self, follow: Follow) -> datetime | None:
        with self.lock:
            self.catch_up(follow)
            return self._moves[0].at if self._moves else None

    def flows(self, follow: Follow, start: datetime | None, end: datetime | None) -> list[Flow]:
        """Committed transfers at or after ``start`` and before ``end``, by ordered pair."""
        pairs: dict[tuple[str, str], list[int]] = {}
        with self.lock:
            self.catch_up(follow)
            low = 0 if start is None else bisect.bisect_left(self._commits, start, key=_at)
            high = None if end is None else bisect.bisect_left(self._commits, end, key=_at)
            for commit in self._commits[low:high]:
                totals = pairs.setdefault((commit.payer_bank, commit.payee_bank), [0, 0])
                totals[0] += 1
                totals[1] += commit.minutes
        return [Flow(payer, payee, n, m) for (payer, payee), (n, m) in sorted(pairs.items())]

    def undecided(self, follow: Follow) -> list[Transfer.Requested]:
        with self.lock:
            self.catch_up(follow)
            return list(self._undecided.values())

    # What each event does.

    def requested(self, event: Transfer.Requested) -> None:
        self._undecided[event.originator_id] = event

    def committed(self, event: Transfer.Committed) -> None:
        requested = self._undecided.pop(event.originator_id, None)
        if requested is None:
            return
        at = event.decided_at or event.timestamp
        minutes = requested.minutes
        bisect.insort(
            self._commits, Commit(at, requested.payer_bank, requested.payee_bank, minutes)
        )
        bisect.insort(self._moves, Move(at, requested.payer_bank, -minutes))
        bisect.insort(self._moves, Move(at, requested.payee_bank, minutes))

    def aborted(self, event: Transfer.Aborted) -> None:
        self._undecided.pop(event.originator_id, None)

    def cycle_opened(self, event: SettlementCycle.Opened) -> None:
        """What each bank's position will move by, as MemberBank.settle is told."""
        moved: dict[str, int] = {}
        for o in event.obligations:
            moved[o["debtor"]] = moved.get(o["debtor"], 0) + o["minutes"]
            moved[o["creditor"]] = moved.get(o["creditor"], 0) - o["minutes"]
        self._settling[event.originator_id] = moved

    def cycle_completed(self, event: SettlementCycle.Completed) -> None:
        for bank_id, minutes in self._settling.pop(event.originator_id, {}).items():
            if minutes:
                bisect.insort(self._moves, Move(event.completed_at, bank_id, minutes))


# What each event the reports read does to them; the topics they follow come from here.
FOLDS: dict[type[Any], Callable[[ClearingReports, Any], None]] = {
    Transfer.Requested: ClearingReports.requested,
    Transfer.Committed: ClearingReports.committed,
    Transfer.Aborted: ClearingReports.aborted,
    SettlementCycle.Opened: ClearingReports.cycle_opened,
    SettlementCycle.Completed: ClearingReports.cycle_completed,
}
TOPICS = tuple(get_topic(cls) for cls in FOLDS)


def reports_of(clearing: Clearing) -> ClearingReports:
    """The clearing's fold (one per clearing, made at first use)."""
    return clearing.read_model(ClearingReports)


def positions_report(
    clearing: Clearing, start: datetime | None, end: datetime | None, interval: Interval
) -> PositionsReport:
    """Each bank's position at ``start``, at each ``interval`` boundary between, and at
    ``end``. Without ``end``: now, by the clearing's clock (so the last point is each bank's
    position now); without ``start``: the boundary at or before the first move (so the
    series starts from zero), or ``end`` if nothing moved yet."""
    check_window(start, end)
    reports = reports_of(clearing)
    end = end or clearing.clock()
    if start is None:
        first = reports.first_move(clearing.follow_events)
        start = min(interval_start(first, interval), end) if first is not None else end
    if start > end:
        raise InvalidRequest("from must not be after to")
    points = points_between(start, end, interval)
    banks = reports.positions(clearing.follow_events, clearing.bank_ids(), points)
    return PositionsReport(points[0], points[-1], interval, banks)


def flows_report(clearing: Clearing, start: datetime | None, end: datetime | None) -> FlowsReport:
    check_window(start, end)
    flows = reports_of(clearing).flows(clearing.follow_events, start, end)
    return FlowsReport(
        start=start,
        end=end,
        flows=flows,
        transfers=sum(f.transfers for f in flows),
        minutes=sum(f.minutes for f in flows),
    )


def stuck_transfers_report(clearing: Clearing, older_than_seconds: int) -> StuckTransfersReport:
    """Transfers undecided for at least ``older_than_seconds``, by the clearing's clock."""
    now = clearing.clock()
    waiting = []
    for r in reports_of(clearing).undecided(clearing.follow_events):
        requested_at = r.deadline - clearing.deadline
        age = int((now - requested_at).total_seconds())
        if age >= older_than_seconds:
            waiting.append(
                WaitingTransfer(
                    transfer_id=r.transfer_id,
                    status=TransferPhase.PREPARING,
                    payer_bank=r.payer_bank,
                    payer=r.payer,
                    payee_bank=r.payee_bank,
                    payee=r.payee,
                    minutes=r.minutes,
                    requested_at=requested_at,
                    deadline=r.deadline,
                    age_seconds=age,
                )
            )
    waiting.sort(key=lambda w: (w.requested_at, w.transfer_id))
    return StuckTransfersReport(older_than_seconds, waiting)
