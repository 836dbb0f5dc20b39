"""Figure 1: `Ledger.exchange` in process, beside raw eventsourcing saves.

One after another and from 8 threads; the baselines save one small aggregate event per save,
or two aggregates' events in one save (as an exchange writes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.utils import Environment

from services.bench.measure import Figure, Operation, Run, run_threads
from services.bench.stores import BenchStores
from services.common.stores import parse_store_url
from services.ledger.application import Ledger
from services.ledger.domain_terms import DEFAULT_OVERDRAFT_MINUTES

BANK = "bench-ledger"
THREADS = 8
MINUTES = 5
# Untimed operations per thread before each run (first connections, first fsyncs).
WARMUP = 20
# Each thread pays back and forth between a pair of its own, so no balance drifts.
MEMBERS = [f"m{i:02d}" for i in range(2 * THREADS)]

Step = Callable[[str], None]


class Tally(Aggregate):
    """The baseline's aggregate: each change is one small event."""

    def __init__(self) -> None:
        self.count = 0

    @event("Counted")
    def count_one(self) -> None:
        self.count += 1


class RawSaves(Application[UUID]):
    """A plain eventsourcing application, configured only by the settings given (never by
    the process environment, as the project's applications)."""

    def construct_env(self, name: str, env: Mapping[str, str] | None = None) -> Environment:
        return Environment(name, dict(env or {}))


@dataclass
class LedgerFigures:
    figures: list[Figure]
    # The store of the ledger measured: audited afterwards, and replayed for figure 4.
    ledger_url: str
    overdraft_minutes: int
    notes: list[str] = field(default_factory=list)


def measure_ledger(stores: BenchStores, count: int, seconds: float, step: Step) -> LedgerFigures:
    """Figure 1; each run does ``count`` operations (or stops after ``seconds``)."""
    raw_store = parse_store_url(stores.url("raw"))
    raw_store.prepare()
    raw = RawSaves(env=raw_store.env)
    ledger_url = stores.url("ledger")
    ledger = Ledger(
        BANK, parse_store_url(ledger_url), default_overdraft_minutes=DEFAULT_OVERDRAFT_MINUTES
    )
    try:
        for member_id in MEMBERS:
            ledger.open_member(member_id, member_id.upper(), "person")
        step("raw save: 1 aggregate event, sequential")
        raw_one = _run(_raw_worker(raw, 1), 1, count, seconds)
        step("raw save: 2 aggregates' events, sequential")
        raw_two = _run(_raw_worker(raw, 2), 1, count, seconds)
        step("Ledger.exchange, sequential")
        sequential = _run(_exchanges(ledger), 1, count, seconds)
        step(f"raw save: 2 aggregates' events, {THREADS} threads")
        raw_threads = _run(_raw_worker(raw, 2), THREADS, count, seconds)
        step(f"Ledger.exchange, {THREADS} threads")
        threaded = _run(_exchanges(ledger), THREADS, count, seconds)
    finally:
        ledger.close()
        raw.close()
    runs = {
        "raw save, 1 aggregate": raw_one,
        "raw save, 2 aggregates": raw_two,
        "Ledger.exchange sequential": sequential,
        "raw save, 8 threads": raw_threads,
        "Ledger.exchange 8 threads": threaded,
    }
    notes = [note for what, run in runs.items() if (note := run.shortfall(what))]
    return LedgerFigures(
        figures=_figures(raw_one, raw_two, sequential, raw_threads, threaded),
        ledger_url=ledger_url,
        overdraft_minutes=DEFAULT_OVERDRAFT_MINUTES,
        notes=notes,
    )


def _figures(
    raw_one: Run, raw_two: Run, sequential: Run, raw_threads: Run, threaded: Run
) -> list[Figure]:
    name = "Ledger.exchange, sequential"
    return [
        Figure(
            "ledger_exchange_sequential_vs_1_aggregate",
            name,
            sequential.rate,
            "raw save, 1 aggregate event",
            raw_one.rate,
            "exchanges/s",
        ),
        Figure(
            "ledger_exchange_sequential_vs_2_aggregates",
            name,
            sequential.rate,
            "raw save, 2 aggregates in 1 save",
            raw_two.rate,
            "exchanges/s",
        ),
        Figure(
            "ledger_exchange_8_threads",
            f"Ledger.exchange, {THREADS} threads",
            threaded.rate,
            f"raw save, 2 aggregates, {THREADS} threads",
            raw_threads.rate,
            "exchanges/s",
        ),
    ]


def _run(worker: Callable[[int], Operation], threads: int, count: int, seconds: float) -> Run:
    return run_threads(worker, threads=threads, count=count, seconds=seconds, warmup=WARMUP)


def _raw_worker(app: RawSaves, per_save: int) -> Callable[[int], Operation]:
    """Each thread changes aggregates of its own and saves them together, once per call."""

    def worker(_thread: int) -> Operation:
        tallies = [Tally() for _ in range(per_save)]
        app.save(*tallies)

        def save_once(_i: int) -> None:
            for tally in tallies:
                tally.count_one()
            app.save(*tallies)

        return save_once

    return worker


def _exchanges(ledger: Ledger) -> Callable[[int], Operation]:
    """Thread t pays back and forth between members 2t and 2t+1."""

    def worker(thread: int) -> Operation:
        first, second = MEMBERS[2 * thread], MEMBERS[2 * thread + 1]

        def exchange(i: int) -> None:
            payer, payee = (first, second) if i % 2 == 0 else (second, first)
            ledger.exchange(payer, payee, MINUTES, "bench")

        return exchange

    return worker
