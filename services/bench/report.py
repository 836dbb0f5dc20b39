"""What `timebank bench` shows: its progress, a table of figures beside baselines, its JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from services.bench.run import STEPS, BenchResult, Step

INVARIANTS_HELD = "invariants held: yes"
INVARIANTS_BROKEN = "invariants held: no"


@contextmanager
def progress_bar(console: Console) -> Iterator[Step]:
    """A step function for run_bench: each call names the step starting, and counts the one
    before it as done."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=STEPS)
        started = 0

        def step(description: str) -> None:
            nonlocal started
            progress.update(task, completed=min(started, STEPS), description=description)
            started += 1

        yield step
        progress.update(task, completed=STEPS)


def print_report(console: Console, result: BenchResult) -> None:
    mode = "quick" if result.quick else "default counts"
    table = Table(title=f"timebank bench ({mode}): {result.seconds:.0f} s")
    for column in ("figure", "value", "baseline", "baseline value", "ratio", "unit"):
        table.add_column(column, justify="left" if column in ("figure", "baseline") else "right")
    for figure in result.figures:
        table.add_row(
            figure.name,
            _number(figure.value),
            figure.baseline_name,
            _number(figure.baseline),
            f"{figure.ratio:.2f}x",
            figure.unit + ("" if figure.higher_is_better else " (lower is better)"),
        )
    console.print(table)
    console.print(
        f"ratio = figure / baseline, both measured in this run. Store: {escape(result.store)}.",
        highlight=False,
    )
    before = " ".join(f"{x:.2f}" for x in result.load_before)
    after = " ".join(f"{x:.2f}" for x in result.load_after)
    console.print(f"load average (1, 5, 15 min): before {before}; after {after}")
    for note in result.notes:
        console.print(f"- {escape(note)}", style="dim", highlight=False)
    for check in result.checks:
        mark = "[green]ok[/]" if check.held else "[red]FAILED[/]"
        console.print(f"{mark} {escape(check.name)}: {escape(check.detail)}", highlight=False)
    if result.invariants_held:
        console.print(INVARIANTS_HELD, style="bold green")
    else:
        console.print(INVARIANTS_BROKEN, style="bold red")


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def write_json(path: Path, result: BenchResult) -> None:
    path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
