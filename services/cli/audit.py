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
    data_dir: Annotated[Path, typer.Option(help="Where `timebank up` kept the stores.")] = Path(
        "timebank-data"
    ),
    clearing_store: Annotated[
        str | None,
        typer.Option(help="The clearing house's store URL (instead of --config)."),
    ] = None,
    bank: Annotated[
        list[str] | None,
        typer.Option(
            help="A bank's store, as ID=URL (repeat for each bank; with --clearing-store)."
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
    each bank's hash chain. The stores: from --config and --data-dir, or --clearing-store and
    --bank, or else DATA_DIR/federation.json (written by `timebank up` and `timebank demo
    --keep`). Exit 0 if all hold, 1 if any fails, 2 if a store cannot be audited."""
    from services.audit.eventlog import UnusableStore, open_event_log
    from services.audit.federation import audit_federation
    from services.audit.replay import audit_bank
    from services.clearing import APPLICATION_NAME as CLEARING

    stores, limits = _federation_stores(
        config, data_dir, clearing_store, bank or [], overdraft_limit_minutes
    )
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


def _federation_stores(
    config: Path | None,
    data_dir: Path,
    clearing_store: str | None,
    banks: list[str],
    overdraft_limit_minutes: int,
) -> tuple[dict[str, str], dict[str, int]]:
    """Store URLs by name ("clearing" and each bank id), and each bank's default overdraft."""
    if config is not None and clearing_store is not None:
        raise _unusable("give either --config (and --data-dir) or --clearing-store and --bank")
    if config is None and clearing_store is None:
        return _described_stores(data_dir)
    if config is not None:
        from services.local.config import ConfigError, load_config
        from services.local.federation import local_store_url

        try:
            federation = load_config(config)
        except ConfigError as e:
            raise _unusable(str(e)) from None
        stores = {"clearing": local_store_url(data_dir, "clearing")}
        stores |= {b.id: local_store_url(data_dir, b.id) for b in federation.banks}
        return stores, {b.id: b.overdraft_limit_minutes for b in federation.banks}
    stores = {"clearing": clearing_store or ""}
    for item in banks:
        bank_id, _, url = item.partition("=")
        if not bank_id or not url or bank_id == "clearing":
            raise _unusable(f"--bank {item!r}: give it as ID=URL")
        stores[bank_id] = url
    if len(stores) == 1:
        raise _unusable("give each bank's store with --bank ID=URL")
    return stores, dict.fromkeys(stores, overdraft_limit_minutes)


def _described_stores(data_dir: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The stores named in DATA_DIR/federation.json, as `timebank up` and the demo write it."""
    from services.local.federation import DESCRIPTION_FILE, read_description

    path = data_dir / DESCRIPTION_FILE
    try:
        described = read_description(data_dir)
        stores = {"clearing": described["clearing"]["store"]}
        stores |= {bank_id: bank["store"] for bank_id, bank in described["banks"].items()}
        limits = {
            bank_id: int(bank["overdraft_limit_minutes"])
            for bank_id, bank in described["banks"].items()
        }
    except OSError as e:
        raise _unusable(
            f"cannot read {path} ({e.strerror}); give --config or --clearing-store"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _unusable(f"{path} does not describe a federation's stores ({e!r})") from None
    return stores, limits


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
