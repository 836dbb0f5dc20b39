"""Figure 4: the bank audit's replay of figure 1's log beside a raw read-and-decode of it.

Events/s and peak memory, each measured in a child process of its own (audit_child.py); the raw
read takes the same rows with sqlite3 (or psycopg) and decodes each state with msgspec.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.bench.measure import BenchError, Figure
from services.bench.stores import BenchStores

CHILD_SECONDS = 600
KIB_PER_MIB = 1024

Step = Callable[[str], None]


@dataclass
class AuditFigures:
    figures: list[Figure]
    notes: list[str] = field(default_factory=list)


def measure_audit(
    stores: BenchStores, name: str, url: str, default_overdraft_minutes: int, step: Step
) -> AuditFigures:
    """Figure 4 over the log of the ledger stored as ``name`` (at ``url``)."""
    step("audit: raw read and decode of the ledger's rows")
    if stores.postgres_url is None:
        raw = _child("raw-sqlite", str(stores.sqlite_path(name)))
    else:
        raw = _child("raw-postgres", stores.postgres_url, stores.schema(name))
    step("audit: `timebank audit bank` replay of the same log")
    replay = _child("replay", url, str(default_overdraft_minutes))
    notes = [
        f"audit replay: {replay['events']:,} events; peak RSS includes the interpreter and its "
        f"imports ({_mib(replay['rss_before_kib']):.0f} MiB before the replay, "
        f"{_mib(raw['rss_before_kib']):.0f} MiB before the raw read)"
    ]
    if not replay["ok"]:
        notes.append("audit replay: the log failed a check (see the invariants)")
    if replay["events"] != raw["events"]:
        notes.append(f"audit replay read {replay['events']} events, the raw read {raw['events']}")
    return AuditFigures(
        [
            Figure(
                "audit_replay_rate",
                "audit bank replay",
                replay["events"] / replay["seconds"],
                "sqlite3/psycopg read + msgspec decode",
                raw["events"] / raw["seconds"],
                "events/s",
            ),
            Figure(
                "audit_replay_peak_rss",
                "audit bank replay: peak RSS",
                _mib(replay["peak_rss_kib"]),
                "raw read + decode: peak RSS",
                _mib(raw["peak_rss_kib"]),
                "MiB",
                higher_is_better=False,
            ),
        ],
        notes,
    )


def _mib(kib: int) -> float:
    return kib / KIB_PER_MIB


def _child(*args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "services.bench.audit_child", *args]
    try:
        done = subprocess.run(  # noqa: S603 (this interpreter, our arguments)
            command, capture_output=True, text=True, timeout=CHILD_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{args[0]} did not finish within {CHILD_SECONDS} s") from None
    if done.returncode != 0:
        raise BenchError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    figures: dict[str, Any] = json.loads(done.stdout)
    if not figures["events"] or figures["seconds"] <= 0:
        raise BenchError(f"{args[0]} read no events")
    return figures
