"""What every `timebank` command shares: the root command, errors that exit with a code,
logging, and a clean exit on SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Annotated

import typer

# Options several commands take.
NatsNamespace = Annotated[
    str, typer.Option(help="Prefix of the federation's NATS subjects and streams.")
]

app = typer.Typer(
    help="timebank-federation: linked time banks, one event-sourced ledger each.",
    no_args_is_help=True,
    add_completion=False,
)


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def configure_logging(log_level: str) -> None:
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@contextmanager
def exit_cleanly_on_signals() -> Iterator[None]:
    """Make SIGTERM and Ctrl-C end the process with status 0 once the server has shut down.

    Uvicorn shuts down gracefully on these signals, then restores the handlers it found and
    raises the signal again; without handlers of ours, the process would die by the signal
    before the store is closed.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        # A second signal (a supervisor that repeats itself) must not cut the shutdown short.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        raise SystemExit(0)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
