"""`timebank bench --quick` end to end: the installed command measures every figure beside its
baseline, writes them as JSON, audits what it wrote and says the invariants held."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import TIMEBANK

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Every figure the bench reports, each beside a baseline measured in the same run.
FIGURES = {
    "ledger_exchange_sequential_vs_1_aggregate",
    "ledger_exchange_sequential_vs_2_aggregates",
    "ledger_exchange_8_threads",
    "http_exchanges_rate",
    "http_exchanges_p50",
    "http_exchanges_p99",
    "http_batch_exchanges_rate",
    "federation_transfers_rate",
    "federation_transfer_p50",
    "federation_transfer_p99",
    "federation_batch_rate",
    "federation_paced_p50",
    "federation_paced_p99",
    "audit_replay_rate",
    "audit_replay_peak_rss",
}


def test_a_quick_bench_measures_every_figure_beside_its_baseline_and_the_invariants_hold(
    tmp_path: Path,
) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [str(TIMEBANK), "bench", "--quick", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "invariants held: yes" in done.stdout
    report: dict[str, Any] = json.loads(out.read_text())
    figures = {figure["key"]: figure for figure in report["figures"]}
    assert set(figures) == FIGURES
    for key, figure in figures.items():
        assert figure["value"] > 0, key
        assert figure["baseline"] > 0, key
        assert figure["ratio"] == pytest.approx(figure["value"] / figure["baseline"]), key
        assert figure["unit"], key
        assert figure["baseline_figure"], key
    assert report["invariants"]["held"] is True
    assert report["invariants"]["checks"]
    assert all(check["held"] for check in report["invariants"]["checks"])
    assert len(report["load_average"]["before"]) == len(report["load_average"]["after"]) == 3
    # Everything it wrote was in a temporary directory, removed afterwards.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]
