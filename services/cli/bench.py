"""`timebank bench`: this machine's figures beside raw baselines, then an audit of them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import app, fail

EXIT_HELD, EXIT_BROKEN, EXIT_USAGE = 0, 1, 2


@app.command("bench")
def bench_command(
    quick: Annotated[
        bool, typer.Option("--quick", help="Small counts: the whole run takes under a minute.")
    ] = False,
    store: Annotated[
        str | None,
        typer.Option(
            help="Put the ledgers' stores on this PostgreSQL database "
            "(postgresql://user@host:5432/dbname), in fresh schemas dropped afterwards. "
            "Default: SQLite files in a temporary directory."
        ),
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write every figure to this JSON file.")
    ] = None,
) -> None:
    """Measure, in one run, each figure beside a raw baseline measured in the same run:
    Ledger.exchange in process, POST /v1/exchanges and /v1/exchanges/batch over HTTP,
    cross-bank transfers through a local federation, and the audit's replay. Then audit every
    log the run wrote and check the federation's invariants. Exit 0 if they all held, 1 if
    not, 2 for unusable options."""
    from rich.console import Console

    from services.bench.measure import BenchError
    from services.bench.report import print_report, progress_bar, write_json
    from services.bench.run import run_bench
    from services.bench.stores import UnusableStore, check_postgres_url

    if json_file is not None and not json_file.parent.is_dir():
        raise fail(f"--json {json_file}: no directory {json_file.parent}", EXIT_USAGE)
    try:
        postgres_url = check_postgres_url(store) if store is not None else None
    except UnusableStore as e:
        raise fail(str(e), EXIT_USAGE) from None
    console = Console() if Console().is_terminal else Console(width=160)
    try:
        with progress_bar(Console(stderr=True)) as step:
            result = run_bench(quick, postgres_url, step)
    except BenchError as e:
        raise fail(f"the bench could not finish: {e}", EXIT_BROKEN) from None
    print_report(console, result)
    if json_file is not None:
        write_json(json_file, result)
    raise typer.Exit(EXIT_HELD if result.invariants_held else EXIT_BROKEN)
