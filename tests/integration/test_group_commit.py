"""Group commit in the ledger: commands that wait together are decided in arrival order against
the writer's live accounts and saved in one transaction, each with the answer it would have had
alone; a refused or failed command leaves no trace; refusals rest on the store's latest state."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from eventsourcing.domain import Aggregate

from services.common.idempotency import IdempotencyConflict, fingerprint
from services.ledger.application import Ledger
from services.ledger.domain import Account
from services.ledger.domain_terms import EntryKind, OverdraftLimitExceeded, account_id
from services.ledger.views import ExchangeReceipt
from services.ledger.writer import IdempotencyKey, Writer
from tests.conftest import LedgerFactory

LIMIT = 600
WAIT_SECONDS = 10.0


@dataclass
class Batch:
    """Commands started one after another while the writer is held; their answers by place."""

    writer: Writer
    answers: dict[int, Any] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, call: Callable[[], Any]) -> None:
        n = len(self.threads)

        def run() -> None:
            try:
                self.answers[n] = call()
            except Exception as e:
                self.answers[n] = e

        thread = threading.Thread(target=run)
        self.threads.append(thread)
        thread.start()
        deadline = time.monotonic() + WAIT_SECONDS
        # Queued behind the held lock, in this order: the first as the batch's leader.
        while len(self.writer._queue) != n + 1:
            assert time.monotonic() < deadline, "the command never queued"
            time.sleep(0.001)

    def value(self, n: int) -> Any:
        answer = self.answers[n]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def writer_of(ledger: Ledger) -> Writer:
    return ledger._writer


@contextmanager
def one_batch(ledger: Ledger) -> Iterator[Batch]:
    """Commands started inside the block wait, in the order started, until it ends; then
    the writer takes them all as one batch."""
    batch = Batch(writer_of(ledger))
    with batch.writer.lock:
        yield batch
    for thread in batch.threads:
        thread.join(WAIT_SECONDS)


def transactions(ledger: Ledger) -> list[int]:
    """Counts the events of each transaction the ledger saves from now on."""
    saved: list[int] = []
    ledger.save_listeners.append(lambda events: saved.append(len(events)))
    return saved


@pytest.fixture
def ledger(open_ledger: LedgerFactory) -> Ledger:
    ledger = open_ledger(default_overdraft_minutes=LIMIT)
    for member_id in ("maya", "tom", "ali"):
        ledger.open_member(member_id, member_id.title(), "person")
    return ledger


def test_commands_waiting_together_are_saved_in_one_transaction_each_with_its_answer(
    ledger: Ledger,
) -> None:
    saved = transactions(ledger)
    with one_batch(ledger) as batch:
        for n in range(5):
            batch.start(partial(ledger.exchange, "maya", "tom", 10 + n, f"lift {n}"))

    assert saved == [10]  # five exchanges, two events each, one transaction
    receipts = [batch.value(n).value for n in range(5)]
    assert all(isinstance(r, ExchangeReceipt) for r in receipts)
    assert [r.minutes for r in receipts] == [10, 11, 12, 13, 14]
    assert len({r.exchange_id for r in receipts}) == 5
    assert ledger.get_member("maya").balance_minutes == -60
    statement = ledger.statement("tom").entries
    assert [e.memo for e in statement] == [f"lift {n}" for n in range(5)]


def test_a_refused_command_in_a_batch_refuses_alone_and_those_after_it_see_the_state_without_it(
    ledger: Ledger,
) -> None:
    saved = transactions(ledger)
    with one_batch(ledger) as batch:
        batch.start(lambda: ledger.exchange("maya", "tom", 500, "first").value)
        batch.start(lambda: ledger.exchange("maya", "tom", 200, "over the limit").value)
        batch.start(lambda: ledger.exchange("maya", "ali", 100, "just within").value)

    assert batch.value(0).minutes == 500
    with pytest.raises(OverdraftLimitExceeded):
        batch.value(1)
    assert batch.value(2).minutes == 100
    assert saved == [4]
    assert ledger.get_member("maya").balance_minutes == -600
    assert [e.memo for e in ledger.statement("maya").entries] == ["first", "just within"]


def test_a_command_that_fails_after_changing_an_account_leaves_no_trace_in_the_batch(
    ledger: Ledger,
) -> None:
    writer = writer_of(ledger)

    def debit_then_fail() -> tuple[Sequence[Aggregate], None]:
        account = ledger.find(account_id("maya"), Account)
        assert account is not None
        account.debit("half-done", 300, "tom", "never saved", EntryKind.EXCHANGE, LIMIT)
        raise RuntimeError("failed after changing maya's account")

    with one_batch(ledger) as batch:
        batch.start(lambda: ledger.exchange("maya", "tom", 100, "before").value)
        batch.start(lambda: writer.execute(debit_then_fail, None, type(None)))
        batch.start(lambda: ledger.exchange("maya", "tom", 500, "after").value)

    with pytest.raises(RuntimeError, match="failed after changing"):
        batch.value(1)
    # Without the undo, maya would stand at -400 for the third exchange, which is refused.
    assert batch.value(2).minutes == 500
    assert ledger.get_member("maya").balance_minutes == -600
    assert [e.memo for e in ledger.statement("maya").entries] == ["before", "after"]


def test_the_same_idempotency_key_twice_in_one_batch_takes_effect_once(ledger: Ledger) -> None:
    body = {"payer": "maya", "payee": "tom", "minutes": 30, "memo": "repeat"}
    key = IdempotencyKey("k-1", fingerprint("POST /v1/exchanges", body))
    other = IdempotencyKey("k-1", fingerprint("POST /v1/exchanges", {**body, "minutes": 31}))
    with one_batch(ledger) as batch:
        batch.start(lambda: ledger.exchange("maya", "tom", 30, "repeat", idempotency=key))
        batch.start(lambda: ledger.exchange("maya", "tom", 30, "repeat", idempotency=key))
        batch.start(lambda: ledger.exchange("maya", "tom", 31, "repeat", idempotency=other))

    first, second = batch.value(0), batch.value(1)
    assert not first.replayed
    assert second.replayed
    assert second.value == first.value
    with pytest.raises(IdempotencyConflict):
        batch.value(2)
    assert ledger.get_member("maya").balance_minutes == -30


def test_a_refusal_is_decided_again_on_what_another_process_has_since_recorded(
    open_ledger: LedgerFactory,
) -> None:
    here = open_ledger(default_overdraft_minutes=LIMIT)
    here.open_member("maya", "Maya", "person")
    here.open_member("tom", "Tom", "person")
    there = open_ledger(default_overdraft_minutes=LIMIT)

    here.exchange("maya", "tom", 600, "to the limit")  # maya's account now in here's memory
    there.exchange("tom", "maya", 100, "paid back elsewhere")

    # Decided on here's copy alone (-600), this would be refused.
    assert here.exchange("maya", "tom", 50, "within the limit again").value.minutes == 50
    assert there.get_member("maya").balance_minutes == -550


def test_a_save_by_the_bus_handlers_is_seen_by_the_next_command_without_a_lost_race(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.ledger.writer")
    ledger.exchange("maya", "tom", 10, "loads both accounts into the writer's memory")
    # Saved outside the writer, as the handlers of the clearing house's messages do.
    tom: Account = ledger.repository.get(account_id("tom"))
    tom.credit("from-elsewhere", 40, "federation", "a transfer's credit", EntryKind.TRANSFER)
    ledger.save(tom)

    ledger.exchange("tom", "maya", 45, "spends what came in")

    assert ledger.get_member("tom").balance_minutes == 5
    assert not any("lost a race" in r.getMessage() for r in caplog.records)


def test_a_busy_account_is_snapshotted_from_memory_and_reads_back_the_same(
    ledger: Ledger, open_ledger: LedgerFactory
) -> None:
    interval = Ledger.snapshotting_intervals[Account]
    for n in range(interval + 10):
        ledger.exchange("maya", "tom", 1, f"n{n}")

    snapshots = list(ledger.snapshots.get(account_id("maya"), desc=True, limit=1))  # type: ignore[union-attr]
    assert snapshots
    assert snapshots[0].originator_version >= interval
    again = open_ledger(default_overdraft_minutes=LIMIT)
    assert again.get_member("maya") == ledger.get_member("maya")
    assert again.get_member("maya").balance_minutes == -(interval + 10)
