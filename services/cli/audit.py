"""`timebank audit ...`: replay event logs from the command line and print a verdict."""

from __future__ import annotations

import enum
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from services.cli.common import app
from services.ledger.domain_terms import (
    DEFAULT_OVERDRAFT_MINUTES,
    FEDERATION_ACCOUNT,
)

if TYPE_CHECKING:
    from rich.console import Console

    from services.audit.eventlog import EventLog
    from services.audit.federation import FederationAudit
    from services.audit.findings import BankAudit
    from services.audit.replay import Observer

audit_app = typer.Typer(
    help="Replay event logs from their first event and check every invariant.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")

EXIT_OK, EXIT_PROBLEMS, EXIT_UNUSABLE, EXIT_INTERRUPTED = 0, 1, 2, 130


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"


FormatOption = Annotated[
    OutputFormat, typer.Option("--format", help="A table for people, or one JSON object.")
]


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
    output: FormatOption = OutputFormat.table,
    overdraft_limit_minutes: Annotated[
        int,
        typer.Option(
            min=0,
            help="The bank's default overdraft limit until its log records one (the ledger "
            "records it at start; older logs do not have it).",
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
    log: EventLog,
    overdraft_limit_minutes: int,
    until: datetime | None,
    observe: Observer | None = None,
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
            observe=observe,
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


@audit_app.command("federation")
def audit_federation_command(
    config: Annotated[
        Path | None,
        typer.Option(help="The federation file `timebank up` ran (federation.toml)."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where `timebank up` kept the stores. Default: timebank-data."),
    ] = None,
    clearing_store: Annotated[
        str | None,
        typer.Option(
            help="The clearing house's store URL: with --bank, the stores to audit; with "
            "--data-dir or --config, in place of the one named there."
        ),
    ] = None,
    bank: Annotated[
        list[str] | None,
        typer.Option(
            help="A bank's store, as ID=URL (repeat for each bank): with --clearing-store "
            "alone, every bank's; with --data-dir or --config, in place of that bank's store "
            "there (a bank run on another host needs one)."
        ),
    ] = None,
    output: FormatOption = OutputFormat.table,
    overdraft_limit_minutes: Annotated[
        int,
        typer.Option(min=0, help="The banks' default overdraft limit until their logs record one."),
    ] = DEFAULT_OVERDRAFT_MINUTES,
) -> None:
    """Replay the clearing house's log and every bank's from their first events, check each
    bank's rules, then cross-check them: invariants 2, 3 and 4 and every signed checkpoint of
    each bank's hash chain. The stores: from --config and --data-dir, or from
    DATA_DIR/federation.json (written by `timebank up` and `timebank demo --keep`), where
    --clearing-store and --bank replace the stores they name; or, without --data-dir and
    --config, exactly --clearing-store and each --bank. Exit 0 if all hold, 1 if any fails, 2
    if a store cannot be audited."""
    from services.audit.eventlog import UnusableStore, open_event_log
    from services.audit.federation import audit_federation
    from services.audit.replay import audit_bank
    from services.clearing import APPLICATION_NAME as CLEARING
    from services.cli.audit_stores import StoresError, federation_stores

    only_given = clearing_store is not None and data_dir is None and config is None
    data_dir = data_dir or Path("timebank-data")
    try:
        stores, limits = federation_stores(
            config, None if only_given else data_dir, clearing_store, bank or []
        )
    except StoresError as e:
        raise _unusable(str(e)) from None
    limits = {bank_id: limits.get(bank_id, overdraft_limit_minutes) for bank_id in stores}
    logs: dict[str, EventLog] = {}
    try:
        clearing_log = open_event_log(stores.pop("clearing"), application=CLEARING)
        logs["clearing"] = clearing_log
        bank_logs = {bank_id: open_event_log(url) for bank_id, url in stores.items()}
        logs.update(bank_logs)
        tty = sys.stdout.isatty()
        result = audit_federation(
            clearing_log,
            bank_logs,
            lambda bank_id, log, observe: (
                _with_progress(log, limits[bank_id], None, observe)
                if tty
                else audit_bank(log, default_overdraft_minutes=limits[bank_id], observe=observe)
            ),
        )
    except UnusableStore as e:
        raise _unusable(str(e)) from None
    finally:
        for log in logs.values():
            log.close()
    if output is OutputFormat.json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        from rich.console import Console

        _print_federation(Console(), result)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_PROBLEMS)


def _print_federation(console: Console, result: FederationAudit) -> None:
    from rich.table import Table

    table = Table(title="Banks, replayed from their logs")
    for column in ("bank", "events", "federation account", "position", "checkpoints", "own checks"):
        table.add_column(column, justify="left" if column in ("bank", "own checks") else "right")
    for bank_id, audit in result.banks.items():
        federation = audit.balances.get(FEDERATION_ACCOUNT)
        table.add_row(
            bank_id,
            str(audit.events),
            "-" if federation is None else str(federation.posted_minutes),
            str(result.positions.get(bank_id, "-")),
            str(result.checkpoints.get(bank_id, 0)),
            "ok" if audit.ok else f"{len(audit.problems) + audit.problems_omitted} problem(s)",
        )
    console.print(table)
    console.print(f"Clearing house: {result.clearing_events} events replayed.", style="dim")
    problems = [(bank_id, p) for bank_id, audit in result.banks.items() for p in audit.problems] + [
        ("federation", p) for p in result.problems
    ]
    if problems:
        listing = Table(title="Problems")
        for column in ("log", "position", "event", "rule", "detail"):
            listing.add_column(column, justify="right" if column == "position" else "left")
        for where, p in problems:
            position = "-" if p.position is None else str(p.position)
            listing.add_row(where, position, p.event, p.rule, p.detail)
        console.print(listing)
    if result.ok:
        console.print(
            "OK: every bank's rules, invariants 2-4 and every checkpoint hold.", style="green"
        )
    else:
        console.print(f"FAILED: {len(problems)} problem(s) found.", style="red")
