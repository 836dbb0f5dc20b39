"""The `timebank` command: run a bank's ledger (later: the clearing house, the demo, audits)."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Annotated

import typer

from services.ledger.application import DEFAULT_MAX_EXCHANGE_MINUTES, DEFAULT_OVERDRAFT_MINUTES

app = typer.Typer(
    help="timebank-federation: linked time banks, one event-sourced ledger each.",
    no_args_is_help=True,
    add_completion=False,
)
ledger_app = typer.Typer(help="Run and inspect one bank's ledger service.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@ledger_app.command("serve")
def ledger_serve(
    bank: Annotated[str, typer.Option(help="This bank's id, e.g. rushey-green.")],
    store: Annotated[
        str | None,
        typer.Option(
            help="sqlite:///path.db (relative), sqlite:////abs/path.db, or "
            "postgresql://user@host:5432/db?schema=name. Default: "
            "sqlite:///timebank-data/<bank>.db under the current directory."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    overdraft_limit_minutes: Annotated[
        int, typer.Option(help="The bank's default overdraft limit per member.")
    ] = DEFAULT_OVERDRAFT_MINUTES,
    max_exchange_minutes: Annotated[
        int, typer.Option(help="The largest single exchange accepted.")
    ] = DEFAULT_MAX_EXCHANGE_MINUTES,
    nats_url: Annotated[
        str | None,
        typer.Option(
            help="The federation's NATS server, e.g. nats://127.0.0.1:4222. "
            "Without it the bank runs alone (local exchanges only)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve one bank's ledger over HTTP. Tokens come from TIMEBANK_OPERATOR_TOKEN
    (required) and TIMEBANK_AUDITOR_TOKEN (optional, read-only)."""
    import uvicorn

    from services.common.stores import parse_store_url
    from services.ledger.api import create_app
    from services.ledger.application import Ledger
    from services.ledger.settings import LedgerSettings, SettingsError

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = LedgerSettings.build(
            os.environ,
            bank_id=bank,
            store_url=store,
            default_overdraft_minutes=overdraft_limit_minutes,
            max_exchange_minutes=max_exchange_minutes,
            nats_url=nats_url,
        )
    except SettingsError as e:
        raise fail(str(e)) from None
    store_ = parse_store_url(settings.store_url)
    try:
        ledger = Ledger(
            settings.bank_id,
            store_,
            default_overdraft_minutes=settings.default_overdraft_minutes,
            max_exchange_minutes=settings.max_exchange_minutes,
        )
    except Exception as e:
        raise fail(f"cannot open the store ({store_.description}): {e}") from None
    typer.echo(f"bank {settings.bank_id}: store {store_.description}; http://{host}:{port}")
    try:
        with exit_cleanly_on_signals():
            uvicorn.run(create_app(settings, ledger), host=host, port=port, log_level=log_level)
    finally:
        ledger.close()


@contextmanager
def exit_cleanly_on_signals() -> Iterator[None]:
    """Make SIGTERM and Ctrl-C end the process with status 0 once the server has shut down.

    Uvicorn shuts down gracefully on these signals, then restores the handlers it found and
    raises the signal again; without handlers of ours, the process would die by the signal
    before the store is closed.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main() -> None:
    app()
