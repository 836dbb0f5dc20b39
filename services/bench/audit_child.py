"""Figure 4's child process: the bank audit's replay, or a raw read of the same rows.

In a process of its own, so the peak memory it reports is that run's alone:

    python -m services.bench.audit_child replay STORE_URL DEFAULT_OVERDRAFT_MINUTES
    python -m services.bench.audit_child raw-sqlite PATH
    python -m services.bench.audit_child raw-postgres SERVER_URL SCHEMA

Each prints one JSON object: events, seconds, peak RSS (KiB) before and after the work, and
(for the replay) whether every rule held. The raw reads import only what they use.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

BATCH = 2_000
# The columns the audit's recorder reads for each notification.
SQLITE_ROWS = (
    "SELECT rowid, originator_id, originator_version, topic, state FROM stored_events "
    "ORDER BY rowid"
)
POSTGRES_ROWS = (
    "SELECT notification_id, originator_id, originator_version, topic, state "
    "FROM {}.ledger_events ORDER BY notification_id"
)


def peak_rss_kib() -> int:
    """This process's peak resident memory, in KiB. Linux's VmHWM, since getrusage's maxrss
    survives exec: a child would report its parent's memory at the fork."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def replay(url: str, default_overdraft_minutes: int) -> dict[str, Any]:
    from services.audit.eventlog import open_event_log
    from services.audit.replay import audit_bank

    log = open_event_log(url)
    before = peak_rss_kib()
    began = time.perf_counter()
    result = audit_bank(log, default_overdraft_minutes=default_overdraft_minutes)
    seconds = time.perf_counter() - began
    log.close()
    return _figures(result.events, seconds, before) | {"ok": result.ok}


def raw_sqlite(path: str) -> dict[str, Any]:
    import sqlite3

    import msgspec

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        before = peak_rss_kib()
        began = time.perf_counter()
        events = _decode_all(conn.execute(SQLITE_ROWS).fetchmany, msgspec.json.Decoder().decode)
        seconds = time.perf_counter() - began
    finally:
        conn.close()
    return _figures(events, seconds, before)


def raw_postgres(server_url: str, schema: str) -> dict[str, Any]:
    import msgspec
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url) as conn, conn.cursor(name="bench_raw_read") as cursor:
        before = peak_rss_kib()
        began = time.perf_counter()
        cursor.execute(sql.SQL(POSTGRES_ROWS).format(sql.Identifier(schema)))
        events = _decode_all(cursor.fetchmany, msgspec.json.Decoder().decode)
        seconds = time.perf_counter() - began
    return _figures(events, seconds, before)


def _decode_all(fetch: Callable[[int], Iterable[Any]], decode: Callable[[bytes], Any]) -> int:
    events = 0
    while rows := list(fetch(BATCH)):
        for row in rows:
            decode(row[4])
        events += len(rows)
    return events


def _figures(events: int, seconds: float, rss_before_kib: int) -> dict[str, Any]:
    return {
        "events": events,
        "seconds": seconds,
        "rss_before_kib": rss_before_kib,
        "peak_rss_kib": peak_rss_kib(),
    }


def main(argv: list[str]) -> dict[str, Any]:
    match argv:
        case ["replay", url, overdraft]:
            return replay(url, int(overdraft))
        case ["raw-sqlite", path]:
            return raw_sqlite(path)
        case ["raw-postgres", server_url, schema]:
            return raw_postgres(server_url, schema)
    raise SystemExit(__doc__)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
