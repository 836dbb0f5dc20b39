"""Measure Ledger.exchange throughput (one save per exchange) and the bank summary's fold.

    python tests/bench/ledger_throughput.py [--exchanges 3000] [--postgres URL]

A measurement, not a test: it prints figures and asserts only that the books balance.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time

import psycopg
from psycopg import sql

from services.common.stores import parse_store_url
from services.ledger.application import (
    Ledger,
)


def measure(url: str, exchanges: int) -> None:
    ledger = Ledger("bench", parse_store_url(url), default_overdraft_minutes=10**9)
    for member_id in ("a", "b"):
        ledger.open_member(member_id, member_id.upper(), "person")
    started = time.perf_counter()
    for i in range(exchanges):
        payer, payee = ("a", "b") if i % 2 else ("b", "a")
        ledger.exchange(payer, payee, 5, "bench")
    elapsed = time.perf_counter() - started
    fresh = Ledger("bench", parse_store_url(url))
    started = time.perf_counter()
    summary = fresh.summary()
    fold = time.perf_counter() - started
    if summary.total_posted_minutes != 0:
        raise SystemExit(f"the books do not balance: {summary}")
    kind = parse_store_url(url).description.split()[0]
    print(
        f"{kind}: {exchanges / elapsed:,.0f} exchanges/s sequential; "
        f"first summary over {2 * exchanges:,} postings in {fold * 1000:.0f} ms"
    )
    ledger.close()
    fresh.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=3000)
    parser.add_argument("--postgres", help="e.g. postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measure(f"sqlite:///{tmp}/bench.db", args.exchanges)
    if args.postgres:
        schema = f"bench_{secrets.token_hex(4)}"
        try:
            measure(f"{args.postgres}?schema={schema}", args.exchanges)
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )


if __name__ == "__main__":
    main()
