"""Settlement planning and cycles (services/clearing/settlement.py), with no I/O: the fewest
obligations that square every position, and the rules of a cycle and of the book of cycles."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.clearing.domain_terms import InvalidRequest, ProtocolViolation
from services.clearing.settlement import (
    EXACT_PLAN_MAX_BANKS,
    CycleStatus,
    NotCreditor,
    Obligation,
    SettlementBook,
    SettlementCycle,
    SettlementOpen,
    UnknownObligation,
    plan_obligations,
    settlement_uuid,
)

BOUND = 10**6
CUT_OFF = datetime(2026, 3, 1, 17, 0, tzinfo=UTC)

# Helpers: applying a plan, and the minimum found by brute force, independently of the DP.


def apply_plan(positions: Mapping[str, int], plan: list[Obligation]) -> dict[str, int]:
    """Each bank's position once every obligation is paid: a debtor's rises, a creditor's falls."""
    after = dict(positions)
    for o in plan:
        after[o.debtor] += o.minutes
        after[o.creditor] -= o.minutes
    return after


def set_partitions(items: list[int]) -> Iterator[list[list[int]]]:
    """Every partition of ``items`` into non-empty blocks (Bell(n) of them)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in set_partitions(rest):
        yield [[first], *partition]
        for i in range(len(partition)):
            yield [*partition[:i], [first, *partition[i]], *partition[i + 1 :]]


def brute_force_minimum(positions: Mapping[str, int]) -> int:
    """n minus the most blocks a partition of the n non-zero banks into zero-sum blocks can
    have: a block of k banks needs k-1 obligations, and no plan needs fewer."""
    values = [p for p in positions.values() if p != 0]
    if not values:
        return 0
    most = max(
        len(partition)
        for partition in set_partitions(values)
        if all(sum(block) == 0 for block in partition)
    )
    return len(values) - most


def nonzero(positions: Mapping[str, int]) -> int:
    return sum(1 for p in positions.values() if p != 0)


def assert_sound_plan(positions: Mapping[str, int], plan: list[Obligation]) -> None:
    """The plan squares every bank; each obligation runs from a debtor to a creditor."""
    assert all(v == 0 for v in apply_plan(positions, plan).values()), (positions, plan)
    for o in plan:
        assert o.minutes > 0, o
        assert o.debtor != o.creditor, o
        assert positions[o.debtor] < 0 < positions[o.creditor], (o, positions)


def test_brute_force_minimum_is_itself_right_on_known_cases() -> None:
    # The oracle is only worth trusting if it gets hand-checked answers right.
    assert len(list(set_partitions([1, 2, 3, 4]))) == 15  # Bell(4)
    assert brute_force_minimum({"a": -5, "b": 5, "c": -7, "d": 7}) == 2
    assert brute_force_minimum({"a": -3, "b": 1, "c": 2}) == 2
    assert brute_force_minimum({"a": -1, "b": 1, "c": -1, "d": 1, "e": 0}) == 2
    assert brute_force_minimum({"a": -4, "b": -2, "c": 1, "d": 5}) == 3
    assert brute_force_minimum({"a": 0, "b": 0}) == 0


# Strategies: positions summing to zero, some drawn freely, some made of zero-sum groups so
# that the exact search has groups to find.

bank_names = st.text(alphabet="abcdefghij-", min_size=1, max_size=5)


@st.composite
def free_positions(draw: st.DrawFn, min_banks: int = 2, max_banks: int = 10) -> dict[str, int]:
    n = draw(st.integers(min_banks, max_banks))
    names = draw(st.lists(bank_names, min_size=n, max_size=n, unique=True))
    # A small scale makes equal and cancelling values, and zero positions, common.
    scale = draw(st.sampled_from([3, 20, 1000, BOUND]))
    values = draw(st.lists(st.integers(-scale, scale), min_size=n - 1, max_size=n - 1))
    last = -sum(values)
    assume(abs(last) <= BOUND)
    return dict(zip(names, [*values, last], strict=True))


@st.composite
def grouped_positions(draw: st.DrawFn, max_banks: int = 10) -> dict[str, int]:
    """Zero-sum groups of 1-4 banks each, shuffled together."""
    values: list[int] = []
    while len(values) < 2 or (len(values) < max_banks - 1 and draw(st.booleans())):
        size = draw(st.integers(1, min(3, max_banks - 1 - len(values))))
        group = draw(st.lists(st.integers(-BOUND // 4, BOUND // 4), min_size=size, max_size=size))
        values += [*group, -sum(group)]
    values = draw(st.permutations(values))
    names = draw(st.lists(bank_names, min_size=len(values), max_size=len(values), unique=True))
    return dict(zip(names, values, strict=True))


balanced = st.one_of(free_positions(), grouped_positions())
small_balanced = st.one_of(free_positions(max_banks=7), grouped_positions(max_banks=7))


# plan_obligations: properties.


@settings(max_examples=300, deadline=None)
@given(balanced)
def test_plan_squares_every_position_with_debtors_paying_creditors(
    positions: dict[str, int],
) -> None:
    assert_sound_plan(positions, plan_obligations(positions))


@settings(max_examples=300, deadline=None)
@given(balanced)
def test_plan_needs_at_most_one_fewer_obligation_than_nonzero_banks(
    positions: dict[str, int],
) -> None:
    plan = plan_obligations(positions)
    assert len(plan) <= max(nonzero(positions) - 1, 0)
    # A bank that was square at the cut-off has nothing to pay or receive.
    named = {o.debtor for o in plan} | {o.creditor for o in plan}
    assert named == {b for b, p in positions.items() if p != 0}


@settings(max_examples=300, deadline=None)
@given(small_balanced)
def test_plan_has_exactly_the_brute_force_minimum_of_obligations(
    positions: dict[str, int],
) -> None:
    assume(nonzero(positions) <= 7)
    assert len(plan_obligations(positions)) == brute_force_minimum(positions)


@settings(max_examples=200, deadline=None)
@given(balanced, st.randoms(use_true_random=False))
def test_plan_is_the_same_whatever_the_order_of_the_positions(
    positions: dict[str, int], rng: random.Random
) -> None:
    items = list(positions.items())
    rng.shuffle(items)
    reordered = dict(items)
    assert plan_obligations(reordered) == plan_obligations(positions)
    assert plan_obligations(positions) == plan_obligations(dict(positions))


@settings(max_examples=50, deadline=None)
@given(
    st.integers(EXACT_PLAN_MAX_BANKS + 1, 40).flatmap(
        lambda n: st.lists(st.integers(-BOUND, BOUND), min_size=n - 1, max_size=n - 1)
    )
)
def test_beyond_the_exact_search_the_plan_still_squares_everyone_within_n_minus_1(
    values: list[int],
) -> None:
    positions = {f"bank-{i:02d}": v for i, v in enumerate([*values, -sum(values)])}
    plan = plan_obligations(positions)
    assert_sound_plan(positions, plan)
    assert len(plan) <= nonzero(positions) - 1 or nonzero(positions) == 0


# plan_obligations: examples.


def test_two_banks_settle_with_one_obligation_from_debtor_to_creditor() -> None:
    assert plan_obligations({"gp": -90, "college": 90}) == [Obligation("gp", "college", 90)]


def test_three_banks_one_debtor_two_creditors_need_two_obligations() -> None:
    positions = {"gp": -150, "college": 100, "library": 50}
    plan = plan_obligations(positions)
    assert sorted(plan, key=lambda o: o.creditor) == [
        Obligation("gp", "college", 100),
        Obligation("gp", "library", 50),
    ]


def test_five_banks_with_no_zero_sum_subgroup_need_four_obligations() -> None:
    positions = {"a": -70, "b": -40, "c": 25, "d": 35, "e": 50}
    plan = plan_obligations(positions)
    assert_sound_plan(positions, plan)
    assert len(plan) == 4 == brute_force_minimum(positions)


def test_five_banks_with_a_cancelling_pair_need_three_obligations() -> None:
    positions = {"a": -30, "b": 30, "c": -50, "d": 20, "e": 30}
    plan = plan_obligations(positions)
    assert_sound_plan(positions, plan)
    assert len(plan) == 3


def test_debts_that_go_round_in_a_cycle_net_to_nothing_and_need_no_obligations() -> None:
    # gp owed college 60, college owed library 60, library owed gp 60: all square.
    assert plan_obligations({"gp": 0, "college": 0, "library": 0}) == []
    assert plan_obligations({}) == []


def test_pairs_that_cancel_settle_pairwise_in_two_obligations_not_three() -> None:
    positions = {"a": -5, "b": 5, "c": -7, "d": 7}
    plan = plan_obligations(positions)
    assert sorted(plan, key=lambda o: o.debtor) == [
        Obligation("a", "b", 5),
        Obligation("c", "d", 7),
    ]


def test_six_banks_in_two_zero_sum_groups_settle_in_four_obligations() -> None:
    # Paying the largest creditor first would take five: -6 pays 3, then -4 pays 3, ...
    positions = {"a": -6, "b": -4, "c": 3, "d": 3, "e": 2, "f": 2}
    plan = plan_obligations(positions)
    assert_sound_plan(positions, plan)
    assert len(plan) == brute_force_minimum(positions) == 4
    assert sorted((o.debtor, o.minutes) for o in plan) == [("a", 3), ("a", 3), ("b", 2), ("b", 2)]


# Five zero-sum groups whose equal shares lead largest-debtor-pays-largest-creditor astray:
# it needs 11 obligations for these 14 banks, the exact search 14 - 5 = 9.
GREEDY_TRAP = [-6, 3, 3, -4, 2, 2, -60, 30, 30, -40, 20, 20, -1000, 1000]


def test_up_to_the_exact_limit_the_plan_finds_zero_sum_groups_greedy_pairing_misses() -> None:
    positions = {f"bank-{i:02d}": v for i, v in enumerate(GREEDY_TRAP)}
    assert nonzero(positions) == EXACT_PLAN_MAX_BANKS
    plan = plan_obligations(positions)
    assert_sound_plan(positions, plan)
    assert len(plan) == EXACT_PLAN_MAX_BANKS - 5


def test_more_than_fourteen_banks_still_settle_within_n_minus_1() -> None:
    rng = random.Random(7)
    values = [rng.randint(-BOUND, BOUND) for _ in range(29)]
    positions = {f"bank-{i:02d}": v for i, v in enumerate([*values, -sum(values)])}
    assert nonzero(positions) > EXACT_PLAN_MAX_BANKS
    plan = plan_obligations(positions)
    assert_sound_plan(positions, plan)
    assert len(plan) <= nonzero(positions) - 1


@pytest.mark.parametrize(
    "positions",
    [{"gp": -90, "college": 80}, {"gp": 1}, {"gp": -1, "college": -1}],
)
def test_positions_that_do_not_sum_to_zero_are_refused(positions: dict[str, int]) -> None:
    with pytest.raises(InvalidRequest, match="sum"):
        plan_obligations(positions)


# SettlementCycle.


def opened(positions: Mapping[str, int] | None = None, settlement_id: int = 1) -> SettlementCycle:
    """A cycle whose Opened event is already collected, so only later events pend."""
    cycle = SettlementCycle.open(
        settlement_id, CUT_OFF, positions or {"gp": -150, "college": 100, "library": 50}
    )
    cycle.collect_events()
    return cycle


def numbered(cycle: SettlementCycle) -> list[tuple[int, str, str, int]]:
    return [
        (n, o["debtor"], o["creditor"], o["minutes"])
        for n, o in enumerate(cycle.obligations, start=1)
    ]


def confirm_all(cycle: SettlementCycle) -> None:
    for n, _, creditor, _ in numbered(cycle):
        cycle.confirm(n, creditor, CUT_OFF + timedelta(hours=n))


def test_a_new_cycle_holds_the_cut_off_positions_and_the_planned_obligations() -> None:
    positions = {"gp": -150, "college": 100, "library": 50, "surgery": 0}
    cycle = SettlementCycle.open(4, CUT_OFF, positions)
    assert cycle.id == settlement_uuid(4)
    assert (cycle.settlement_id, cycle.cut_off_at, cycle.positions) == (4, CUT_OFF, positions)
    assert (cycle.status, cycle.completed_at, cycle.confirmed_at) == (CycleStatus.OPEN, None, {})
    planned = [Obligation(o["debtor"], o["creditor"], o["minutes"]) for o in cycle.obligations]
    assert planned == plan_obligations(positions)
    assert [type(e) for e in cycle.collect_events()] == [SettlementCycle.Opened]


def test_a_cycle_cannot_open_on_positions_that_do_not_sum_to_zero() -> None:
    with pytest.raises(InvalidRequest):
        SettlementCycle.open(1, CUT_OFF, {"gp": -10, "college": 5})


def test_settled_minutes_bring_every_cut_off_position_back_to_zero() -> None:
    positions = {"a": -70, "b": -40, "c": 25, "d": 35, "e": 50, "f": 0}
    cycle = opened(positions)
    moves = cycle.settled_minutes()
    assert set(moves) == set(positions)
    assert {b: positions[b] + moves[b] for b in positions} == dict.fromkeys(positions, 0)


@pytest.mark.parametrize("who", ["debtor", "bystander", "stranger"])
def test_only_the_creditor_may_confirm_an_obligation(who: str) -> None:
    cycle = opened({"gp": -90, "college": 90, "library": 0})
    confirmer = {"debtor": "gp", "bystander": "library", "stranger": "nowhere"}[who]
    with pytest.raises(NotCreditor) as raised:
        cycle.confirm(1, confirmer, CUT_OFF)
    assert raised.value.extra == {"creditor": "college"}
    assert cycle.collect_events() == []
    assert cycle.confirmed_at == {}


@pytest.mark.parametrize("number", [0, -1, 3, 99])
def test_confirming_an_obligation_the_cycle_does_not_have_is_refused(number: int) -> None:
    cycle = opened()
    assert len(cycle.obligations) == 2
    with pytest.raises(UnknownObligation):
        cycle.confirm(number, "college", CUT_OFF)
    assert cycle.collect_events() == []


def test_confirming_twice_records_one_event_and_keeps_the_first_time() -> None:
    cycle = opened()
    n, _, creditor, _ = numbered(cycle)[0]
    first, later = CUT_OFF + timedelta(hours=1), CUT_OFF + timedelta(hours=2)
    assert cycle.confirm(n, creditor, first) is True
    assert cycle.confirm(n, creditor, later) is False
    events = cycle.collect_events()
    assert [type(e) for e in events] == [SettlementCycle.ObligationConfirmed]
    assert isinstance(events[0], SettlementCycle.ObligationConfirmed)
    assert (events[0].number, events[0].confirmed_by) == (n, creditor)
    assert cycle.confirmed_at == {n: first}
    assert not cycle.all_confirmed


def test_a_cycle_with_unconfirmed_obligations_cannot_complete() -> None:
    cycle = opened()
    n, _, creditor, _ = numbered(cycle)[0]
    cycle.confirm(n, creditor, CUT_OFF)
    cycle.collect_events()
    with pytest.raises(ProtocolViolation):
        cycle.complete(CUT_OFF)
    assert (cycle.status, cycle.completed_at) == (CycleStatus.OPEN, None)
    assert cycle.collect_events() == []


def test_a_fully_confirmed_cycle_completes_once() -> None:
    cycle = opened()
    confirm_all(cycle)
    assert cycle.all_confirmed
    done = CUT_OFF + timedelta(days=1)
    cycle.complete(done)
    cycle.complete(done + timedelta(hours=1))
    kinds = [type(e) for e in cycle.collect_events()]
    assert kinds == [*[SettlementCycle.ObligationConfirmed] * 2, SettlementCycle.Completed]
    assert (cycle.status, cycle.completed_at) == (CycleStatus.COMPLETED, done)


def test_a_cycle_with_nothing_to_settle_is_all_confirmed_from_the_start() -> None:
    cycle = opened({"gp": 0, "college": 0})
    assert cycle.obligations == []
    assert cycle.all_confirmed
    assert cycle.settled_minutes() == {"gp": 0, "college": 0}


def test_a_cycle_replayed_from_its_events_has_the_same_state() -> None:
    cycle = SettlementCycle.open(2, CUT_OFF, {"gp": -150, "college": 100, "library": 50})
    n, _, creditor, _ = numbered(cycle)[1]
    cycle.confirm(n, creditor, CUT_OFF + timedelta(minutes=5))
    replayed = None
    for e in cycle.collect_events():
        replayed = e.mutate(replayed)
    assert isinstance(replayed, SettlementCycle)
    assert (replayed.positions, replayed.obligations, replayed.confirmed_at) == (
        cycle.positions,
        cycle.obligations,
        {n: CUT_OFF + timedelta(minutes=5)},
    )


# SettlementBook.


def test_the_book_numbers_cycles_from_one_and_refuses_a_second_open_cycle() -> None:
    book = SettlementBook()
    assert book.open_next() == 1
    assert book.open_cycle == 1
    book.collect_events()
    with pytest.raises(SettlementOpen) as raised:
        book.open_next()
    assert raised.value.extra == {"settlement_id": 1}
    assert book.collect_events() == []
    assert (book.count, book.open_cycle) == (1, 1)


def test_the_book_opens_the_next_cycle_once_the_open_one_is_closed() -> None:
    book = SettlementBook()
    book.open_next()
    book.close(2)  # not the open cycle: changes nothing
    with pytest.raises(SettlementOpen):
        book.open_next()
    book.close(1)
    closed = (book.count, book.open_cycle)
    assert closed == (1, None)
    assert book.open_next() == 2
    assert (book.count, book.open_cycle) == (2, 2)
    kinds = [type(e) for e in book.collect_events()]
    assert kinds == [
        SettlementBook.Started,
        SettlementBook.CycleOpened,
        SettlementBook.CycleClosed,
        SettlementBook.CycleOpened,
    ]
