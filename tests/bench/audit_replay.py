"""Measure `timebank audit bank`'s replay: events per second, and peak memory as the log grows.

    python tests/bench/audit_replay.py [--events 1000000] [--members 200] [--keep PATH]

The log is written quickly but honestly: members are opened by a real Ledger, then exchanges,
local holds and cross-bank transfers both ways (held, then committed or aborted as the clearing
house's decision would) are made by the ledger's own aggregates and saved through its own
mapper and recorder, in batches, as its saves would order them. It is replayed at several
sizes (1/8, 1/4, 1/2 and all of it), each time in a fresh process, so each figure is that
replay's own: events/s, the process's peak RSS, and the peak of Python's heap during the replay
(tracemalloc, in a second run, since tracing slows it down). Flat memory means the last two
barely move with size.

A measurement, not a test: it asserts only that the audit passes.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any
from uuid import uuid4

from eventsourcing.domain import Aggregate

from services.audit.eventlog import open_event_log
from services.audit.replay import audit_bank
from services.common.outbox import Outbox
from services.common.stores import parse_store_url
from services.ledger.application import (
    Ledger,
)
from services.ledger.domain import (
    Account,
    CrossBankTransfer,
    post_hold_to_counterparty,
)
from services.ledger.domain_terms import (
    LedgerError,
    Role,
    account_id,
)
from shared.protocol import CLEARING, TransferRequested

BANK = "bench"
OTHER_BANK = "college"
LIMIT = 600
SAVE_EVERY = 5_000


class LogWriter:
    """Appends realistic ledger events to a bank's store, a batch of saves at a time."""

    def __init__(self, url: str, members: int, seed: int = 7) -> None:
        self.ledger = Ledger(BANK, parse_store_url(url), default_overdraft_minutes=LIMIT)
        self.rng = random.Random(seed)
        self.member_ids = [f"m{i:04d}" for i in range(members)]
        for member_id in self.member_ids:
            self.ledger.open_member(member_id, member_id.upper(), "person")
        self.accounts: dict[str, Account] = {
            m: self.ledger.repository.get(account_id(m)) for m in [*self.member_ids, "federation"]
        }
        self.outbox = Outbox(source=BANK, destination=CLEARING)
        self.pending: list[tuple[CrossBankTransfer, Account]] = []
        self.holds: list[tuple[Account, str]] = []
        self.unsaved: list[Aggregate] = []
        self.buffer: list[Any] = []
        self.written = self.ledger.recorder.max_notification_id() or 0

    def _save(self, *aggregates: Aggregate) -> None:
        """What one Ledger.save would write: each aggregate's new events, in that order."""
        for aggregate in aggregates:
            self.buffer.extend(aggregate.collect_events())
        if len(self.buffer) >= SAVE_EVERY:
            self.flush()

    def flush(self) -> None:
        to_stored = self.ledger.mapper.to_stored_event
        self.ledger.recorder.insert_events([to_stored(e) for e in self.buffer])
        self.written += len(self.buffer)
        self.buffer = []

    def _exchange(self) -> None:
        payer, payee = (self.accounts[m] for m in self.rng.sample(self.member_ids, 2))
        minutes = self.rng.randint(5, 120)
        entry_id = str(uuid4())
        try:
            payer.debit(entry_id, minutes, payee.member_id, "help", "exchange", LIMIT)
        except LedgerError:
            return  # refused: nothing written, as in the ledger
        payee.credit(entry_id, minutes, payer.member_id, "help", "exchange")
        self._save(payer, payee)

    def _local_hold(self) -> None:
        account, other = (self.accounts[m] for m in self.rng.sample(self.member_ids, 2))
        hold_id = str(uuid4())
        try:
            account.place_hold(hold_id, 30, other.member_id, "ride", "hold", LIMIT)
        except LedgerError:
            return
        self._save(account)
        self.holds.append((account, hold_id))

    def _end_local_hold(self) -> None:
        account, hold_id = self.holds.pop(0)
        if self.rng.random() < 0.7:
            other = post_hold_to_counterparty(account, hold_id, self.accounts.__getitem__)
            self._save(account, other)
        else:
            account.void_hold(hold_id)
            self._save(account)

    def _transfer(self) -> None:
        account = self.accounts[self.rng.choice(self.member_ids)]
        minutes = self.rng.randint(5, 120)
        transfer = CrossBankTransfer(
            transfer_id=str(uuid4()),
            role=Role.PAYER,
            member_id=account.member_id,
            other_bank=OTHER_BANK,
            other_member="bob",
            minutes=minutes,
            memo="a course",
        )
        try:
            account.place_hold(
                transfer.transfer_id,
                minutes,
                "federation",
                "a course",
                "transfer",
                LIMIT,
                party=transfer.party,
            )
        except LedgerError:
            return
        self.outbox.queue(
            TransferRequested(
                transfer_id=transfer.transfer_id,
                payer_bank=BANK,
                payer=account.member_id,
                payee_bank=OTHER_BANK,
                payee="bob",
                minutes=minutes,
                memo="a course",
                requested_at=account.modified_on,
            )
        )
        self._save(account, transfer, self.outbox)
        self.pending.append((transfer, account))

    def _incoming(self) -> None:
        """A credit requested by another bank's member: held on `federation` until decided."""
        member_id = self.rng.choice(self.member_ids)
        transfer = CrossBankTransfer(
            transfer_id=str(uuid4()),
            role=Role.PAYEE,
            member_id=member_id,
            other_bank=OTHER_BANK,
            other_member="bob",
            minutes=self.rng.randint(5, 120),
            memo="a lift",
        )
        federation = self.accounts["federation"]
        federation.place_hold(
            transfer.transfer_id, transfer.minutes, member_id, "a lift", "transfer", LIMIT,
            party=transfer.party,
        )  # fmt: skip
        self._save(transfer, federation)
        self.pending.append((transfer, federation))

    def _decide(self) -> None:
        """The clearing house's decision, applied as Ledger._on_decision saves it."""
        transfer, held_on = self.pending.pop(0)
        if self.rng.random() < 0.8:
            credited = post_hold_to_counterparty(
                held_on, transfer.transfer_id, self.accounts.__getitem__
            )
            transfer.commit()
            self._save(transfer, held_on, credited)
        else:
            held_on.void_hold(transfer.transfer_id)
            transfer.abort("payee_refused")
            self._save(transfer, held_on)

    def write_until(self, events: int) -> None:
        idle = 0
        while (before := self.written + len(self.buffer)) < events:
            roll = self.rng.random()
            if roll < 0.80:
                self._exchange()
            elif roll < 0.84:
                self._local_hold()
            elif roll < 0.88 and self.holds:
                self._end_local_hold()
            elif roll < 0.91:
                self._transfer()
            elif roll < 0.94:
                self._incoming()
            elif self.pending:
                self._decide()
            # Transfers in and out balance on average; if the members ever all sat at their
            # limits, nothing could be written: stop rather than spin.
            idle = idle + 1 if self.written + len(self.buffer) == before else 0
            if idle > 100_000:
                raise SystemExit("the bench's members cannot pay any more: nothing to write")
        self.flush()

    def close(self) -> None:
        self.ledger.close()


def replay_once(url: str, trace: bool) -> dict[str, Any]:
    """One replay of the whole log, measured from inside this process."""
    if trace:
        tracemalloc.start()
    log = open_event_log(url)
    started = time.perf_counter()
    result = audit_bank(log, default_overdraft_minutes=LIMIT)
    seconds = time.perf_counter() - started
    log.close()
    figures: dict[str, Any] = {
        "events": result.events,
        "seconds": seconds,
        "ok": result.ok,
        "problems": [p.detail for p in result.problems[:3]],
        "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    if trace:
        figures["traced_peak_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return figures


def replay_in_child(url: str, trace: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--replay-only", url, *(["--trace"] if trace else [])]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--keep", type=Path, help="Write the log to this SQLite file and keep it.")
    parser.add_argument("--no-trace", action="store_true", help="Skip the tracemalloc runs.")
    parser.add_argument("--replay-only", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay_only:
        print(json.dumps(replay_once(args.replay_only, args.trace)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep.resolve() if args.keep else Path(tmp) / "bench.db"
        url = f"sqlite:///{path}"
        writer = LogWriter(url, args.members)
        print(f"{'events':>10} {'write s':>8} {'events/s':>10} {'peak RSS':>10} {'heap peak':>10}")
        for size in sorted({args.events // 8, args.events // 4, args.events // 2, args.events}):
            started = time.perf_counter()
            writer.write_until(size)
            written = time.perf_counter() - started
            plain = replay_in_child(url, trace=False)
            if not plain["ok"]:
                raise SystemExit(f"the audit failed on a valid log: {plain['problems']}")
            heap = "-"
            if not args.no_trace:
                traced = replay_in_child(url, trace=True)
                heap = f"{traced['traced_peak_bytes'] / 2**20:.1f} MiB"
            print(
                f"{plain['events']:>10,} {written:>8.1f} "
                f"{plain['events'] / plain['seconds']:>10,.0f} "
                f"{plain['max_rss_kib'] / 1024:>6.1f} MiB {heap:>10}",
                flush=True,
            )
        writer.close()


if __name__ == "__main__":
    main()
