"""The `timebank` command: run a bank's ledger and the clearing house, a whole federation on
one machine, its settlement cycles, keys and audits."""

from __future__ import annotations

from services.cli import audit, bench, deploy, federation, join, keys, serve
from services.cli.common import app

# The modules register their commands on the root command when imported.
__all__ = ["app", "audit", "bench", "deploy", "federation", "join", "keys", "main", "serve"]


def main() -> None:
    app()
