"""One bank's books: accounts with double-entry postings in integer minutes, overdraft limits
and holds; its side of each cross-bank transfer; its policy; the federation's directory.

The aggregates stay in this module: its path is part of every stored event's topic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from services.ledger.domain_terms import (
    FEDERATION_ACCOUNT,
    MAX_NAME_LENGTH,
    MEMBER_ID_PATTERN,
    MEMBER_KINDS,
    SYSTEM_ACCOUNTS,
    EntryKind,
    HoldExists,
    HoldsOpen,
    InvalidRequest,
    MemberClosed,
    MemberInactive,
    MemberKind,
    MemberStatus,
    OverdraftLimitExceeded,
    Role,
    TransferDecided,
    TransferStatus,
    UnknownHold,
    account_id,
    check_amount,
    directory_id,
    policy_id,
    transfer_id_to_uuid,
)


class Account(Aggregate):
    """A member's or a system account. Balances change only by postings with a counterparty."""

    @staticmethod
    def create_id(member_id: str, **_: Any) -> UUID:
        return account_id(member_id)

    @classmethod
    def open(
        cls, member_id: str, name: str, kind: str, overdraft_limit_minutes: int | None = None
    ) -> Account:
        if not MEMBER_ID_PATTERN.fullmatch(member_id):
            raise InvalidRequest(
                "member_id must be 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        # Case-insensitive, so no member can pass for a system account on a statement.
        if member_id.lower() in SYSTEM_ACCOUNTS and kind != MemberKind.SYSTEM:
            raise InvalidRequest(f"'{member_id}' is reserved for the bank's system account")
        if kind == MemberKind.SYSTEM and member_id not in SYSTEM_ACCOUNTS:
            raise InvalidRequest(
                f"only the bank's own accounts ({', '.join(SYSTEM_ACCOUNTS)}) are of kind system"
            )
        if kind not in (*MEMBER_KINDS, MemberKind.SYSTEM):
            raise InvalidRequest(f"kind must be one of {', '.join(MEMBER_KINDS)}")
        if not name.strip() or len(name) > MAX_NAME_LENGTH:
            raise InvalidRequest(f"name must be 1-{MAX_NAME_LENGTH} characters")
        if overdraft_limit_minutes is not None and (
            isinstance(overdraft_limit_minutes, bool)
            or not isinstance(overdraft_limit_minutes, int)
            or overdraft_limit_minutes < 0
        ):
            raise InvalidRequest("overdraft_limit_minutes must be a whole number >= 0")
        return cls(
            member_id=member_id,
            name=name,
            kind=kind,
            overdraft_limit_minutes=overdraft_limit_minutes,
        )

    class Opened(Aggregate.Created):
        member_id: str
        name: str
        kind: str
        overdraft_limit_minutes: int | None

    @event(Opened)
    def __init__(
        self, member_id: str, name: str, kind: str, overdraft_limit_minutes: int | None
    ) -> None:
        self.member_id = member_id
        self.name = name
        self.kind = kind
        self.overdraft_limit_minutes = overdraft_limit_minutes
        self.balance_minutes = 0
        self.held_minutes = 0
        # hold id -> the pending posting, kept as plain data so snapshots transcode it.
        self.holds: dict[str, dict[str, Any]] = {}

    # Accounts opened before members had a status (and snapshots of them) are active.
    status = MemberStatus.ACTIVE

    @property
    def is_system(self) -> bool:
        return self.kind == MemberKind.SYSTEM

    def check_active(self) -> None:
        """MemberInactive unless the member may pay and be paid."""
        if self.status != MemberStatus.ACTIVE:
            raise MemberInactive(
                f"{self.member_id} is {self.status}: it can neither pay nor be paid",
                member_id=self.member_id,
                member_status=self.status,
            )

    # A member's terms and status, changed by the bank's coordinator.

    class Renamed(Aggregate.Event):
        name: str

    def rename(self, name: str) -> None:
        self._check_open()
        if not name.strip() or len(name) > MAX_NAME_LENGTH:
            raise InvalidRequest(f"name must be 1-{MAX_NAME_LENGTH} characters")
        if name != self.name:
            self._renamed(name=name)

    @event(Renamed)
    def _renamed(self, name: str) -> None:
        self.name = name

    class OverdraftChanged(Aggregate.Event):
        # None: the member follows the bank's default.
        overdraft_limit_minutes: int | None

    def change_overdraft(self, overdraft_limit_minutes: int | None) -> None:
        """A lower limit refuses new spending past it; it takes nothing already spent back."""
        self._check_open()
        if self.is_system:
            raise InvalidRequest("a system account has no overdraft limit")
        if overdraft_limit_minutes is not None and (
            isinstance(overdraft_limit_minutes, bool)
            or not isinstance(overdraft_limit_minutes, int)
            or overdraft_limit_minutes < 0
        ):
            raise InvalidRequest("overdraft_limit_minutes must be a whole number >= 0")
        if overdraft_limit_minutes != self.overdraft_limit_minutes:
            self._overdraft_changed(overdraft_limit_minutes=overdraft_limit_minutes)

    @event(OverdraftChanged)
    def _overdraft_changed(self, overdraft_limit_minutes: int | None) -> None:
        self.overdraft_limit_minutes = overdraft_limit_minutes

    class Suspended(Aggregate.Event):
        pass

    def suspend(self) -> None:
        self._check_open()
        if self.is_system:
            raise InvalidRequest("a system account cannot be suspended")
        if self.status != MemberStatus.SUSPENDED:
            self._suspended()

    @event(Suspended)
    def _suspended(self) -> None:
        self.status = MemberStatus.SUSPENDED

    class Reinstated(Aggregate.Event):
        pass

    def reinstate(self) -> None:
        self._check_open()
        if self.status != MemberStatus.ACTIVE:
            self._reinstated()

    @event(Reinstated)
    def _reinstated(self) -> None:
        self.status = MemberStatus.ACTIVE

    class Closed(Aggregate.Event):
        pass

    def close(self, credits_pending: int = 0) -> None:
        """For good. Refused while a transfer is in flight, from it (its minutes on hold) or
        to it (``credits_pending``): it can be closed once they are decided."""
        self._check_open()
        if self.is_system:
            raise InvalidRequest("a system account cannot be closed")
        if self.holds or credits_pending:
            raise HoldsOpen(
                f"{self.member_id} has {len(self.holds) + credits_pending} transfer(s) or "
                "hold(s) in flight; close it once they are decided",
                member_id=self.member_id,
            )
        self._closed()

    @event(Closed)
    def _closed(self) -> None:
        self.status = MemberStatus.CLOSED

    def _check_open(self) -> None:
        if self.status == MemberStatus.CLOSED:
            raise MemberClosed(f"{self.member_id} is closed", member_id=self.member_id)

    @property
    def available_minutes(self) -> int:
        return self.balance_minutes - self.held_minutes

    def effective_limit(self, bank_default: int) -> int | None:
        """Minutes this account may go below zero; None means unbounded (system accounts)."""
        if self.is_system:
            return None
        if self.overdraft_limit_minutes is not None:
            return self.overdraft_limit_minutes
        return bank_default

    def _check_can_spend(self, minutes: int, bank_default: int) -> None:
        limit = self.effective_limit(bank_default)
        if limit is not None and self.available_minutes - minutes < -limit:
            raise OverdraftLimitExceeded(
                f"{self.member_id} has {self.available_minutes} minutes available and an "
                f"overdraft limit of {limit}; {minutes} minutes would exceed it",
                member_id=self.member_id,
                available_minutes=self.available_minutes,
                overdraft_limit_minutes=limit,
                requested_minutes=minutes,
            )

    # Posted entries. Every debit is saved together with the matching credit.

    def debit(
        self,
        entry_id: str,
        minutes: int,
        counterparty: str,
        memo: str,
        kind: str,
        bank_default_limit: int,
    ) -> None:
        check_amount(minutes)
        self.check_active()
        self._check_can_spend(minutes, bank_default_limit)
        self._debited(
            entry_id=entry_id, minutes=minutes, counterparty=counterparty, memo=memo, kind=kind
        )

    class Entry(Aggregate.Event):
        """A posted movement of minutes against a counterparty account."""

        entry_id: str
        minutes: int
        counterparty: str
        memo: str
        kind: str
        # Who is on the other side when that is not an account here ("college/bob").
        party: str = ""

    class Debited(Entry):
        pass

    @event(Debited)
    def _debited(
        self, entry_id: str, minutes: int, counterparty: str, memo: str, kind: str, party: str = ""
    ) -> None:
        self.balance_minutes -= minutes

    def credit(
        self,
        entry_id: str,
        minutes: int,
        counterparty: str,
        memo: str,
        kind: str,
        party: str = "",
    ) -> None:
        check_amount(minutes)
        self._credited(
            entry_id=entry_id,
            minutes=minutes,
            counterparty=counterparty,
            memo=memo,
            kind=kind,
            party=party,
        )

    class Credited(Entry):
        pass

    @event(Credited)
    def _credited(
        self, entry_id: str, minutes: int, counterparty: str, memo: str, kind: str, party: str
    ) -> None:
        self.balance_minutes += minutes

    # Two-phase postings: a hold reserves minutes now; it is later posted or voided, once.

    def place_hold(
        self,
        hold_id: str,
        minutes: int,
        counterparty: str,
        memo: str,
        kind: str,
        bank_default_limit: int,
        party: str = "",
    ) -> None:
        check_amount(minutes)
        if hold_id in self.holds:
            raise HoldExists(f"hold {hold_id} is already open on {self.member_id}")
        self.check_active()
        self._check_can_spend(minutes, bank_default_limit)
        self._hold_placed(
            hold_id=hold_id,
            minutes=minutes,
            counterparty=counterparty,
            memo=memo,
            kind=kind,
            party=party,
        )

    class HoldEvent(Aggregate.Event):
        """A hold's terms: who receives the minutes when it is posted, and why."""

        hold_id: str
        minutes: int
        counterparty: str
        memo: str
        kind: str
        party: str = ""

    class HoldPlaced(HoldEvent):
        pass

    @event(HoldPlaced)
    def _hold_placed(
        self, hold_id: str, minutes: int, counterparty: str, memo: str, kind: str, party: str
    ) -> None:
        self.holds[hold_id] = {
            "minutes": minutes,
            "counterparty": counterparty,
            "memo": memo,
            "kind": kind,
            "party": party,
        }
        self.held_minutes += minutes

    def open_hold(self, hold_id: str) -> dict[str, Any]:
        try:
            return self.holds[hold_id]
        except KeyError:
            raise UnknownHold(f"no open hold {hold_id} on {self.member_id}") from None

    def post_hold(self, hold_id: str) -> dict[str, Any]:
        """Turn the hold into a posted debit; returns the hold so the caller can credit."""
        hold = self.open_hold(hold_id)
        # Repeat the hold's terms in the event, so each posting is readable on its own.
        self._hold_posted(hold_id=hold_id, **hold)
        return hold

    class HoldPosted(HoldEvent):
        pass

    @event(HoldPosted)
    def _hold_posted(
        self, hold_id: str, minutes: int, counterparty: str, memo: str, kind: str, party: str = ""
    ) -> None:
        del self.holds[hold_id]
        self.held_minutes -= minutes
        self.balance_minutes -= minutes

    def void_hold(self, hold_id: str) -> None:
        hold = self.open_hold(hold_id)
        self._hold_voided(hold_id=hold_id, minutes=hold["minutes"])

    class HoldVoided(Aggregate.Event):
        hold_id: str
        minutes: int

    @event(HoldVoided)
    def _hold_voided(self, hold_id: str, minutes: int) -> None:
        del self.holds[hold_id]
        self.held_minutes -= minutes


def post_hold_to_counterparty(
    account: Account, hold_id: str, account_of: Callable[[str], Account]
) -> Account:
    """Post an open hold as one double entry: the held account is debited and the hold's
    counterparty (found with ``account_of``) credited; returns the credited account."""
    hold = account.post_hold(hold_id)
    counterparty = account_of(hold["counterparty"])
    counterparty.credit(
        hold_id,
        hold["minutes"],
        account.member_id,
        hold["memo"],
        hold["kind"],
        hold.get("party", ""),
    )
    return counterparty


def credits_pending(federation: Account | None, member_id: str) -> int:
    """Cross-bank credits to a member still waiting for the clearing house's decision: held on
    the bank's federation account, to be posted to the member on commit."""
    holds = federation.holds.values() if federation is not None else ()
    return sum(1 for hold in holds if hold["counterparty"] == member_id)


def post_settlement(
    federation: Account, settlement: Account, settlement_id: int, moved_minutes: int
) -> None:
    """A completed settlement cycle, as one double entry: the bank paid (``moved_minutes`` > 0)
    or was paid (< 0) outside the system, so that much moves from its ``federation`` account
    to its ``settlement`` account (or back), and ``federation`` keeps mirroring the position."""
    if not moved_minutes:
        return
    entry_id = f"settlement-{settlement_id}"
    memo = f"Settlement cycle {settlement_id}"
    source, target = (federation, settlement) if moved_minutes > 0 else (settlement, federation)
    minutes = abs(moved_minutes)
    # System accounts have no overdraft limit, so the bank default does not apply.
    source.debit(entry_id, minutes, target.member_id, memo, EntryKind.SETTLEMENT, 0)
    target.credit(entry_id, minutes, source.member_id, memo, EntryKind.SETTLEMENT)


class BankPolicy(Aggregate):
    """The bank's own rules that its events do not carry: the default overdraft limit of
    members without one of their own. Recorded in the log, so that an audit replaying it
    applies the limit in force at each moment, without being told (there is one policy)."""

    @staticmethod
    def create_id(**_: Any) -> UUID:
        return policy_id()

    class Adopted(Aggregate.Created):
        default_overdraft_minutes: int

    @event(Adopted)
    def __init__(self, default_overdraft_minutes: int) -> None:
        self.default_overdraft_minutes = default_overdraft_minutes

    class DefaultOverdraftChanged(Aggregate.Event):
        default_overdraft_minutes: int

    def set_default_overdraft(self, minutes: int) -> None:
        if minutes != self.default_overdraft_minutes:
            self._default_overdraft_changed(default_overdraft_minutes=minutes)

    @event(DefaultOverdraftChanged)
    def _default_overdraft_changed(self, default_overdraft_minutes: int) -> None:
        self.default_overdraft_minutes = default_overdraft_minutes


class CrossBankTransfer(Aggregate):
    """This bank's side of one cross-bank transfer: as the payer's bank or the payee's.

    It is keyed by the transfer id, so the same transfer can never hold minutes twice here,
    and it changes only on the clearing house's decision, once.
    """

    @staticmethod
    def create_id(transfer_id: str, **_: Any) -> UUID:
        return transfer_id_to_uuid(transfer_id)

    class Started(Aggregate.Created):
        transfer_id: str
        role: str
        member_id: str
        other_bank: str
        other_member: str
        minutes: int
        memo: str

    @event(Started)
    def __init__(
        self,
        transfer_id: str,
        role: str,
        member_id: str,
        other_bank: str,
        other_member: str,
        minutes: int,
        memo: str,
    ) -> None:
        self.transfer_id = transfer_id
        self.role = role
        self.member_id = member_id
        self.other_bank = other_bank
        self.other_member = other_member
        self.minutes = minutes
        self.memo = memo
        self.status = TransferStatus.PENDING
        self.reason: str | None = None

    @property
    def party(self) -> str:
        return f"{self.other_bank}/{self.other_member}"

    @property
    def held_on(self) -> str:
        """The account whose hold carries this transfer until the decision."""
        return self.member_id if self.role == Role.PAYER else FEDERATION_ACCOUNT

    def _check_pending(self) -> None:
        if self.status != TransferStatus.PENDING:
            raise TransferDecided(f"transfer {self.transfer_id} is already {self.status}")

    class Committed(Aggregate.Event):
        pass

    def commit(self) -> None:
        self._check_pending()
        self._committed()

    @event(Committed)
    def _committed(self) -> None:
        self.status = TransferStatus.COMMITTED

    class Aborted(Aggregate.Event):
        reason: str

    def abort(self, reason: str) -> None:
        self._check_pending()
        self._aborted(reason=reason)

    @event(Aborted)
    def _aborted(self, reason: str) -> None:
        self.status = TransferStatus.ABORTED
        self.reason = reason


class BankDirectory(Aggregate):
    """The federation's member banks as the clearing house last announced them."""

    @staticmethod
    def create_id(**_: Any) -> UUID:
        return directory_id()

    class Opened(Aggregate.Created):
        pass

    @event(Opened)
    def __init__(self) -> None:
        self.banks: dict[str, dict[str, str]] = {}

    class Replaced(Aggregate.Event):
        banks: list[dict[str, str]]

    def replace(self, banks: list[dict[str, str]]) -> None:
        self._replaced(banks=banks)

    @event(Replaced)
    def _replaced(self, banks: list[dict[str, str]]) -> None:
        self.banks = {b["bank_id"]: b for b in banks}
