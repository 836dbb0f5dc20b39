"""What the ledger answers: read models built from its accounts and events (they are also the
HTTP API's response shapes, so each field is declared once)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.utils import get_topic
from pydantic import BaseModel, Field

from services.ledger.directory_index import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from services.ledger.domain import (
    Account,
    CrossBankTransfer,
)
from services.ledger.domain_terms import (
    MemberKind,
    MemberStatus,
    Role,
    TransferStatus,
)


@dataclass(frozen=True)
class MemberView:
    member_id: str
    name: str
    kind: MemberKind
    balance_minutes: int
    held_minutes: int
    available_minutes: int
    overdraft_limit_minutes: int | None = field(
        metadata={"description": "How far below zero the member may go; null for system accounts."}
    )
    status: MemberStatus = field(
        default=MemberStatus.ACTIVE,
        metadata={"description": "active; suspended or closed: it can neither pay nor be paid."},
    )


def member_view(account: Account, bank_default_limit: int) -> MemberView:
    return MemberView(
        member_id=account.member_id,
        name=account.name,
        kind=MemberKind(account.kind),
        balance_minutes=account.balance_minutes,
        held_minutes=account.held_minutes,
        available_minutes=account.available_minutes,
        overdraft_limit_minutes=account.effective_limit(bank_default_limit),
        status=MemberStatus(account.status),
    )


class MemberQuery(BaseModel):
    """Which members a page of the directory holds (query parameters)."""

    q: str | None = Field(
        default=None,
        max_length=200,
        description="Only members whose id or name contains this, in any case.",
    )
    limit: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    cursor: str | None = Field(
        default=None, max_length=200, description="The previous page's next_cursor."
    )
    include_system: bool = Field(default=False, description="List the system accounts too.")


@dataclass(frozen=True)
class MemberPage:
    members: list[MemberView]
    next_cursor: str | None = field(
        metadata={"description": "Pass as cursor for the next page; null on the last."}
    )


@dataclass(frozen=True)
class ExchangeReceipt:
    exchange_id: str
    payer: str
    payee: str
    minutes: int
    memo: str
    recorded_at: datetime


@dataclass(frozen=True)
class StatementEntry:
    at: datetime
    minutes: int = field(
        metadata={"description": "Signed: positive when earned, negative when spent."}
    )
    counterparty: str
    memo: str
    kind: str
    entry_id: str = field(
        metadata={"description": "The exchange's or the cross-bank transfer's id."}
    )


@dataclass(frozen=True)
class Statement:
    member_id: str
    balance_minutes: int = field(metadata={"description": "The balance now."})
    entries: list[StatementEntry]
    opening_balance_minutes: int = field(
        default=0,
        metadata={"description": "The balance before the first entry listed."},
    )
    next_cursor: str | None = field(
        default=None,
        metadata={"description": "Give it as `cursor` for the next page; null on the last."},
    )


@dataclass(frozen=True)
class StatementWindow:
    """Which entries of a statement: those at or after ``start`` and before ``end``, from the
    ``after``-th on (a cursor), at most ``limit`` (None: all)."""

    start: datetime | None = None
    end: datetime | None = None
    after: int = 0
    limit: int | None = None


def statement(
    member_id: str, events: Iterable[object], window: StatementWindow | None = None
) -> Statement:
    """The posted entries among an account's events, oldest first, in the window (all of them
    without one). The balance is the sum of every entry, so the two always agree; the opening
    balance is the sum of those before the first listed."""
    every = posted_entries(events)
    window = window or StatementWindow()
    listed = [
        (n, entry)
        for n, entry in enumerate(every)
        if n >= window.after
        and (window.start is None or entry.at >= window.start)
        and (window.end is None or entry.at < window.end)
    ]
    page = listed if window.limit is None else listed[: window.limit]
    more = len(page) < len(listed)
    first = page[0][0] if page else len(every)
    return Statement(
        member_id=member_id,
        balance_minutes=sum(e.minutes for e in every),
        entries=[entry for _, entry in page],
        opening_balance_minutes=sum(e.minutes for e in every[:first]),
        next_cursor=str(page[-1][0] + 1) if more else None,
    )


def posted_entries(events: Iterable[object]) -> list[StatementEntry]:
    """Every posted entry among an account's events, oldest first."""
    entries = []
    for ev in events:
        match ev:
            case Account.Credited(entry_id=entry_id):
                sign = 1
            case Account.Debited(entry_id=entry_id):
                sign = -1
            case Account.HoldPosted(hold_id=entry_id):
                sign = -1
            case _:
                continue
        entries.append(
            StatementEntry(
                at=ev.timestamp,
                minutes=sign * ev.minutes,
                counterparty=ev.party or ev.counterparty,
                memo=ev.memo,
                kind=ev.kind,
                entry_id=entry_id,
            )
        )
    return entries


@dataclass(frozen=True)
class BankSummary:
    bank: str
    members: int
    total_posted_minutes: int = field(
        metadata={"description": "Sum of every posted balance: always 0."}
    )


class BankTotals:
    """Members and the sum of all posted balances, folded from the log's postings; each fold
    reads on only from where the last ended."""

    TOPICS = tuple(
        get_topic(cls)
        for cls in (Account.Opened, Account.Credited, Account.Debited, Account.HoldPosted)
    )

    def __init__(self) -> None:
        self.next_position = 1
        self.members = 0
        self.total_minutes = 0
        self.lock = threading.Lock()

    def fold(self, position: int, event: DomainEventProtocol[UUID]) -> None:
        match event:
            case Account.Opened(kind=kind) if kind != MemberKind.SYSTEM:
                self.members += 1
            case Account.Credited(minutes=minutes):
                self.total_minutes += minutes
            case Account.Debited(minutes=minutes) | Account.HoldPosted(minutes=minutes):
                self.total_minutes -= minutes
        self.next_position = position + 1


@dataclass(frozen=True)
class TransferReceipt:
    transfer_id: str
    status: TransferStatus


@dataclass(frozen=True)
class CrossBankTransferView:
    """A cross-bank transfer as this bank sees it."""

    transfer_id: str
    status: TransferStatus
    reason: str | None = field(metadata={"description": "Why it was aborted: a stable code."})
    payer_bank: str
    payer: str
    payee_bank: str
    payee: str
    minutes: int
    memo: str


def cross_bank_transfer_view(transfer: CrossBankTransfer, bank_id: str) -> CrossBankTransferView:
    here = (bank_id, transfer.member_id)
    there = (transfer.other_bank, transfer.other_member)
    (payer_bank, payer), (payee_bank, payee) = (
        (here, there) if transfer.role == Role.PAYER else (there, here)
    )
    return CrossBankTransferView(
        transfer_id=transfer.transfer_id,
        status=TransferStatus(transfer.status),
        reason=transfer.reason,
        payer_bank=payer_bank,
        payer=payer,
        payee_bank=payee_bank,
        payee=payee,
        minutes=transfer.minutes,
        memo=transfer.memo,
    )
