"""Stateful property test: random command sequences on the real in-memory Ledger vs a model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from services.common.idempotency import IdempotencyConflict, fingerprint
from services.common.stores import parse_store_url
from services.ledger.application import Ledger
from services.ledger.domain_terms import (
    MAX_MEMO_LENGTH,
    MEMBER_ID_PATTERN,
    HoldExists,
    InvalidRequest,
    LedgerError,
    MemberExists,
    MemberKind,
    OverdraftLimitExceeded,
    UnknownHold,
    UnknownMember,
)
from services.ledger.views import (
    ExchangeReceipt,
    MemberView,
)
from services.ledger.writer import (
    Executed,
    IdempotencyKey,
)

BANK = "prop-bank"
# Small numbers, so that random amounts often reach the limits.
DEFAULT_LIMIT = 120
MAX_EXCHANGE = 300
MEMBERS = ("ann", "bob", "cy", "org.one")
SYSTEM = ("federation", "settlement")
# Ids that may be asked about but are never valid members: a stranger and a malformed id.
STRANGERS = ("ghost", "bad id")
EVERY_ID: tuple[str, ...] = MEMBERS + SYSTEM + STRANGERS
HOLD_IDS = ("h1", "h2", "h3")
IDEMPOTENCY_KEYS = ("k1", "k2")

member_ids = st.sampled_from(MEMBERS)
limits = st.sampled_from([None, None, 0, 30, 500])
# Mostly valid amounts, so that sequences get far enough to meet the limits.
small_minutes = st.integers(1, DEFAULT_LIMIT // 2)
bad_minutes = st.sampled_from([0, -1, -60, MAX_EXCHANGE + 1, 10_000])
# Resolved when the command runs: exactly what takes the account to its limit, or one more.
EDGES = ("to the limit", "one past the limit")
edge_minutes = st.sampled_from(EDGES)
exchange_minutes = st.one_of(
    small_minutes, small_minutes, st.integers(1, MAX_EXCHANGE), edge_minutes, bad_minutes
)
hold_minutes = st.one_of(
    small_minutes, small_minutes, edge_minutes, st.sampled_from([0, -5, MAX_EXCHANGE + 1])
)
memos = st.sampled_from(
    ["", "gardening", "lift to the clinic", "reading", "tea", "m" * (MAX_MEMO_LENGTH + 1)]
)
HOLD_MODES = ("member pays federation", "federation pays member", "any two ids")


@dataclass
class ModelAccount:
    name: str
    kind: str
    limit: int | None
    balance: int = 0
    holds: dict[str, tuple[int, str]] = field(default_factory=dict)
    entries: int = 0

    @property
    def held(self) -> int:
        return sum(minutes for minutes, _ in self.holds.values())

    @property
    def available(self) -> int:
        return self.balance - self.held

    def over_limit(self, minutes: int) -> bool:
        return self.limit is not None and self.available - minutes < -self.limit


class LedgerMachine(RuleBasedStateMachine):
    """Drives one in-memory Ledger and a plain model of what each account should hold."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger(
            BANK,
            parse_store_url("memory://"),
            default_overdraft_minutes=DEFAULT_LIMIT,
            max_exchange_minutes=MAX_EXCHANGE,
        )
        self.model = {sid: ModelAccount(sid.title(), "system", None) for sid in SYSTEM}
        # Idempotency key -> (fingerprint, the first receipt).
        self.recorded: dict[str, tuple[str, Any]] = {}

    def teardown(self) -> None:
        self.ledger.close()

    # Helpers.

    def expected_view(self, member_id: str) -> MemberView:
        m = self.model[member_id]
        return MemberView(
            member_id=member_id,
            name=m.name,
            kind=MemberKind(m.kind),
            balance_minutes=m.balance,
            held_minutes=m.held,
            available_minutes=m.available,
            overdraft_limit_minutes=m.limit,
        )

    def snapshot(self) -> tuple[Any, ...]:
        """Everything a refused command must leave alone, down to the last event written."""
        views: dict[str, MemberView | None] = {}
        for member_id in EVERY_ID:
            try:
                views[member_id] = self.ledger.get_member(member_id)
            except UnknownMember:
                views[member_id] = None
        return views, self.ledger.recorder.max_notification_id()

    def attempt(self, refusals: set[type[Exception]], command: Callable[[], Any]) -> Any:
        """Run the command; when the model says it must be refused, check that nothing changed.

        ``refusals`` holds every reason that applies; which one the ledger reports first is
        not part of the contract, only that it is one of them.
        """
        if not refusals:
            return command()
        before = self.snapshot()
        with pytest.raises((LedgerError, IdempotencyConflict)) as refused:
            command()
        assert isinstance(refused.value, tuple(refusals)), (refused.value, refusals)
        assert self.snapshot() == before
        return None

    def resolve(self, minutes: int | str, member_id: str) -> int:
        if isinstance(minutes, int):
            return minutes
        account = self.model.get(member_id)
        if account is None or account.limit is None:
            headroom = DEFAULT_LIMIT
        else:
            headroom = account.available + account.limit
        return headroom + EDGES.index(minutes)

    def member_refusal(self, member_id: str) -> set[type[Exception]]:
        if member_id not in self.model:
            return {UnknownMember}
        if self.model[member_id].kind == "system":
            return {InvalidRequest}
        return set()

    def exchange_refusals(
        self, payer: str, payee: str, minutes: int, memo: str
    ) -> set[type[Exception]]:
        refusals: set[type[Exception]] = set()
        if minutes <= 0 or minutes > MAX_EXCHANGE or len(memo) > MAX_MEMO_LENGTH:
            refusals.add(InvalidRequest)
        if payer == payee:
            refusals.add(InvalidRequest)
        refusals |= self.member_refusal(payer) | self.member_refusal(payee)
        if not self.member_refusal(payer) and minutes > 0 and self.model[payer].over_limit(minutes):
            refusals.add(OverdraftLimitExceeded)
        return refusals

    def apply_posting(self, payer: str, payee: str, minutes: int) -> None:
        self.model[payer].balance -= minutes
        self.model[payee].balance += minutes
        self.model[payer].entries += 1
        self.model[payee].entries += 1

    def draw_id(self, data: st.DataObject, other: str | None = None) -> str:
        """Mostly an opened member other than ``other``; sometimes any id at all."""
        opened = [m for m in MEMBERS if m in self.model and m != other]
        if opened and data.draw(st.integers(0, 9), label="pick an opened member") < 8:
            return data.draw(st.sampled_from(opened), label="member")
        return data.draw(st.sampled_from(EVERY_ID), label="any id")

    # Rules.

    @initialize(ann_limit=limits, bob_limit=limits, org_limit=limits)
    def open_first_members(
        self, ann_limit: int | None, bob_limit: int | None, org_limit: int | None
    ) -> None:
        self.open_member("ann", "person", ann_limit)
        self.open_member("bob", "person", bob_limit)
        self.open_member("org.one", "organisation", org_limit)

    @rule(
        member_id=st.one_of(member_ids, st.sampled_from(EVERY_ID)),
        kind=st.sampled_from(["person", "person", "organisation", "system"]),
        limit=limits,
    )
    def open_member(self, member_id: str, kind: str, limit: int | None) -> None:
        refusals: set[type[Exception]] = set()
        if (
            kind == "system"
            or not MEMBER_ID_PATTERN.fullmatch(member_id)
            or member_id.lower() in SYSTEM
        ):
            refusals.add(InvalidRequest)
        if member_id in self.model:
            refusals.add(MemberExists)
        name = f"Member {member_id}"
        executed = self.attempt(
            refusals, lambda: self.ledger.open_member(member_id, name, kind, limit)
        )
        if executed is not None:
            self.model[member_id] = ModelAccount(
                name, kind, DEFAULT_LIMIT if limit is None else limit
            )
            assert not executed.replayed
            assert executed.value == self.expected_view(member_id)

    @rule(data=st.data(), minutes=exchange_minutes, memo=memos)
    def exchange(self, data: st.DataObject, minutes: int | str, memo: str) -> None:
        payer = self.draw_id(data)
        payee = self.draw_id(data, other=payer)
        minutes = self.resolve(minutes, payer)
        refusals = self.exchange_refusals(payer, payee, minutes, memo)
        executed = self.attempt(refusals, lambda: self.ledger.exchange(payer, payee, minutes, memo))
        if executed is not None:
            receipt = executed.value
            assert not executed.replayed
            assert (receipt.payer, receipt.payee, receipt.minutes, receipt.memo) == (
                payer,
                payee,
                minutes,
                memo,
            )
            self.apply_posting(payer, payee, minutes)

    @rule(data=st.data(), key=st.sampled_from(IDEMPOTENCY_KEYS), minutes=exchange_minutes)
    def exchange_with_idempotency_key(
        self, data: st.DataObject, key: str, minutes: int | str
    ) -> None:
        payer = self.draw_id(data)
        payee = self.draw_id(data, other=payer)
        minutes = self.resolve(minutes, payer)
        body = {"payer": payer, "payee": payee, "minutes": minutes, "memo": "keyed"}
        idem = IdempotencyKey(key, fingerprint("exchange", body))

        def command() -> Executed[ExchangeReceipt]:
            return self.ledger.exchange(payer, payee, minutes, "keyed", idem)

        if key in self.recorded:
            first_fingerprint, first_receipt = self.recorded[key]
            if first_fingerprint != idem.fingerprint:
                self.attempt({IdempotencyConflict}, command)
                return
            # The first result comes back, even if the same request would now be refused.
            before = self.snapshot()
            executed = command()
            assert executed.replayed
            assert executed.value == first_receipt
            assert self.snapshot() == before
            return
        executed = self.attempt(self.exchange_refusals(payer, payee, minutes, "keyed"), command)
        if executed is not None:
            assert not executed.replayed
            self.recorded[key] = (idem.fingerprint, executed.value)
            self.apply_posting(payer, payee, minutes)

    @rule(
        data=st.data(),
        mode=st.sampled_from(HOLD_MODES),
        hold_id=st.sampled_from(HOLD_IDS),
        minutes=hold_minutes,
        memo=memos,
    )
    def place_hold(
        self, data: st.DataObject, mode: str, hold_id: str, minutes: int | str, memo: str
    ) -> None:
        if mode == "member pays federation":
            member_id, counterparty = self.draw_id(data), "federation"
        elif mode == "federation pays member":
            member_id, counterparty = "federation", self.draw_id(data)
        else:
            member_id = self.draw_id(data)
            counterparty = self.draw_id(data, other=member_id)
        minutes = self.resolve(minutes, member_id)
        refusals: set[type[Exception]] = set()
        if len(memo) > MAX_MEMO_LENGTH or not 0 < minutes <= MAX_EXCHANGE:
            refusals.add(InvalidRequest)
        if counterparty == member_id:
            refusals.add(InvalidRequest)
        if member_id not in self.model or counterparty not in self.model:
            refusals.add(UnknownMember)
        account = self.model.get(member_id)
        if account is not None and hold_id in account.holds:
            refusals.add(HoldExists)
        if account is not None and minutes > 0 and account.over_limit(minutes):
            refusals.add(OverdraftLimitExceeded)
        view = self.attempt(
            refusals,
            lambda: self.ledger.place_hold(member_id, hold_id, minutes, counterparty, memo),
        )
        if view is not None:
            assert account is not None
            account.holds[hold_id] = (minutes, counterparty)
            assert view == self.expected_view(member_id)

    def open_holds(self) -> list[tuple[str, str]]:
        return sorted((m, h) for m, a in self.model.items() for h in a.holds)

    @precondition(lambda self: bool(self.open_holds()))
    @rule(data=st.data(), action=st.sampled_from(["post", "void"]))
    def end_open_hold(self, data: st.DataObject, action: str) -> None:
        member_id, hold_id = data.draw(st.sampled_from(self.open_holds()))
        self.end_hold(member_id, hold_id, action)

    @rule(
        data=st.data(),
        hold_id=st.sampled_from(HOLD_IDS),
        action=st.sampled_from(["post", "void"]),
    )
    def end_any_hold(self, data: st.DataObject, hold_id: str, action: str) -> None:
        self.end_hold(self.draw_id(data), hold_id, action)

    def end_hold(self, member_id: str, hold_id: str, action: str) -> None:
        account = self.model.get(member_id)
        refusals: set[type[Exception]] = set()
        if account is None:
            refusals.add(UnknownMember)
        elif hold_id not in account.holds:
            refusals.add(UnknownHold)
        end = self.ledger.post_hold if action == "post" else self.ledger.void_hold
        view = self.attempt(refusals, lambda: end(member_id, hold_id))
        if view is not None:
            assert account is not None
            minutes, counterparty = account.holds.pop(hold_id)
            if action == "post":
                self.apply_posting(member_id, counterparty, minutes)
            assert view == self.expected_view(member_id)

    # Invariants, checked after every step; one read of each account serves them all.

    @invariant()
    def books_agree_with_the_model(self) -> None:
        summary = self.ledger.summary()
        assert summary.bank == BANK
        assert summary.total_posted_minutes == 0
        assert summary.members == sum(a.kind != "system" for a in self.model.values())
        for member_id in EVERY_ID:
            if member_id not in self.model:
                with pytest.raises(UnknownMember):
                    self.ledger.get_member(member_id)
                continue
            view = self.ledger.get_member(member_id)
            assert view == self.expected_view(member_id)
            limit = view.overdraft_limit_minutes
            assert limit is None or view.available_minutes >= -limit
            statement = self.ledger.statement(member_id)
            assert statement.balance_minutes == view.balance_minutes
            assert len(statement.entries) == self.model[member_id].entries
            times = [entry.at for entry in statement.entries]
            assert times == sorted(times)


def test_ledger_stays_balanced_within_limits_and_refusals_write_nothing() -> None:
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(max_examples=50, stateful_step_count=30, deadline=None),
    )
