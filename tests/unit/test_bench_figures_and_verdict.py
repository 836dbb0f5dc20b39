"""The bench's arithmetic and its verdict: ratios and percentiles, and an exit status that says
whether every invariant held (no figure is judged against a threshold)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from typer.testing import CliRunner

from services.bench import run
from services.bench.federation import transfer_credits
from services.bench.http import BATCH_CLIENTS, BATCH_ITEMS, Batches, batch_items, goal_note
from services.bench.invariants import Check, all_held, api_check
from services.bench.measure import Figure, Run, percentile, shares
from services.cli import app


def test_a_figures_ratio_is_its_value_over_its_baseline() -> None:
    figure = Figure("k", "exchange", 300.0, "raw save", 1200.0, "exchanges/s")
    assert figure.ratio == 0.25
    assert figure.to_json()["ratio"] == 0.25
    assert Figure("k", "x", 1.0, "y", 0.0, "/s").ratio == 0.0


def test_percentiles_are_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0
    assert percentile([], 50) == 0.0


def test_operations_are_shared_out_to_the_last_one() -> None:
    assert shares(10, 4) == [3, 3, 2, 2]
    assert sum(shares(1_000, 8)) == 1_000


def test_the_batch_rate_counts_the_items_stored_not_the_requests() -> None:
    batches = Batches(Run(planned=3, seconds=2.0, latencies=[0.5, 0.5, 0.5]), items=2_500)
    assert batches.rate == 1_250.0
    assert Batches(Run(planned=3), items=0).rate == 0.0


def test_the_batch_goal_is_said_met_only_at_10000_exchanges_per_second() -> None:
    assert "goal" in goal_note(10_000.0)
    assert ": met (10,000 exchanges/s" in goal_note(10_000.0)
    assert "NOT met (9,999 exchanges/s" in goal_note(9_999.0)


def test_each_batch_client_pays_around_its_own_ring_so_no_balance_drifts() -> None:
    rings = []
    for client in range(BATCH_CLIENTS):
        items = batch_items(client)
        assert len(items) == BATCH_ITEMS <= 1_000
        paid = Counter(item["payer"] for item in items)
        earned = Counter(item["payee"] for item in items)
        assert paid == earned
        assert all(item["payer"] != item["payee"] for item in items)
        rings.append(set(paid))
    assert not set.intersection(*rings)


def test_a_transfers_latency_ends_when_its_credit_was_posted_at_the_payee() -> None:
    statement = {
        "entries": [
            {"entry_id": "t1", "kind": "transfer", "minutes": 1, "at": "2026-01-01T00:00:01+00:00"},
            {"entry_id": "t2", "kind": "transfer", "minutes": -1, "at": "2026-01-01T00:00:02Z"},
            {"entry_id": "x1", "kind": "exchange", "minutes": 5, "at": "2026-01-01T00:00:03Z"},
            {"entry_id": "t3", "kind": "transfer", "minutes": 2, "at": "2026-01-01T00:00:04"},
        ]
    }
    epoch = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    assert transfer_credits(statement) == {"t1": epoch + 1, "t3": epoch + 4}


def test_no_checks_at_all_is_not_invariants_held() -> None:
    assert not all_held([])
    assert all_held([Check("a", True, "")])
    assert not all_held([Check("a", True, ""), Check("b", False, "")])


def test_broken_federation_invariants_from_the_apis_are_a_check_that_did_not_hold() -> None:
    broken = api_check("federation", ["3: positions sum to 5, not 0"], "9 transfers")
    assert not broken.held
    assert "positions sum to 5" in broken.detail
    assert api_check("federation", [], "9 transfers").held


def fake_result(held: bool) -> run.BenchResult:
    return run.BenchResult(
        quick=True,
        store="SQLite",
        figures=[Figure("k", "exchange", 300.0, "raw save", 1200.0, "exchanges/s")],
        checks=[Check("bank audit: bench-ledger", held, "detail")],
        notes=[],
        load_before=(0.5, 0.5, 0.5),
        load_after=(1.0, 0.6, 0.5),
        seconds=1.0,
    )


@pytest.mark.parametrize(("held", "code", "line"), [(True, 0, "held: yes"), (False, 1, "held: no")])
def test_the_exit_status_says_whether_every_invariant_held(
    monkeypatch: pytest.MonkeyPatch, held: bool, code: int, line: str
) -> None:
    def fake_run(quick: bool, postgres_url: str | None, step: Any) -> run.BenchResult:
        step("measuring")
        return fake_result(held)

    monkeypatch.setattr(run, "run_bench", fake_run)
    result = CliRunner().invoke(app, ["bench", "--quick"])
    assert result.exit_code == code, result.output
    assert f"invariants {line}" in result.output


@pytest.mark.parametrize(
    "store",
    [
        "sqlite:///bench.db",
        "memory://",
        "postgresql://postgres@127.0.0.1:5432/test?schema=mine",
        "nonsense",
    ],
)
def test_an_unusable_store_is_bad_usage(monkeypatch: pytest.MonkeyPatch, store: str) -> None:
    def never(*args: Any) -> run.BenchResult:
        raise AssertionError("nothing may be measured with an unusable --store")

    monkeypatch.setattr(run, "run_bench", never)
    result = CliRunner().invoke(app, ["bench", "--quick", "--store", store])
    assert result.exit_code == 2, result.output
