"""`timebank audit ...`: replay event logs from the command line and print a verdict."""

from __future__ import annotations

import enum
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from services.ledger.application import DEFAULT_OVERDRAFT_MINUTES

if TYPE_CHECKING:
    from rich.console import Console

    from services.audit.eventlog import EventLog
    from services.audit.replay import BankAudit

audit_app = typer.Typer(
    help="Replay event logs from their first event and check every invariant.",
    no_args_is_help=True,
)

EXIT_OK, EXIT_PROBLEMS, EXIT_UNUSABLE, EXIT_INTERRUPTED = 0, 1, 2, 130


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"


def _unusable(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(EXIT_UNUSABLE)


def parse_until(text: str) -> datetime:
    """An ISO 8601 moment; one without a UTC offset is taken as UTC, as the log is stamped."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--until {text!r} is not an ISO 8601 date and time (e.g. 2026-03-01T18:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@audit_app.command("bank")
def audit_bank_command(
    store: Annotated[
        str,
        typer.Option(
            help="The bank's store: sqlite:///relative.db, sqlite:////absolute.db or "
            "postgresql://user@host:5432/db?schema=name. Read only; never created."
        ),
    ],
    until: Annotated[
        str | None,
        typer.Option(
            help="Replay only up to this moment (ISO 8601; UTC unless an offset is given)."
        ),
    ] = None,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="A table for people, or one JSON object.")
    ] = OutputFormat.table,
    overdraft_limit_minutes: Annotated[
        int,
        typer.Option(
            min=0,
            help="The bank's default overdraft limit, as given to `timebank ledger serve` "
            "(the log records only members' own limits).",
        ),
    ] = DEFAULT_OVERDRAFT_MINUTES,
) -> None:
    """Rebuild every balance of one bank from its log's first event and check the ledger's
    rules (the books sum to zero, overdraft limits, holds, cross-bank transfers, the log's own
    sequence). Exit 0 if all hold, 1 if any fails, 2 if the store cannot be audited."""
    from services.audit.eventlog import UnusableStore, open_event_log
    from services.audit.replay import audit_bank

    try:
        cut_off = parse_until(until) if until is not None else None
    except ValueError as e:
        raise _unusable(str(e)) from None
    try:
        log = open_event_log(store)
    except UnusableStore as e:
        raise _unusable(str(e)) from None
    try:
        if sys.stdout.isatty():
            result = _with_progress(log, overdraft_limit_minutes, cut_off)
        else:
            result = audit_bank(
                log, default_overdraft_minutes=overdraft_limit_minutes, until=cut_off
            )
    except UnusableStore as e:
        raise _unusable(str(e)) from None
    except KeyboardInterrupt:
        # Not 1: that would say the log failed a check.
        typer.secho("error: interrupted; nothing was checked to the end", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        log.close()
    if output is OutputFormat.json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        from rich.console import Console

        _print_result(Console(), result, log.description)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_PROBLEMS)


def _with_progress(
    log: EventLog, overdraft_limit_minutes: int, until: datetime | None
) -> BankAudit:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from services.audit.replay import audit_bank

    total = log.max_position()
    # On stderr, so a JSON verdict on stdout stays one clean object.
    with Progress(
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task("replay", total=total or None)

        def advance(events: int, position: int) -> None:
            progress.update(task, completed=min(position, total) if total else events)

        return audit_bank(
            log,
            default_overdraft_minutes=overdraft_limit_minutes,
            until=until,
            on_progress=advance,
        )


def _print_result(console: Console, result: BankAudit, description: str) -> None:
    from rich.table import Table

    title = f"Bank {result.bank or '(unnamed)'}: balances rebuilt from {description}"
    if result.until is not None:
        title += f" up to {result.until.isoformat()}"
    table = Table(title=title)
    for column in ("account", "kind", "posted", "held", "available", "overdraft limit"):
        table.add_column(column, justify="left" if column in ("account", "kind") else "right")
    for member_id, balance in result.balances.items():
        limit = balance.overdraft_limit_minutes
        table.add_row(
            member_id,
            balance.kind,
            str(balance.posted_minutes),
            str(balance.held_minutes),
            str(balance.available_minutes),
            "-" if limit is None else str(limit),
        )
    console.print(table)
    console.print("Amounts in minutes.", style="dim")
    if result.problems:
        problems = Table(title="Problems")
        for column in ("position", "event", "rule", "detail"):
            problems.add_column(column, justify="right" if column == "position" else "left")
        for p in result.problems:
            position = "-" if p.position is None else str(p.position)
            problems.add_row(position, p.event, p.rule, p.detail)
        console.print(problems)
    if result.problems_omitted:
        console.print(f"... and {result.problems_omitted} more problems not listed.")
    console.print(f"chain head at position {result.chain_position}: {result.chain_head}")
    if result.ok:
        console.print(f"OK: {result.events} events replayed; every check holds.", style="green")
    else:
        count = len(result.problems) + result.problems_omitted
        console.print(
            f"FAILED: {result.events} events replayed; {count} problem(s) found.", style="red"
        )
