"""A bank's accounts as a replay rebuilds them: balances, holds, overdraft limits and the two
halves of every double entry (the ``account``, ``identity``, ``hold``, ``invariant-5``,
``double-entry`` and ``invariant-1`` rules)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from services.audit.decoding import (
    AccountOpened,
    Credited,
    Debited,
    Folded,
    HoldPlaced,
    HoldPosted,
    HoldVoided,
    OverdraftChanged,
)
from services.audit.findings import (
    ACCOUNT,
    DOUBLE_ENTRY,
    HOLD,
    IDENTITY,
    INVARIANT_1,
    INVARIANT_5,
    Balance,
    EventRef,
    Report,
)
from services.audit.transfers import TransferBook
from services.ledger.domain_terms import (
    MemberKind,
    account_id,
)


class _Hold(NamedTuple):
    minutes: int
    counterparty: str
    party: str
    ref: EventRef


class _Half(NamedTuple):
    """One half of a double entry, waiting for the other."""

    minutes: int
    is_debit: bool
    ref: EventRef


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
    # Reported below its limit, and not back above it since: one finding per excursion.
    over_limit: bool = False
    follows_default: bool = False


class AccountBook:
    """Every account the log has opened, folded event by event, and the double entries still
    waiting for their other half (see ``BankReplay`` for when the books must balance).

    A cross-bank hold, post or credit is also told to the ``transfers`` book."""

    def __init__(
        self,
        report: Report,
        waiting_since: Callable[[int], None],
        transfers: TransferBook,
        default_overdraft_minutes: int,
    ) -> None:
        self._report = report
        self._waiting_since = waiting_since
        self._transfers = transfers
        self.default_overdraft_minutes = default_overdraft_minutes
        self._accounts: dict[int | str, _Account] = {}
        self._halves: dict[tuple[str, str, str], _Half] = {}
        self._posted_sum = 0
        self._reported_sum = 0

    @property
    def settled(self) -> bool:
        """Whether no double entry is half-recorded."""
        return not self._halves

    def oldest(self) -> list[int]:
        """Since when the longest-waiting half has waited."""
        return [next(iter(self._halves.values())).ref.position] if self._halves else []

    def label(self, ref: EventRef) -> str:
        account = self._accounts.get(ref.key)
        return f"account {account.member_id}" if account else ""

    def limit_of(self, account: _Account) -> int | None:
        """The account's overdraft limit now: its own, or the bank's default as recorded."""
        return self.default_overdraft_minutes if account.follows_default else account.limit

    def balances(self) -> dict[str, Balance]:
        return {
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

    # The events of an account.

    def folders(self) -> dict[type[Folded], Callable[[Any, EventRef], None]]:
        """What folds each event of an account."""
        return {
            AccountOpened: self.opened,
            OverdraftChanged: self.overdraft_changed,
            Debited: self.debited,
            Credited: self.credited,
            HoldPlaced: self.hold_placed,
            HoldPosted: self.hold_posted,
            HoldVoided: self.hold_voided,
        }

    def opened(self, event: AccountOpened, ref: EventRef) -> None:
        member_id, kind, own_limit = event.member_id, event.kind, event.overdraft_limit_minutes
        label = f"account {member_id}"
        if ref.key in self._accounts:
            self._report(ref, ACCOUNT, f"account {member_id} is opened again", label)
            return
        if ref.originator_id != account_id(member_id):
            self._report(ref, IDENTITY, f"this aggregate is not the account of {member_id}", label)
        follows_default = kind != MemberKind.SYSTEM and own_limit is None
        limit = own_limit if kind != MemberKind.SYSTEM else None
        self._accounts[ref.key] = _Account(member_id, kind, limit, follows_default=follows_default)

    def overdraft_changed(self, event: OverdraftChanged, ref: EventRef) -> None:
        """The member's own limit from now on (None: the bank's default)."""
        account = self._account(ref)
        account.limit = event.overdraft_limit_minutes
        account.follows_default = event.overdraft_limit_minutes is None

    def debited(self, event: Debited, ref: EventRef) -> None:
        account = self._account(ref)
        account.posted -= event.minutes
        self._check_available(account, ref, spending=True)
        self._post(event.entry_id, account.member_id, event.counterparty, event.minutes, True, ref)

    def credited(self, event: Credited, ref: EventRef) -> None:
        entry_id, minutes = event.entry_id, event.minutes
        account = self._account(ref)
        account.posted += minutes
        self._check_available(account, ref)
        self._post(entry_id, event.counterparty, account.member_id, minutes, False, ref)
        if event.party:
            self._transfers.credited(entry_id, account.member_id, minutes, ref)

    def hold_placed(self, event: HoldPlaced, ref: EventRef) -> None:
        hold_id, minutes = event.hold_id, event.minutes
        account = self._account(ref)
        earlier = account.holds.get(hold_id)
        if earlier is not None:
            self._report(
                ref,
                HOLD,
                f"hold {hold_id} is placed again while open (placed at position "
                f"{earlier.ref.position})",
                f"account {account.member_id}",
            )
            account.held -= earlier.minutes
        account.holds[hold_id] = _Hold(minutes, event.counterparty, event.party, ref)
        account.held += minutes
        self._check_available(account, ref, spending=True)
        if event.party:
            self._transfers.held(hold_id, account.member_id, minutes, ref)

    def hold_posted(self, event: HoldPosted, ref: EventRef) -> None:
        hold_id, minutes = event.hold_id, event.minutes
        account, party = self._end_hold(hold_id, minutes, "a post", ref)
        account.posted -= minutes
        self._check_available(account, ref)
        self._post(hold_id, account.member_id, event.counterparty, minutes, True, ref)
        if party or event.party:
            self._transfers.posted(hold_id, account.member_id, minutes, ref)

    def hold_voided(self, event: HoldVoided, ref: EventRef) -> None:
        account, party = self._end_hold(event.hold_id, event.minutes, "a void", ref)
        self._check_available(account, ref)
        if party:
            self._transfers.voided(event.hold_id, ref)

    def _account(self, ref: EventRef) -> _Account:
        account = self._accounts.get(ref.key)
        if account is None:
            account = _Account(member_id=f"?{ref.originator_id}", kind="unknown", limit=None)
            self._accounts[ref.key] = account
            self._report(ref, ACCOUNT, "an event on an account that was never opened")
        return account

    def _end_hold(
        self, hold_id: str, minutes: int, how: str, ref: EventRef
    ) -> tuple[_Account, str]:
        """Close an open hold; returns the account and the hold's party (who is paid)."""
        account = self._account(ref)
        hold = account.holds.pop(hold_id, None)
        label = f"account {account.member_id}"
        if hold is None:
            self._report(ref, HOLD, f"{how} of hold {hold_id}, which is not open", label)
            return account, ""
        if hold.minutes != minutes:
            self._report(
                ref,
                HOLD,
                f"{how} of {minutes} minutes; hold {hold_id} was placed for {hold.minutes} "
                f"(position {hold.ref.position})",
                label,
            )
        account.held -= hold.minutes
        return account, hold.party

    def _check_available(self, account: _Account, ref: EventRef, *, spending: bool = False) -> None:
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
            self._report(
                ref,
                INVARIANT_5,
                f"{account.member_id} has {available} minutes available, below minus its "
                f"overdraft limit of {limit}",
                f"account {account.member_id}",
            )

    # Double entries and the books.

    def _post(
        self, entry_id: str, debit: str, credit: str, minutes: int, is_debit: bool, ref: EventRef
    ) -> None:
        self._posted_sum += -minutes if is_debit else minutes
        key = (entry_id, debit, credit)
        other = self._halves.get(key)
        if other is None:
            self._halves[key] = _Half(minutes, is_debit, ref)
            self._waiting_since(ref.position)
            return
        if other.is_debit == is_debit:
            side = "debit" if is_debit else "credit"
            self._report(
                ref,
                DOUBLE_ENTRY,
                f"entry {entry_id} ({debit} to {credit}) has a second {side} (the first at "
                f"position {other.ref.position}) before its other half",
                self.label(ref),
            )
            return
        del self._halves[key]
        if other.minutes != minutes:
            this = _Half(minutes, is_debit, ref)
            self._mismatched(key, ref, *((this, other) if is_debit else (other, this)))
        if not self._halves:
            self._check_books(ref)

    def _mismatched(
        self, key: tuple[str, str, str], ref: EventRef, debit_half: _Half, credit_half: _Half
    ) -> None:
        """The two halves of an entry disagree on its minutes; shown where the second is."""
        entry_id, debit, credit = key
        self._report(
            ref,
            DOUBLE_ENTRY,
            f"entry {entry_id}: {debit} is debited {debit_half.minutes} minutes (position "
            f"{debit_half.ref.position}) but {credit} is credited {credit_half.minutes} "
            f"(position {credit_half.ref.position})",
            self.label(ref),
        )

    def expire(self, horizon: int) -> None:
        """Give up on the halves that began waiting before ``horizon`` (kept in that order)."""
        while self._halves:
            key, half = next(iter(self._halves.items()))
            if half.ref.position >= horizon:
                break
            # Its minutes stay counted: the next balanced point shows the imbalance.
            self._orphan(key)

    def finish(self) -> None:
        """The end of the replay: every half still alone is an orphan; the books must balance."""
        for key in list(self._halves):
            self._orphan(key)
        self._check_books(None)

    def _orphan(self, key: tuple[str, str, str]) -> None:
        half = self._halves.pop(key)
        entry_id, debit, credit = key
        if half.is_debit:
            detail = f"{debit} is debited {half.minutes} minutes for entry {entry_id}, "
            detail += f"but {credit} is never credited"
        else:
            detail = f"{credit} is credited {half.minutes} minutes for entry {entry_id}, "
            detail += f"but {debit} is never debited"
        self._report(half.ref, DOUBLE_ENTRY, detail, self.label(half.ref))

    def _check_books(self, ref: EventRef | None) -> None:
        total = self._posted_sum
        if total != self._reported_sum:
            self._reported_sum = total
            if total:
                self._report(
                    ref,
                    INVARIANT_1,
                    f"the posted balances of all accounts sum to {total} minutes, not 0",
                    self.label(ref) if ref else "",
                )
