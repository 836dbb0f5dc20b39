"""What every `timebank` command shares: the root command, errors that exit with a code,
logging (as text or as JSON lines), and a clean exit on SIGTERM or Ctrl-C."""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from types import FrameType
from typing import Annotated, Any

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


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


# What every log record has; anything else on a record was given with ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's coloured copy of the message
}
# The arguments of uvicorn's access log line, in order.
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, every field given
    with ``extra=`` (a transfer's ``transfer_id`` and ``bank``), and uvicorn's access log
    line's parts (``method``, ``path``, ``status``, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            entry.update(zip(_ACCESS_FIELDS, args, strict=True))
        entry.update((k, v) for k, v in vars(record).items() if k not in _RECORD_FIELDS)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def configure_logging(log_level: str, log_format: LogFormat = LogFormat.TEXT) -> None:
    if log_format == LogFormat.JSON:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=log_level.upper(), handlers=[handler])
        return
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def uvicorn_log_config(log_format: LogFormat) -> dict[str, Any]:
    """uvicorn's logging: its own for text; for JSON, its loggers (the access log too) handed
    to the root logger's JSON handler."""
    if log_format != LogFormat.JSON:
        from uvicorn.config import LOGGING_CONFIG

        return LOGGING_CONFIG
    names = ("uvicorn", "uvicorn.error", "uvicorn.access")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {name: {"handlers": [], "propagate": True} for name in names},
    }


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
