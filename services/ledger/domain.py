"""One bank's accounts: double-entry postings in integer minutes, overdraft limits, holds."""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

# A bank's defaults: how far below zero a member may go, and the largest single exchange.
DEFAULT_OVERDRAFT_MINUTES = 10 * 60
DEFAULT_MAX_EXCHANGE_MINUTES = 100 * 60


class MemberKind(StrEnum):
    PERSON = "person"
    ORGANISATION = "organisation"
    SYSTEM = "system"  # the bank's own accounts


MEMBER_KINDS = (MemberKind.PERSON, MemberKind.ORGANISATION)
# The bank's side of the clearing house, and where settled amounts land.
FEDERATION_ACCOUNT = "federation"
SETTLEMENT_ACCOUNT = "settlement"
SYSTEM_ACCOUNTS = (FEDERATION_ACCOUNT, SETTLEMENT_ACCOUNT)
# The kind of entry a completed settlement cycle posts.
SETTLEMENT_KIND = "settlement"

MEMBER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_NAME_LENGTH = 200
MAX_MEMO_LENGTH = 500

_ACCOUNT_NAMESPACE = uuid5(NAMESPACE_URL, "urn:timebank-federation:account")


class LedgerError(Exception):
    """A rule of the ledger refused a command; nothing was written."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidRequest(LedgerError):
    """The command's values break a rule that does not depend on any state."""


class OverdraftLimitExceeded(LedgerError):
    """The payer's available balance would fall below minus its overdraft limit."""


class UnknownHold(LedgerError):
    """No open hold with that id on the account (never placed, or already ended)."""


class HoldExists(LedgerError):
    """A hold with that id is already open on the account."""


def account_id(member_id: str) -> UUID:
    """The aggregate id of a member's (or system) account: stable, derived from the id."""
    return uuid5(_ACCOUNT_NAMESPACE, member_id)


def check_amount(minutes: object, maximum: int | None = None) -> int:
    """Return minutes if it is a whole positive number of minutes within the maximum."""
    if not isinstance(minutes, int) or isinstance(minutes, bool):
        raise InvalidRequest("minutes must be a whole number of minutes")
    if minutes <= 0:
        raise InvalidRequest("minutes must be greater than zero")
    if maximum is not None and minutes > maximum:
        raise InvalidRequest(
            f"minutes must not exceed {maximum} for one exchange", maximum_minutes=maximum
        )
    return minutes


def check_memo(memo: str) -> str:
    if len(memo) > MAX_MEMO_LENGTH:
        raise InvalidRequest(f"memo must be at most {MAX_MEMO_LENGTH} characters")
    return memo


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

    @property
    def is_system(self) -> bool:
        return self.kind == MemberKind.SYSTEM

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
    source.debit(entry_id, minutes, target.member_id, memo, SETTLEMENT_KIND, 0)
    target.credit(entry_id, minutes, source.member_id, memo, SETTLEMENT_KIND)


_POLICY_ID = uuid5(NAMESPACE_URL, "urn:timebank-federation:bank-policy")


class BankPolicy(Aggregate):
    """The bank's own rules that its events do not carry: the default overdraft limit of
    members without one of their own. Recorded in the log, so that an audit replaying it
    applies the limit in force at each moment, without being told (there is one policy)."""

    @staticmethod
    def create_id(**_: Any) -> UUID:
        return _POLICY_ID

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
