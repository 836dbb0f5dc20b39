"""Concurrent commands through one and through two Ledger instances on the same store."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypedDict, TypeVar

import pytest

from services.common.idempotency import fingerprint
from services.ledger.application import Ledger
from services.ledger.domain_terms import (
    MemberExists,
    OverdraftLimitExceeded,
    account_id,
)
from services.ledger.views import (
    ExchangeReceipt,
    MemberView,
)
from services.ledger.writer import (
    IdempotencyKey,
    StoreBusy,
)

T = TypeVar("T")
LedgerFactory = Callable[..., Ledger]


class ExchangeBody(TypedDict):
    """The body of POST /v1/exchanges, as Ledger.exchange takes it by keyword."""

    payer: str
    payee: str
    minutes: int
    memo: str


JOIN_TIMEOUT_SECONDS = 30.0
# StoreBusy promises nothing was written and invites a retry; a real client would retry.
BUSY_RETRIES = 5
MEMBERS = ("maya", "tom", "ali")
# Small next to the amounts below, so the limit refuses some exchanges.
LIMIT = 60
THREADS = 8
EXCHANGES_PER_THREAD = 40

Outcome = tuple[list[ExchangeReceipt], int]


def run_concurrently(jobs: Sequence[Callable[[], T]]) -> list[T]:
    """Start every job together, wait a bounded time for all, and re-raise the first failure."""
    barrier = threading.Barrier(len(jobs))
    results: dict[int, T] = {}
    errors: list[BaseException] = []

    def run(index: int, job: Callable[[], T]) -> None:
        try:
            barrier.wait(JOIN_TIMEOUT_SECONDS)
            results[index] = job()
        except BaseException as e:  # handed to the test's thread below
            errors.append(e)

    # Daemon threads, so a hung command fails this test instead of hanging the run.
    threads = [
        threading.Thread(target=run, args=(i, job), daemon=True) for i, job in enumerate(jobs)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert not stuck, f"still running after {JOIN_TIMEOUT_SECONDS}s: {stuck}"
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(jobs))]


def retry_when_busy(command: Callable[[], T]) -> T:
    for _ in range(BUSY_RETRIES - 1):
        try:
            return command()
        except StoreBusy:
            continue
    return command()


def open_members(ledger: Ledger, limit: int = LIMIT) -> None:
    for member_id in MEMBERS:
        ledger.open_member(member_id, member_id.title(), "person", overdraft_limit_minutes=limit)


def random_exchanges(ledger: Ledger, seed: int) -> Outcome:
    """Exchanges between random pairs in both directions; returns (accepted, refused count)."""
    rng = random.Random(seed)
    accepted: list[ExchangeReceipt] = []
    refused = 0
    for n in range(EXCHANGES_PER_THREAD):
        payer, payee = rng.sample(MEMBERS, 2)
        command = partial(ledger.exchange, payer, payee, rng.randint(5, 45), f"job {seed}.{n}")
        try:
            accepted.append(retry_when_busy(command).value)
        except OverdraftLimitExceeded:
            refused += 1
    return accepted, refused


def combine(outcomes: list[Outcome]) -> Outcome:
    accepted = [receipt for receipts, _ in outcomes for receipt in receipts]
    return accepted, sum(refused for _, refused in outcomes)


def assert_ledger_holds_exactly(ledger: Ledger, accepted: list[ExchangeReceipt]) -> None:
    """Balances, statements and the bank total are exactly what the accepted exchanges say."""
    assert len({r.exchange_id for r in accepted}) == len(accepted)
    expected_balance: Counter[str] = Counter()
    for r in accepted:
        expected_balance[r.payer] -= r.minutes
        expected_balance[r.payee] += r.minutes
    for member_id in MEMBERS:
        view = ledger.get_member(member_id)
        assert view.balance_minutes == expected_balance[member_id], member_id
        statement = ledger.statement(member_id)
        expected_entries = sorted(
            [(r.exchange_id, -r.minutes, r.payee) for r in accepted if r.payer == member_id]
            + [(r.exchange_id, r.minutes, r.payer) for r in accepted if r.payee == member_id]
        )
        assert sorted((e.entry_id, e.minutes, e.counterparty) for e in statement.entries) == (
            expected_entries
        )
        # Entries are in decision order: at no moment may the account have been over the limit.
        running = 0
        for entry in statement.entries:
            running += entry.minutes
            assert running >= -LIMIT, f"{member_id} went to {running} minutes"
    summary = ledger.summary()
    assert summary.total_posted_minutes == 0
    assert summary.members == len(MEMBERS)


def test_exchanges_from_many_threads_on_one_instance_lose_no_update_and_keep_limits(
    open_ledger: LedgerFactory,
) -> None:
    ledger = open_ledger()
    open_members(ledger)

    accepted, refused = combine(
        run_concurrently([partial(random_exchanges, ledger, seed) for seed in range(THREADS)])
    )

    assert accepted
    assert refused > 0, "the limits were meant to refuse some exchanges"
    assert len(accepted) + refused == THREADS * EXCHANGES_PER_THREAD
    assert_ledger_holds_exactly(ledger, accepted)


def test_exchanges_from_two_instances_on_one_store_lose_no_update_and_keep_limits(
    open_ledger: LedgerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.ledger.writer")
    first, second = open_ledger(), open_ledger()
    open_members(first)
    instances = (first, second)

    accepted, refused = combine(
        run_concurrently(
            [partial(random_exchanges, instances[seed % 2], seed) for seed in range(THREADS)]
        )
    )

    assert accepted
    assert refused > 0, "the limits were meant to refuse some exchanges"
    assert len(accepted) + refused == THREADS * EXCHANGES_PER_THREAD
    # The point of this test: saves really did collide and were decided again.
    assert any("lost a race" in record.getMessage() for record in caplog.records)
    assert_ledger_holds_exactly(open_ledger(), accepted)


def test_same_idempotency_key_from_threads_on_two_instances_takes_effect_once(
    open_ledger: LedgerFactory,
) -> None:
    first, second = open_ledger(), open_ledger()
    open_members(first)
    body: ExchangeBody = {"payer": "maya", "payee": "tom", "minutes": 30, "memo": "gardening"}
    key = IdempotencyKey("retry-1", fingerprint("POST /v1/exchanges", body))

    results = run_concurrently(
        [
            partial(retry_when_busy, partial(ledger.exchange, **body, idempotency=key))
            for ledger in (first, second) * 4
        ]
    )

    assert [r.replayed for r in results].count(False) == 1
    assert len({r.value.exchange_id for r in results}) == 1
    assert all(r.value == results[0].value for r in results)
    fresh = open_ledger()
    assert fresh.get_member("maya").balance_minutes == -30
    assert fresh.get_member("tom").balance_minutes == 30
    assert [e.entry_id for e in fresh.statement("maya").entries] == [results[0].value.exchange_id]


def test_opening_the_same_member_from_two_instances_at_once_succeeds_once(
    open_ledger: LedgerFactory,
) -> None:
    first, second = open_ledger(), open_ledger()

    def attempt(ledger: Ledger) -> MemberView | MemberExists:
        try:
            command = partial(ledger.open_member, "maya", "Maya Okafor", "person")
            return retry_when_busy(command).value
        except MemberExists as refused:
            return refused

    results = run_concurrently([partial(attempt, ledger) for ledger in (first, second) * 2])

    opened = [r for r in results if isinstance(r, MemberView)]
    assert len(opened) == 1
    assert sum(isinstance(r, MemberExists) for r in results) == len(results) - 1
    fresh = open_ledger()
    assert fresh.summary().members == 1
    events = list(fresh.events.get(account_id("maya")))
    assert len(events) == 1


def test_concurrent_holds_never_take_available_below_minus_the_limit(
    open_ledger: LedgerFactory,
) -> None:
    first, second = open_ledger(), open_ledger()
    limit, hold_minutes, holds_per_thread = 200, 25, 4
    open_members(first, limit=limit)

    def place_holds(ledger: Ledger, thread: int) -> list[int]:
        accepted = []
        for n in range(holds_per_thread):
            command = partial(
                ledger.place_hold, "maya", f"hold-{thread}-{n}", hold_minutes, "tom", "ride"
            )
            try:
                retry_when_busy(command)
            except OverdraftLimitExceeded:
                continue
            accepted.append(hold_minutes)
        return accepted

    results = run_concurrently(
        [partial(place_holds, (first, second)[t % 2], t) for t in range(THREADS)]
    )

    held = sum(sum(accepted) for accepted in results)
    assert THREADS * holds_per_thread * hold_minutes > limit, "more must be asked than fits"
    # Only refusing what does not fit: the holds fill the limit as far as whole holds can.
    assert held == limit // hold_minutes * hold_minutes
    view = open_ledger().get_member("maya")
    assert view.held_minutes == held
    assert view.available_minutes == -held
    assert view.balance_minutes == 0


def rotating_exchanges(ledger: Ledger, done: threading.Event) -> None:
    """maya pays tom, tom pays ali, ali pays maya, and round again: never near a limit."""
    try:
        for n in range(150):
            payer, payee = MEMBERS[n % 3], MEMBERS[(n + 1) % 3]
            retry_when_busy(partial(ledger.exchange, payer, payee, 5, f"round {n}"))
    finally:
        done.set()


def summary_totals_until(ledger: Ledger, done: threading.Event) -> list[int]:
    totals: list[int] = []
    while not done.is_set() and len(totals) < 5000:
        totals.append(ledger.summary().total_posted_minutes)
    return totals


def test_summary_read_during_exchanges_on_the_same_instance_always_totals_zero(
    open_ledger: LedgerFactory,
) -> None:
    ledger = open_ledger()
    open_members(ledger)
    done = threading.Event()

    jobs: list[Callable[[], list[int] | None]] = [
        partial(rotating_exchanges, ledger, done),
        partial(summary_totals_until, ledger, done),
    ]
    _, totals = run_concurrently(jobs)

    assert totals
    assert set(totals) == {0}


def test_summary_read_during_exchanges_on_another_instance_always_totals_zero(
    open_ledger: LedgerFactory,
) -> None:
    writer, reader = open_ledger(), open_ledger()
    open_members(writer)
    done = threading.Event()

    jobs: list[Callable[[], list[int] | None]] = [
        partial(rotating_exchanges, writer, done),
        partial(summary_totals_until, reader, done),
    ]
    _, totals = run_concurrently(jobs)

    assert totals
    assert set(totals) == {0}
