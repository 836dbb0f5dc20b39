"""A bank's reports for its coordinators and commissioners: activity per calendar month (UTC)
and its members by status now, folded from the log's account events.

What counts (members are the non-system accounts; the bank's own accounts never count):
- an exchange: a local exchange between two members, counted once (on the payer's debit);
  its minutes are given by one member and received by the other, so they are the bank's
  hours given, and equally its hours received;
- an active member in a month: one who paid or was paid that month (any posting on its
  account: an exchange, or a cross-bank transfer out or in, once committed);
- a new member: an account opened that month;
- a transfer out: a member here paid a member of a partner bank (its hold, posted to the
  ``federation`` account on commit); a transfer in: a partner bank's member paid a member
  here (credited from the ``federation`` account on commit). Each counts in the month it was
  committed at this bank; pending and aborted transfers never count.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.utils import get_topic

from services.ledger.application import Ledger
from services.ledger.directory_index import Follow
from services.ledger.domain import Account
from services.ledger.domain_terms import (
    FEDERATION_ACCOUNT,
    EntryKind,
    InvalidRequest,
    MemberKind,
    MemberStatus,
)

MONTH_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])$"
# Ten years a report: enough for any commissioner, small enough to answer at once.
MAX_MONTHS = 120
TOTAL_ROW = "total"


# Months as one integer (year * 12 + month - 1), so a window is a range.


def month_index(text: str) -> int:
    """The month a YYYY-MM names; InvalidRequest if it names none."""
    if not re.fullmatch(MONTH_PATTERN, text):
        raise InvalidRequest(f"{text!r} is not a month: give it as YYYY-MM, e.g. 2026-03")
    year, month = text.split("-")
    return int(year) * 12 + int(month) - 1


def month_text(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def month_of(moment: datetime) -> int:
    """The calendar month (UTC) a moment falls in; a moment without a zone is taken as UTC."""
    utc = moment.astimezone(UTC) if moment.tzinfo is not None else moment
    return utc.year * 12 + utc.month - 1


@dataclass(frozen=True)
class Window:
    """The months from ``first`` to ``last``, both included."""

    first: int
    last: int

    @classmethod
    def between(cls, start: str, end: str) -> Window:
        first, last = month_index(start), month_index(end)
        if first > last:
            raise InvalidRequest(f"from ({start}) must not be after to ({end})")
        if last - first + 1 > MAX_MONTHS:
            raise InvalidRequest(f"a report covers at most {MAX_MONTHS} months")
        return cls(first, last)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.first, self.last + 1))


def hours_text(minutes: int) -> str:
    """Minutes as hours with two decimals ("1.50"), rounded half up, in integer arithmetic."""
    sign = "-" if minutes < 0 else ""
    hundredths = (abs(minutes) * 100 + 30) // 60
    return f"{sign}{hundredths // 100}.{hundredths % 100:02d}"


# The reports' shapes (the HTTP API answers them as they are).


@dataclass(frozen=True)
class MonthFigures:
    month: str = field(metadata={"description": "YYYY-MM, a calendar month in UTC."})
    exchanges: int = field(metadata={"description": "Local exchanges between members."})
    exchanged_minutes: int = field(
        metadata={"description": "Minutes given (and so received) in those exchanges."}
    )
    active_members: int = field(
        metadata={"description": "Members who paid or were paid, here or across banks."}
    )
    new_members: int = field(metadata={"description": "Members opened that month."})


@dataclass(frozen=True)
class StatusFigures:
    members: int
    balance_minutes: int = field(metadata={"description": "The sum of their posted balances."})


@dataclass(frozen=True)
class MembersByStatus:
    """Every member now, by status: a closed member's balance stays on the books, and here."""

    active: StatusFigures
    suspended: StatusFigures
    closed: StatusFigures


@dataclass(frozen=True)
class MonthlyReport:
    bank: str
    first_month: str
    last_month: str
    months: list[MonthFigures] = field(
        metadata={"description": "Every month of the window, oldest first; zeros when quiet."}
    )
    members_by_status: MembersByStatus = field(
        metadata={"description": "At the time of the call, whatever the window."}
    )


@dataclass(frozen=True)
class ImpactRow:
    """One month's impact, or the window's total (month "total"). Its fields are the CSV's
    columns, in this order: stable, so a spreadsheet built on them keeps working."""

    month: str = field(metadata={"description": "YYYY-MM (UTC), or `total` for the window."})
    exchanges: int = field(metadata={"description": "Local exchanges between members."})
    exchanged_minutes: int = field(
        metadata={"description": "Hours given and received within the bank, in minutes."}
    )
    hours: str = field(
        metadata={"description": "exchanged_minutes as hours, two decimals (e.g. `1.50`)."}
    )
    active_members: int = field(
        metadata={
            "description": "People who paid or were paid, here or across banks; in the total, "
            "each person once."
        }
    )
    new_members: int = field(metadata={"description": "Members opened."})
    transfers_out: int = field(metadata={"description": "Committed transfers to partner banks."})
    transfers_out_minutes: int = field(
        metadata={"description": "Minutes this bank's members spent at partner banks."}
    )
    transfers_in: int = field(metadata={"description": "Committed transfers from partner banks."})
    transfers_in_minutes: int = field(
        metadata={"description": "Minutes partner banks' members spent here."}
    )


IMPACT_COLUMNS = tuple(f.name for f in fields(ImpactRow))


@dataclass(frozen=True)
class ImpactReport:
    bank: str
    first_month: str
    last_month: str
    months: list[ImpactRow] = field(
        metadata={"description": "Every month of the window, oldest first; zeros when quiet."}
    )
    total: ImpactRow


# The fold.


@dataclass
class MonthActivity:
    exchanges: int = 0
    exchanged_minutes: int = 0
    new_members: int = 0
    transfers_out: int = 0
    transfers_out_minutes: int = 0
    transfers_in: int = 0
    transfers_in_minutes: int = 0
    active: set[UUID] = field(default_factory=set)


@dataclass
class Holder:
    """An account as the reports know it."""

    system: bool
    status: MemberStatus = MemberStatus.ACTIVE
    balance: int = 0


class BankReports:
    """Per-month activity and per-status totals, folded from the log's account events. Each
    call reads on only from where the last ended, under the lock, to a whole-transaction
    boundary: no exchange or transfer is ever half-counted."""

    def __init__(self) -> None:
        self.next_position = 1
        self.lock = threading.Lock()
        self._accounts: dict[UUID, Holder] = {}
        self._months: dict[int, MonthActivity] = {}
        self._by_status = {status: [0, 0] for status in MemberStatus}  # [members, minutes]

    def catch_up(self, follow: Follow) -> None:
        """Fold what the log holds past the last call; the caller holds the lock."""
        for position, event in follow(self.next_position, TOPICS):
            FOLDS[type(event)](self, event)
            self.next_position = position + 1

    def monthly(self, follow: Follow, bank: str, window: Window) -> MonthlyReport:
        with self.lock:
            self.catch_up(follow)
            months = [self._month_figures(n) for n in window]
            by_status = {s: StatusFigures(*totals) for s, totals in self._by_status.items()}
        return MonthlyReport(
            bank=bank,
            first_month=month_text(window.first),
            last_month=month_text(window.last),
            months=months,
            members_by_status=MembersByStatus(
                active=by_status[MemberStatus.ACTIVE],
                suspended=by_status[MemberStatus.SUSPENDED],
                closed=by_status[MemberStatus.CLOSED],
            ),
        )

    def impact(self, follow: Follow, bank: str, window: Window) -> ImpactReport:
        with self.lock:
            self.catch_up(follow)
            activity = [(n, self._months.get(n, MonthActivity())) for n in window]
            rows = [impact_row(month_text(n), [a], a.active) for n, a in activity]
            everyone = set().union(*(a.active for _, a in activity))
            total = impact_row(TOTAL_ROW, [a for _, a in activity], everyone)
        return ImpactReport(
            bank=bank,
            first_month=month_text(window.first),
            last_month=month_text(window.last),
            months=rows,
            total=total,
        )

    def _month_figures(self, n: int) -> MonthFigures:
        a = self._months.get(n, MonthActivity())
        return MonthFigures(
            month=month_text(n),
            exchanges=a.exchanges,
            exchanged_minutes=a.exchanged_minutes,
            active_members=len(a.active),
            new_members=a.new_members,
        )

    # What each event does.

    def _month(self, moment: datetime) -> MonthActivity:
        return self._months.setdefault(month_of(moment), MonthActivity())

    def opened(self, event: Account.Opened) -> None:
        holder = Holder(system=event.kind == MemberKind.SYSTEM)
        self._accounts[event.originator_id] = holder
        if not holder.system:
            self._month(event.timestamp).new_members += 1
            self._by_status[holder.status][0] += 1

    def changed_status(self, event: DomainEventProtocol[UUID], status: MemberStatus) -> None:
        holder = self._accounts[event.originator_id]
        if holder.system or holder.status == status:
            return
        before, after = self._by_status[holder.status], self._by_status[status]
        before[0] -= 1
        before[1] -= holder.balance
        after[0] += 1
        after[1] += holder.balance
        holder.status = status

    def posted(
        self, event: Account.Entry | Account.HoldEvent, minutes: int
    ) -> MonthActivity | None:
        """Move a balance; the month's activity if the account is a member's (who is then
        active that month), None for a system account."""
        holder = self._accounts[event.originator_id]
        holder.balance += minutes
        if holder.system:
            return None
        self._by_status[holder.status][1] += minutes
        month = self._month(event.timestamp)
        month.active.add(event.originator_id)
        return month

    def credited(self, event: Account.Credited) -> None:
        month = self.posted(event, event.minutes)
        if month is not None and is_cross_bank(event):
            month.transfers_in += 1
            month.transfers_in_minutes += event.minutes

    def debited(self, event: Account.Debited) -> None:
        month = self.posted(event, -event.minutes)
        if month is not None and event.kind == EntryKind.EXCHANGE:
            month.exchanges += 1
            month.exchanged_minutes += event.minutes

    def hold_posted(self, event: Account.HoldPosted) -> None:
        month = self.posted(event, -event.minutes)
        if month is not None and is_cross_bank(event):
            month.transfers_out += 1
            month.transfers_out_minutes += event.minutes


def is_cross_bank(event: Account.Entry | Account.HoldEvent) -> bool:
    """A cross-bank transfer's posting on a member: always against the federation account."""
    return event.kind == EntryKind.TRANSFER and event.counterparty == FEDERATION_ACCOUNT


def impact_row(month: str, activity: Iterable[MonthActivity], active: set[UUID]) -> ImpactRow:
    """One row: the sums of these months' figures, with ``active`` as its people active."""
    months = list(activity)
    exchanged = sum(a.exchanged_minutes for a in months)
    return ImpactRow(
        month=month,
        exchanges=sum(a.exchanges for a in months),
        exchanged_minutes=exchanged,
        hours=hours_text(exchanged),
        active_members=len(active),
        new_members=sum(a.new_members for a in months),
        transfers_out=sum(a.transfers_out for a in months),
        transfers_out_minutes=sum(a.transfers_out_minutes for a in months),
        transfers_in=sum(a.transfers_in for a in months),
        transfers_in_minutes=sum(a.transfers_in_minutes for a in months),
    )


# What each event the reports read does to them; the topics they follow come from here.
FOLDS: dict[type[Any], Callable[[BankReports, Any], None]] = {
    Account.Opened: BankReports.opened,
    Account.Credited: BankReports.credited,
    Account.Debited: BankReports.debited,
    Account.HoldPosted: BankReports.hold_posted,
    Account.Suspended: lambda r, e: r.changed_status(e, MemberStatus.SUSPENDED),
    Account.Reinstated: lambda r, e: r.changed_status(e, MemberStatus.ACTIVE),
    Account.Closed: lambda r, e: r.changed_status(e, MemberStatus.CLOSED),
}
TOPICS = tuple(get_topic(cls) for cls in FOLDS)


def reports_of(ledger: Ledger) -> BankReports:
    """The ledger's fold (one per ledger, made at first use)."""
    return ledger.read_model(BankReports)


def monthly_report(ledger: Ledger, window: Window) -> MonthlyReport:
    return reports_of(ledger).monthly(ledger.follow_events, ledger.bank_id, window)


def impact_report(ledger: Ledger, window: Window) -> ImpactReport:
    return reports_of(ledger).impact(ledger.follow_events, ledger.bank_id, window)
