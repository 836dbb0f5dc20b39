"""Figure 3: cross-bank transfers around a ring of three banks, beside raw JetStream hops.

A->B->C->A through the clearing house, 32 clients at once and then paced at half that rate;
the baseline is 4-hop JetStream round trips on the same nats-server. Then the federation's
invariants, from its APIs and from its logs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx

from services.bench.invariants import Check, api_check, audit_federation_stores
from services.bench.jetstream import measure_hops
from services.bench.measure import (
    BenchError,
    CpuMeter,
    Figure,
    Operation,
    Run,
    run_paced,
    run_threads,
)
from services.ledger.domain_terms import FEDERATION_ACCOUNT
from services.local.client import FederationClient
from services.local.config import BankConfig, ClearingConfig, FederationConfig
from services.local.federation import LocalFederation
from services.local.nats_server import NatsServer

BANKS = ("bench-a", "bench-b", "bench-c")
CLIENTS = 32
MINUTES = 1
OVERDRAFT_MINUTES = 100_000
CONFIG = FederationConfig(
    # Long enough that no transfer aborts for its deadline under load.
    clearing=ClearingConfig(deadline_seconds=120),
    banks=[
        BankConfig(
            id=bank_id,
            name=f"Bench bank {bank_id[-1].upper()}",
            limit_minutes=1_000_000,
            overdraft_limit_minutes=OVERDRAFT_MINUTES,
        )
        for bank_id in BANKS
    ],
)
# Client t is member m<t> at every bank: it pays itself around the ring, so no balance drifts.
MEMBERS = [f"m{t:02d}" for t in range(CLIENTS)]
# Transfers per POST /v1/transfers/batch in the batch row.
BATCH_ITEMS = 200
DECIDED_WITHIN_SECONDS = 60.0
# How often the end of a run is checked for, with a few cheap requests.
POLL_SECONDS = 0.2

Step = Callable[[str], None]


@dataclass
class FederationFigures:
    figures: list[Figure]
    checks: list[Check]
    notes: list[str] = field(default_factory=list)


def measure_federation(
    data_dir: Path,
    count: int,
    paced_count: int,
    batched_count: int,
    hops: int,
    seconds: float,
    step: Step,
) -> FederationFigures:
    step("federation: starting NATS, the clearing house and three banks")
    with NatsServer(data_dir / "nats") as nats_server:
        federation = LocalFederation(CONFIG, data_dir / "federation", nats_url=nats_server.url)
        with federation, closing(FederationClient(federation.describe())) as client:
            described = client.described
            _prepare(client)
            step(f"federation: {count} transfers from {CLIENTS} clients")
            with closing(_Transfers(client)) as load:
                pids = _pids(federation, nats_server)
                with CpuMeter(f"the {CLIENTS}-client transfers", pids) as cpu:
                    full = load.run(count, seconds, rate=None)
                if not full.done:
                    raise BenchError(f"no transfer committed: {full.shortfall('transfers')}")
                rate = full.rate / 2
                step(f"federation: {paced_count} transfers paced at {rate:.1f}/s")
                paced = load.run(paced_count, seconds, rate=rate)
                step(
                    f"federation: {batched_count} transfers in batches of {BATCH_ITEMS}, "
                    f"{len(BANKS)} clients"
                )
                batched = load.run_batches(batched_count, seconds)
            step(f"JetStream: {hops} round trips of 4 hops, {CLIENTS} at once")
            raw = measure_hops(nats_server.url, concurrency=CLIENTS, count=hops, seconds=seconds)
            step(f"JetStream: round trips paced at {rate:.1f}/s")
            raw_paced = measure_hops(
                nats_server.url, concurrency=CLIENTS, count=paced_count, seconds=seconds, rate=rate
            )
            step("federation: invariants 1-5 from the APIs")
            checks = [_api_invariants(client)]
        step("federation: audit of every log")
        overdrafts = {bank.id: bank.overdraft_limit_minutes for bank in CONFIG.banks}
        bank_urls = {bank_id: bank["store"] for bank_id, bank in described["banks"].items()}
        checks.append(
            audit_federation_stores(described["clearing"]["store"], bank_urls, overdrafts)
        )
    notes = [
        note
        for what, run in (
            ("transfers", full),
            ("paced transfers", paced),
            ("batched transfers", batched),
            ("JetStream round trips", raw),
            ("paced JetStream round trips", raw_paced),
        )
        if (note := run.shortfall(what))
    ]
    notes += [*load.notes(), cpu.note()]
    notes.append(
        "NATS: one nats-server (JetStream, no auth) for the federation and its baseline; "
        "`timebank up` gives each participant its own nkey user"
    )
    notes.append(
        "transfer latency: from just before each POST /v1/transfers (time.time()) to the "
        "credit's posting at the payee bank (its statement entry's `at`, the same machine's "
        "clock), read once the run is decided from one statement per payee; nothing is polled "
        "per transfer. Clients submit without waiting, so at full rate latency includes the "
        "queue; the rate is transfers committed over first submit to last posting"
    )
    figures = _figures(full, paced, batched, raw, raw_paced, rate)
    return FederationFigures(figures, checks, notes)


def _pids(federation: LocalFederation, nats_server: NatsServer) -> dict[str, int | None]:
    services = [federation.clearing, *federation.banks.values()]
    pids = {s.name: s.process.pid if s.process else None for s in services}
    return {**pids, "nats-server": nats_server.pid}


def _prepare(client: FederationClient) -> None:
    """Open every client's member at every bank, and send one transfer around the ring (which
    waits until each bank knows the others)."""
    for bank_id in BANKS:
        for member_id in MEMBERS:
            client.open_member(bank_id, member_id, member_id.upper())
    for i, payer_bank in enumerate(BANKS):
        payee_bank = BANKS[(i + 1) % len(BANKS)]
        member = MEMBERS[0]
        transfer_id = client.transfer(payer_bank, member, payee_bank, member, MINUTES, "warm-up")
        if client.outcome(payer_bank, transfer_id)["status"] != "committed":
            raise BenchError(f"the warm-up transfer {transfer_id} did not commit")


def _api_invariants(client: FederationClient) -> Check:
    members = dict.fromkeys(BANKS, MEMBERS)
    if not client.wait_until_settled(members):
        return Check("federation invariants (APIs)", False, "minutes still held or reserved")
    problems = client.check_invariants(members)
    checked = f"{len(client.transfers)} transfers, {len(BANKS) * len(MEMBERS)} accounts"
    return api_check("federation invariants 1-5 (APIs)", problems, checked)


@dataclass(frozen=True)
class _Submitted:
    payer_bank: str
    payee_bank: str
    payee: str
    # time.time() just before the POST: the banks stamp their events with the same clock.
    at: float


class _Transfers:
    """Clients that submit transfers around the ring without waiting for them; once they are
    all decided, each one's latency is read from its payee's statement (when its credit was
    posted there), so measuring adds no load to the banks while they work. They share one
    kept-alive connection pool per bank."""

    def __init__(self, client: FederationClient) -> None:
        self.client = client
        self.lock = threading.Lock()
        self.aborted: dict[str, int] = {}
        self.sessions = {bank_id: self._session(bank_id) for bank_id in BANKS}

    def run(self, count: int, seconds: float, rate: float | None) -> Run:
        """Latencies are from submit to the credit's posting at the payee bank; the run's
        time is from the first submit to the last such posting."""
        submitted: dict[str, _Submitted] = {}
        banks = self.sessions

        def worker(thread: int) -> Operation:
            member = MEMBERS[thread]

            def transfer(i: int) -> None:
                payer_bank, payee_bank = _ring(thread + i)
                body = _item(member, payee_bank)
                at = time.time()
                response = banks[payer_bank].post("/v1/transfers", json=body)
                if response.status_code != 202:
                    raise BenchError(f"{response.status_code} {response.text[:200]}")
                self._submitted(submitted, response.json(), payer_bank, payee_bank, member, at)

            return transfer

        if rate is None:
            run = run_threads(worker, threads=CLIENTS, count=count, seconds=seconds)
        else:
            run = run_paced(worker, threads=CLIENTS, count=count, rate=rate, seconds=seconds)
        return self._measured(run.planned, submitted, run.errors)

    def run_batches(self, count: int, seconds: float) -> Run:
        """``count`` transfers in batches of BATCH_ITEMS by POST /v1/transfers/batch, one
        client per bank at once, each paying around the ring from its bank to the next;
        measured as run() measures."""
        submitted: dict[str, _Submitted] = {}
        banks = self.sessions

        def worker(thread: int) -> Operation:
            def batch(i: int) -> None:
                payer_bank, payee_bank = _ring(thread + i)
                members = [MEMBERS[(i * BATCH_ITEMS + n) % CLIENTS] for n in range(BATCH_ITEMS)]
                items = [_item(member, payee_bank) for member in members]
                at = time.time()
                response = banks[payer_bank].post("/v1/transfers/batch", json={"items": items})
                if response.status_code != 200:
                    raise BenchError(f"{response.status_code} {response.text[:200]}")
                for member, result in zip(members, response.json()["results"], strict=True):
                    if result["status"] != 202:
                        raise BenchError(f"a batch item was refused: {result['problem']}")
                    transfer = result["transfer"]
                    self._submitted(submitted, transfer, payer_bank, payee_bank, member, at)

            return batch

        batches = max(1, count // BATCH_ITEMS)
        run = run_threads(worker, threads=len(BANKS), count=batches, seconds=seconds)
        return self._measured(batches * BATCH_ITEMS, submitted, run.errors)

    def _submitted(
        self,
        submitted: dict[str, _Submitted],
        transfer: dict[str, Any],
        payer_bank: str,
        payee_bank: str,
        payee: str,
        at: float,
    ) -> None:
        transfer_id = transfer["transfer_id"]
        with self.lock:
            self.client.transfers[transfer_id] = (payer_bank, payee_bank)
            submitted[transfer_id] = _Submitted(payer_bank, payee_bank, payee, at)

    def _measured(self, planned: int, submitted: dict[str, _Submitted], errors: list[str]) -> Run:
        posted = self._posted(submitted)
        latencies = [posted[t] - s.at for t, s in submitted.items() if t in posted]
        elapsed = 0.0
        if posted:
            elapsed = max(posted.values()) - min(s.at for s in submitted.values())
        return Run(planned, elapsed, latencies, errors)

    def _posted(self, submitted: dict[str, _Submitted]) -> dict[str, float]:
        """When each committed transfer's credit was posted at its payee bank; the aborted
        ones counted by reason. Waits until none is undecided or unapplied, polling only what
        is cheap (the clearing house's reservations and the banks' federation accounts) every
        POLL_SECONDS, then reads each payee's statement once: again only for a transfer not
        found there and not aborted (one the cheap poll missed), for DECIDED_WITHIN_SECONDS
        at most."""
        deadline = time.monotonic() + DECIDED_WITHIN_SECONDS
        posted: dict[str, float] = {}
        waiting = dict(submitted)
        while waiting:
            self._wait_until_quiet(deadline)
            payees = {(s.payee_bank, s.payee) for s in waiting.values()}
            for bank_id, member_id in sorted(payees):
                for transfer_id, at in self._credits(bank_id, member_id).items():
                    if transfer_id in waiting:
                        posted[transfer_id] = at
                        del waiting[transfer_id]
            # Not credited: aborted (the payer bank knows why), or not applied yet.
            for transfer_id, sent in list(waiting.items()):
                response = self.sessions[sent.payer_bank].get(f"/v1/transfers/{transfer_id}")
                view = self.client.ok(response)
                if view["status"] == "aborted":
                    reason = str(view.get("reason"))
                    self.aborted[reason] = self.aborted.get(reason, 0) + 1
                    del waiting[transfer_id]
            if waiting and time.monotonic() > deadline:
                raise BenchError(
                    f"{len(waiting)} of {len(submitted)} transfers not applied at their payee "
                    f"bank after {DECIDED_WITHIN_SECONDS:.0f} s"
                )
            if waiting:
                time.sleep(POLL_SECONDS)
        return posted

    def _wait_until_quiet(self, deadline: float) -> None:
        """Until the clearing house reserves nothing and no bank's federation account holds a
        pending credit: every transfer it has heard of decided and applied at its payee."""
        while True:
            banks = self.client.clearing("/v1/banks")["banks"]
            if sum(b["reserved_minutes"] for b in banks) == 0:
                path = f"/v1/members/{FEDERATION_ACCOUNT}"
                federation = [self.client.ok(bank.get(path)) for bank in self.sessions.values()]
                if all(account["held_minutes"] == 0 for account in federation):
                    return
            if time.monotonic() > deadline:
                return  # the statements say which transfers are missing
            time.sleep(POLL_SECONDS)

    def _credits(self, bank_id: str, member_id: str) -> dict[str, float]:
        response = self.sessions[bank_id].get(f"/v1/members/{member_id}/statement")
        return transfer_credits(self.client.ok(response))

    def _session(self, bank_id: str) -> httpx.Client:
        bank = self.client.described["banks"][bank_id]
        return httpx.Client(
            base_url=bank["url"],
            headers={"Authorization": f"Bearer {bank['operator_token']}"},
            timeout=10.0,
            limits=httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS),
        )

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()

    def notes(self) -> list[str]:
        if not self.aborted:
            return []
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.aborted.items()))
        return [f"transfers aborted (not counted in the latencies): {reasons}"]


def _ring(turn: int) -> tuple[str, str]:
    """The payer bank and the payee bank of a client's ``turn``-th payment around the ring."""
    return BANKS[turn % len(BANKS)], BANKS[(turn + 1) % len(BANKS)]


def _item(member: str, payee_bank: str) -> dict[str, Any]:
    """A member paying itself at the next bank: no balance drifts around the ring."""
    return {"payer": member, "to_bank": payee_bank, "payee": member, "minutes": MINUTES,
            "memo": "bench"}  # fmt: skip


def transfer_credits(statement: dict[str, Any]) -> dict[str, float]:
    """A statement's cross-bank credits (the member was the payee): transfer id -> when the
    credit was posted, in seconds since the epoch."""
    credits: dict[str, float] = {}
    for entry in statement["entries"]:
        if entry["kind"] == "transfer" and entry["minutes"] > 0:
            at = datetime.fromisoformat(entry["at"])
            if at.tzinfo is None:  # the banks stamp in UTC
                at = at.replace(tzinfo=UTC)
            credits[entry["entry_id"]] = at.timestamp()
    return credits


def _figures(
    full: Run, paced: Run, batched: Run, raw: Run, raw_paced: Run, rate: float
) -> list[Figure]:
    ring = f"transfers A->B->C->A, {CLIENTS} clients"
    by_batch = f"transfers by /v1/transfers/batch ({BATCH_ITEMS} each), {len(BANKS)} clients"
    hops = f"JetStream 4 hops, {CLIENTS} at once"
    at = f"paced at {rate:.1f}/s"
    rows = [
        ("federation_transfers_rate", ring, full.rate, hops, raw.rate, "transfers/s"),
        ("federation_transfer_p50", f"{ring}: p50", full.percentile_ms(50), f"{hops}: p50",
         raw.percentile_ms(50), "ms"),
        ("federation_transfer_p99", f"{ring}: p99", full.percentile_ms(99), f"{hops}: p99",
         raw.percentile_ms(99), "ms"),
        ("federation_batch_rate", by_batch, batched.rate, hops, raw.rate, "transfers/s"),
        ("federation_paced_p50", f"transfers {at}: p50", paced.percentile_ms(50),
         f"JetStream 4 hops {at}: p50", raw_paced.percentile_ms(50), "ms"),
        ("federation_paced_p99", f"transfers {at}: p99", paced.percentile_ms(99),
         f"JetStream 4 hops {at}: p99", raw_paced.percentile_ms(99), "ms"),
    ]  # fmt: skip
    return [
        Figure(key, name, value, base_name, base, unit, higher_is_better=unit != "ms")
        for key, name, value, base_name, base, unit in rows
    ]
