"""Domain rules of the Account aggregate (services/ledger/domain.py), tested without any store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.domain import CanMutateAggregate

from services.ledger.domain import (
    Account,
)
from services.ledger.domain_terms import (
    MAX_MEMO_LENGTH,
    MAX_NAME_LENGTH,
    HoldExists,
    InvalidRequest,
    OverdraftLimitExceeded,
    UnknownHold,
    account_id,
    check_amount,
    check_memo,
)

BANK_DEFAULT = 120


def opened(
    member_id: str = "ann", kind: str = "person", limit: int | None = None, name: str = "Ann"
) -> Account:
    """An open account whose Opened event is already collected, so only later events pend."""
    account = Account.open(member_id, name, kind, limit)
    account.collect_events()
    return account


def state(account: Account) -> tuple[Any, ...]:
    return (
        account.balance_minutes,
        account.held_minutes,
        account.available_minutes,
        {k: dict(v) for k, v in account.holds.items()},
        account.version,
    )


def debit(account: Account, minutes: Any, entry_id: str = "e1") -> None:
    account.debit(entry_id, minutes, "bob", "help", "exchange", BANK_DEFAULT)


def hold(account: Account, hold_id: str, minutes: Any) -> None:
    account.place_hold(hold_id, minutes, "federation", "transfer", "transfer", BANK_DEFAULT)


# Opening.


def test_open_records_the_member_with_zero_balances_and_one_opened_event() -> None:
    account = Account.open("ann", "Ann", "person", 30)

    assert (account.member_id, account.name, account.kind) == ("ann", "Ann", "person")
    assert account.overdraft_limit_minutes == 30
    assert (account.balance_minutes, account.held_minutes, account.holds) == (0, 0, {})
    events = account.collect_events()
    assert [type(e) for e in events] == [Account.Opened]


def test_account_id_is_derived_from_the_member_id_and_differs_between_members() -> None:
    assert Account.open("ann", "Ann", "person").id == account_id("ann")
    assert account_id("ann") == account_id("ann")
    assert account_id("ann") != account_id("bob")


@pytest.mark.parametrize("member_id", ["a", "9", "A1", "ann.smith_2-x", "a" * 64])
def test_open_accepts_member_ids_matching_the_pattern(member_id: str) -> None:
    assert Account.open(member_id, "Someone", "person").member_id == member_id


@pytest.mark.parametrize(
    "member_id",
    ["", ".ann", "-ann", "_ann", "a" * 65, "ann smith", "ann/x", "ann:1", "ann\n", "anné"],
)
def test_open_refuses_member_ids_outside_the_pattern(member_id: str) -> None:
    with pytest.raises(InvalidRequest, match="member_id"):
        Account.open(member_id, "Someone", "person")


@pytest.mark.parametrize("member_id", ["federation", "settlement"])
@pytest.mark.parametrize("kind", ["person", "organisation"])
def test_open_refuses_reserved_system_ids_for_members(member_id: str, kind: str) -> None:
    with pytest.raises(InvalidRequest, match="reserved"):
        Account.open(member_id, "Impostor", kind)


@pytest.mark.parametrize("member_id", ["federation", "settlement"])
def test_reserved_ids_open_as_system_accounts(member_id: str) -> None:
    account = Account.open(member_id, member_id.title(), "system")
    assert account.is_system


@pytest.mark.parametrize("kind", ["person", "organisation"])
def test_open_accepts_member_kinds(kind: str) -> None:
    account = Account.open("ann", "Ann", kind)
    assert account.kind == kind
    assert not account.is_system


@pytest.mark.parametrize("kind", ["", "Person", "bank", "admin", "people"])
def test_open_refuses_unknown_kinds(kind: str) -> None:
    with pytest.raises(InvalidRequest, match="kind"):
        Account.open("ann", "Ann", kind)


@pytest.mark.parametrize("name", ["", "   ", "\t\n", "x" * (MAX_NAME_LENGTH + 1)])
def test_open_refuses_blank_or_overlong_names(name: str) -> None:
    with pytest.raises(InvalidRequest, match="name"):
        Account.open("ann", name, "person")


def test_open_accepts_a_name_of_the_maximum_length() -> None:
    name = "x" * MAX_NAME_LENGTH
    assert Account.open("ann", name, "person").name == name


@pytest.mark.parametrize("limit", [-1, -600, True, False, 1.5, 60.0, "60"])
def test_open_refuses_negative_or_non_integer_overdraft_limits(limit: Any) -> None:
    with pytest.raises(InvalidRequest, match="overdraft_limit_minutes"):
        Account.open("ann", "Ann", "person", limit)


@pytest.mark.parametrize("limit", [None, 0, 1, 6000])
def test_open_accepts_no_limit_or_a_whole_limit_of_zero_or_more(limit: int | None) -> None:
    assert Account.open("ann", "Ann", "person", limit).overdraft_limit_minutes == limit


# Effective overdraft limits.


def test_member_without_override_gets_the_bank_default_limit() -> None:
    assert opened().effective_limit(BANK_DEFAULT) == BANK_DEFAULT
    assert opened().effective_limit(7) == 7


@pytest.mark.parametrize("override", [0, 30, 1000])
def test_member_override_replaces_the_bank_default_even_when_zero(override: int) -> None:
    assert opened(limit=override).effective_limit(BANK_DEFAULT) == override


def test_system_account_has_no_limit() -> None:
    assert opened("federation", kind="system").effective_limit(BANK_DEFAULT) is None


# Debits and credits.


def test_debit_may_reach_exactly_minus_the_limit() -> None:
    account = opened()
    debit(account, BANK_DEFAULT)

    assert account.balance_minutes == -BANK_DEFAULT
    (event,) = account.collect_events()
    assert isinstance(event, Account.Debited)
    assert (event.entry_id, event.minutes, event.counterparty) == ("e1", BANK_DEFAULT, "bob")
    assert (event.memo, event.kind) == ("help", "exchange")


def test_debit_one_minute_past_the_limit_is_refused_and_changes_nothing() -> None:
    account = opened()
    before = state(account)

    with pytest.raises(OverdraftLimitExceeded) as refused:
        debit(account, BANK_DEFAULT + 1)

    assert state(account) == before
    assert account.collect_events() == []
    assert refused.value.extra == {
        "member_id": "ann",
        "available_minutes": 0,
        "overdraft_limit_minutes": BANK_DEFAULT,
        "requested_minutes": BANK_DEFAULT + 1,
    }


def test_successive_debits_are_refused_once_they_would_pass_the_limit() -> None:
    account = opened()
    debit(account, BANK_DEFAULT - 20, "e1")
    debit(account, 20, "e2")

    with pytest.raises(OverdraftLimitExceeded):
        debit(account, 1, "e3")
    assert account.balance_minutes == -BANK_DEFAULT


def test_zero_override_refuses_any_debit_from_a_zero_balance() -> None:
    account = opened(limit=0)
    with pytest.raises(OverdraftLimitExceeded):
        debit(account, 1)
    assert account.collect_events() == []


def test_larger_override_allows_debits_past_the_bank_default() -> None:
    account = opened(limit=BANK_DEFAULT * 2)
    debit(account, BANK_DEFAULT * 2)
    assert account.balance_minutes == -BANK_DEFAULT * 2


def test_credit_raises_the_balance_and_what_may_then_be_debited() -> None:
    account = opened()
    account.credit("e1", 60, "bob", "gardening", "exchange")

    (event,) = account.collect_events()
    assert isinstance(event, Account.Credited)
    assert (event.entry_id, event.minutes, event.counterparty) == ("e1", 60, "bob")
    assert account.balance_minutes == 60
    debit(account, 60 + BANK_DEFAULT, "e2")
    assert account.balance_minutes == -BANK_DEFAULT


def test_system_account_may_be_debited_without_bound() -> None:
    account = opened("federation", kind="system")
    debit(account, 10**9)
    assert account.balance_minutes == -(10**9)


@pytest.mark.parametrize("minutes", [0, -1, True, 1.0, "5", None])
@pytest.mark.parametrize("operation", ["debit", "credit", "place_hold"])
def test_postings_refuse_invalid_amounts_and_change_nothing(operation: str, minutes: Any) -> None:
    account = opened()
    before = state(account)
    post: Callable[[], object] = {
        "debit": lambda: debit(account, minutes),
        "credit": lambda: account.credit("e1", minutes, "bob", "", "exchange"),
        "place_hold": lambda: hold(account, "h1", minutes),
    }[operation]
    with pytest.raises(InvalidRequest):
        post()
    assert state(account) == before
    assert account.collect_events() == []


# Amounts and memos.


@pytest.mark.parametrize("minutes", [1, 60, 10**9])
def test_check_amount_returns_whole_positive_minutes(minutes: int) -> None:
    assert check_amount(minutes) == minutes


@pytest.mark.parametrize("minutes", [0, -1, -60, True, False, 1.0, 60.0, Decimal("60"), "60", None])
def test_check_amount_refuses_non_positive_bool_and_non_integer_values(minutes: Any) -> None:
    with pytest.raises(InvalidRequest, match="minutes"):
        check_amount(minutes)


def test_check_amount_accepts_exactly_the_maximum() -> None:
    assert check_amount(6000, maximum=6000) == 6000


def test_check_amount_refuses_one_minute_over_the_maximum_and_names_it() -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_amount(6001, maximum=6000)
    assert refused.value.extra == {"maximum_minutes": 6000}


def test_check_memo_accepts_the_maximum_length_and_refuses_longer() -> None:
    assert check_memo("m" * MAX_MEMO_LENGTH) == "m" * MAX_MEMO_LENGTH
    with pytest.raises(InvalidRequest, match="memo"):
        check_memo("m" * (MAX_MEMO_LENGTH + 1))


# Holds.


def test_placing_a_hold_reduces_available_but_not_posted_balance() -> None:
    account = opened()
    hold(account, "h1", 50)

    assert (account.balance_minutes, account.held_minutes, account.available_minutes) == (
        0,
        50,
        -50,
    )
    assert account.holds["h1"]["minutes"] == 50
    assert account.holds["h1"]["counterparty"] == "federation"
    assert [type(e) for e in account.collect_events()] == [Account.HoldPlaced]


def test_hold_up_to_exactly_the_limit_is_allowed() -> None:
    account = opened()
    hold(account, "h1", BANK_DEFAULT)
    assert account.available_minutes == -BANK_DEFAULT


def test_hold_past_the_limit_is_refused_and_changes_nothing() -> None:
    account = opened()
    before = state(account)
    with pytest.raises(OverdraftLimitExceeded):
        hold(account, "h1", BANK_DEFAULT + 1)
    assert state(account) == before
    assert account.collect_events() == []


def test_open_holds_count_against_the_limit_for_further_holds_and_debits() -> None:
    account = opened()
    hold(account, "h1", BANK_DEFAULT - 20)

    with pytest.raises(OverdraftLimitExceeded):
        hold(account, "h2", 21)
    with pytest.raises(OverdraftLimitExceeded):
        debit(account, 21)
    debit(account, 20)
    assert account.available_minutes == -BANK_DEFAULT


def test_system_account_may_hold_without_bound() -> None:
    account = opened("federation", kind="system")
    account.place_hold("h1", 10**9, "ann", "", "transfer", BANK_DEFAULT)
    assert account.held_minutes == 10**9


def test_duplicate_open_hold_id_is_refused_and_changes_nothing() -> None:
    account = opened()
    hold(account, "h1", 10)
    account.collect_events()
    before = state(account)

    with pytest.raises(HoldExists):
        hold(account, "h1", 10)

    assert state(account) == before
    assert account.collect_events() == []


def test_posting_a_hold_moves_the_held_minutes_to_the_posted_balance() -> None:
    account = opened()
    hold(account, "h1", 50)
    account.collect_events()

    posted = account.post_hold("h1")

    assert posted["minutes"] == 50
    assert posted["counterparty"] == "federation"
    assert (account.balance_minutes, account.held_minutes, account.available_minutes) == (
        -50,
        0,
        -50,
    )
    assert account.holds == {}
    (event,) = account.collect_events()
    assert isinstance(event, Account.HoldPosted)
    assert (event.hold_id, event.minutes, event.counterparty) == ("h1", 50, "federation")


def test_voiding_a_hold_restores_the_available_balance() -> None:
    account = opened()
    hold(account, "h1", 50)
    account.collect_events()

    account.void_hold("h1")

    assert (account.balance_minutes, account.held_minutes, account.available_minutes) == (0, 0, 0)
    assert account.holds == {}
    (event,) = account.collect_events()
    assert isinstance(event, Account.HoldVoided)
    assert (event.hold_id, event.minutes) == ("h1", 50)


def test_ending_one_hold_leaves_the_others_open() -> None:
    account = opened()
    hold(account, "h1", 30)
    hold(account, "h2", 40)

    account.void_hold("h1")

    assert set(account.holds) == {"h2"}
    assert account.held_minutes == 40


@pytest.mark.parametrize("action", ["post_hold", "void_hold"])
def test_ending_an_unknown_hold_is_refused_and_changes_nothing(action: str) -> None:
    account = opened()
    hold(account, "h1", 10)
    account.collect_events()
    before = state(account)

    with pytest.raises(UnknownHold):
        getattr(account, action)("h2")

    assert state(account) == before
    assert account.collect_events() == []


@pytest.mark.parametrize("first", ["post_hold", "void_hold"])
@pytest.mark.parametrize("second", ["post_hold", "void_hold"])
def test_each_hold_ends_exactly_once(first: str, second: str) -> None:
    account = opened()
    hold(account, "h1", 10)
    getattr(account, first)("h1")
    account.collect_events()
    after_first = state(account)

    with pytest.raises(UnknownHold):
        getattr(account, second)("h1")

    assert state(account) == after_first
    assert account.collect_events() == []


# Rebuilding from events.


def replay(events: Sequence[CanMutateAggregate[UUID]]) -> Account:
    account: Account | None = None
    for ev in events:
        account = ev.mutate(account)
    assert isinstance(account, Account)
    return account


def test_replaying_an_accounts_events_rebuilds_the_same_state() -> None:
    account = Account.open("ann", "Ann", "person", 90)
    account.credit("e1", 60, "bob", "", "exchange")
    debit(account, 30, "e2")
    hold(account, "h1", 20)
    hold(account, "h2", 25)
    hold(account, "h3", 5)
    account.post_hold("h1")
    account.void_hold("h2")

    rebuilt = replay(account.collect_events())

    assert rebuilt.id == account.id
    assert (rebuilt.member_id, rebuilt.name, rebuilt.kind) == ("ann", "Ann", "person")
    assert rebuilt.overdraft_limit_minutes == 90
    assert state(rebuilt) == state(account)


def test_rebuilt_account_enforces_the_same_limit_and_open_holds() -> None:
    account = Account.open("ann", "Ann", "person", 50)
    hold(account, "h1", 40)

    rebuilt = replay(account.collect_events())

    with pytest.raises(OverdraftLimitExceeded):
        debit(rebuilt, 11)
    with pytest.raises(HoldExists):
        hold(rebuilt, "h1", 1)
    rebuilt.post_hold("h1")
    assert rebuilt.balance_minutes == -40


@pytest.mark.parametrize("member_id", ["Federation", "SETTLEMENT", "fEdErAtIoN"])
def test_open_refuses_system_ids_in_any_case_for_members(member_id: str) -> None:
    with pytest.raises(InvalidRequest, match="reserved"):
        Account.open(member_id, "Impostor", "person")


def test_only_the_banks_own_accounts_may_be_of_kind_system() -> None:
    with pytest.raises(InvalidRequest, match="kind system"):
        Account.open("treasury", "Treasury", "system")
