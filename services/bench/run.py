"""One bench run: every figure beside its baseline, then every log it wrote audited."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.bench.audit import measure_audit
from services.bench.federation import measure_federation
from services.bench.http import measure_http
from services.bench.invariants import Check, all_held, audit_bank_store
from services.bench.ledger import measure_ledger
from services.bench.measure import Figure
from services.bench.stores import BenchStores

Step = Callable[[str], None]
# The steps a run announces, for its progress bar: figure 1's five runs, figure 2's three
# loads, figure 3's eight stages, figure 4's two children, the ledgers' audits.
STEPS = 5 + 3 + 8 + 2 + 1
LEDGER_STORE = "ledger"
JSON_VERSION = 1


@dataclass(frozen=True)
class Counts:
    """How much each load does; every loop also stops after ``seconds``."""

    exchanges: int
    requests: int
    # Batch requests of 1,000 exchanges each.
    batches: int
    transfers: int
    paced_transfers: int
    # Transfers by POST /v1/transfers/batch, 200 to a request.
    batched_transfers: int
    round_trips: int
    seconds: float


# Under a minute in all on a 2-core machine (CI runs it), and a few minutes.
QUICK = Counts(
    exchanges=1_000,
    requests=600,
    batches=6,
    transfers=96,
    paced_transfers=48,
    batched_transfers=600,
    round_trips=500,
    seconds=15,
)
DEFAULT = Counts(
    exchanges=10_000,
    requests=4_000,
    batches=30,
    transfers=960,
    paced_transfers=480,
    batched_transfers=6_000,
    round_trips=5_000,
    seconds=120,
)


@dataclass(frozen=True)
class BenchResult:
    quick: bool
    store: str
    figures: list[Figure]
    checks: list[Check]
    notes: list[str]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    seconds: float

    @property
    def invariants_held(self) -> bool:
        return all_held(self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": JSON_VERSION,
            "quick": self.quick,
            "store": self.store,
            "seconds": self.seconds,
            "cpus": os.cpu_count(),
            "load_average": {"before": list(self.load_before), "after": list(self.load_after)},
            "figures": [figure.to_json() for figure in self.figures],
            "invariants": {
                "held": self.invariants_held,
                "checks": [check.to_json() for check in self.checks],
            },
            "notes": self.notes,
        }


def run_bench(quick: bool, postgres_url: str | None, step: Step) -> BenchResult:
    """Measure everything once, in a temporary directory (and fresh PostgreSQL schemas when
    ``postgres_url`` is given), all removed afterwards."""
    counts = QUICK if quick else DEFAULT
    with tempfile.TemporaryDirectory(prefix="timebank-bench-") as work:
        stores = BenchStores(Path(work), postgres_url)
        try:
            return _measure(quick, counts, stores, Path(work), step)
        finally:
            stores.drop()


def _measure(
    quick: bool, counts: Counts, stores: BenchStores, work: Path, step: Step
) -> BenchResult:
    load_before = os.getloadavg()
    began = time.perf_counter()
    ledger = measure_ledger(stores, counts.exchanges, counts.seconds, step)
    http = measure_http(stores, work, counts.requests, counts.batches, counts.seconds, step)
    federation = measure_federation(
        work / "federation",
        counts.transfers,
        counts.paced_transfers,
        counts.batched_transfers,
        counts.round_trips,
        counts.seconds,
        step,
    )
    audit = measure_audit(stores, LEDGER_STORE, ledger.ledger_url, ledger.overdraft_minutes, step)
    step("invariants: auditing the ledgers' logs")
    checks = [
        audit_bank_store("Ledger.exchange's bank", ledger.ledger_url, ledger.overdraft_minutes),
        audit_bank_store("the served bank", http.ledger_url, http.overdraft_minutes),
        *federation.checks,
    ]
    load_after = os.getloadavg()
    return BenchResult(
        quick=quick,
        store=f"{stores.describe()}; the federation on SQLite files, as `timebank up` runs it",
        figures=[*ledger.figures, *http.figures, *federation.figures, *audit.figures],
        checks=checks,
        notes=[*ledger.notes, *http.notes, *federation.notes, *audit.notes],
        load_before=load_before,
        load_after=load_after,
        seconds=time.perf_counter() - began,
    )
