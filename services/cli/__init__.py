"""The `timebank` command: run a bank's ledger and the clearing house, a whole federation on
one machine, its settlement cycles, keys and audits."""

from __future__ import annotations

import sys
from typing import Protocol, runtime_checkable

import typer
from typer.exceptions import TyperException

from services.cli import audit, bench, deploy, federation, join, keys, people, serve
from services.cli.common import app

# The modules register their commands on the root command when imported.
__all__ = [
    "app",
    "audit",
    "bench",
    "deploy",
    "federation",
    "join",
    "keys",
    "main",
    "people",
    "serve",
]


def main() -> None:
    """Run the command. A usage error (a missing option, a value of the wrong kind) is one
    line and exit 2, like every other error, not typer's box."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.secho("aborted", err=True)
        sys.exit(1)
    except TyperException as e:
        message = e.format_message() if isinstance(e, ClickLikeError) else str(e)
        if message:  # none when the help was shown instead (a command with no arguments)
            typer.secho(f"error: {message} (see --help)", err=True, fg=typer.colors.RED)
        sys.exit(getattr(e, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


@runtime_checkable
class ClickLikeError(Protocol):
    """What click's usage errors (bundled by typer) offer: their message, without the usage."""

    def format_message(self) -> str: ...
