"""Figure 2: POST /v1/exchanges over HTTP from 8 clients, and POST /v1/exchanges/batch with
1,000 exchanges a request from 2, each beside a bare ASGI app doing the same INSERTs.

The ledger is a real `timebank ledger serve` process; the baseline is asgi_baseline.py.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx2 as httpx

from services.bench.measure import BenchError, CpuMeter, Figure, Operation, Run, run_threads
from services.bench.stores import BenchStores
from services.ledger.domain_terms import DEFAULT_OVERDRAFT_MINUTES
from services.local.nats_server import free_ports

HOST = "127.0.0.1"
BANK = "bench-http"
CLIENTS = 8
MINUTES = 5
WARMUP = 10
# The batch route: this many exchanges a request, from this many clients.
BATCH_ITEMS = 1_000
BATCH_CLIENTS = 2
# What the project aims for through the HTTP API with batching.
BATCH_GOAL_RATE = 10_000
START_SECONDS = 30.0
STOP_SECONDS = 15.0
# Each client pays back and forth between a pair of its own.
MEMBERS = [f"m{i:02d}" for i in range(2 * CLIENTS)]
# Each batch client pays around a ring of its own: 8 members, which divides BATCH_ITEMS, so
# every member pays as often as it is paid in each batch and no balance drifts.
RING = len(MEMBERS) // BATCH_CLIENTS

Step = Callable[[str], None]


class ServerProcess:
    """A server started as a child process on a free loopback port, its output in a log file;
    stopped with SIGTERM (killed if it does not stop in time)."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_ports(HOST, 1)[0]
        self.url = f"http://{HOST}:{self.port}"
        self.argv = [*argv, "--port", str(self.port)]
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def __enter__(self) -> Self:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 (this interpreter, our arguments)
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited at start-up:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"{self.name} did not answer within {START_SECONDS:.0f} s:\n{self.tail()}")

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_SECONDS)
        return self.process.returncode

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class HTTPFigures:
    figures: list[Figure]
    # The served bank's store and default overdraft: audited once the server has stopped.
    ledger_url: str
    overdraft_minutes: int
    notes: list[str] = field(default_factory=list)


@dataclass
class Batches:
    """A load loop of batch requests, and how many of their items were stored."""

    run: Run
    items: int

    @property
    def rate(self) -> float:
        return self.items / self.run.seconds if self.run.seconds > 0 else 0.0


def measure_http(
    stores: BenchStores, log_dir: Path, count: int, batches: int, seconds: float, step: Step
) -> HTTPFigures:
    """Figure 2: ``count`` requests from CLIENTS threads, then ``batches`` batch requests from
    BATCH_CLIENTS threads, at each server in turn."""
    token = secrets.token_urlsafe(32)
    headers = {"Authorization": f"Bearer {token}"}
    ledger_url = stores.url("http")
    python = [sys.executable, "-m"]
    step("HTTP: the bare ASGI baseline")
    baseline_argv = [*python, "services.bench.asgi_baseline", "--store", stores.url("asgi")]
    with ServerProcess("asgi-baseline", baseline_argv, log_dir, dict(os.environ)) as server:
        pids = {"its server": server.pid}
        with CpuMeter("the bare ASGI baseline", pids) as baseline_cpu:
            baseline = _load(server.url, headers, count, seconds)
        with CpuMeter("the bare ASGI batch baseline", pids) as baseline_batch_cpu:
            baseline_batch = _load_batches(server.url, headers, batches, seconds)
    step("HTTP: POST /v1/exchanges on `timebank ledger serve`")
    ledger_argv = [*python, "services.cli", "ledger", "serve", "--bank", BANK, "--store",
                   ledger_url, "--host", HOST, "--log-level", "warning",
                   "--overdraft-limit-minutes", str(DEFAULT_OVERDRAFT_MINUTES)]  # fmt: skip
    env = {**os.environ, "TIMEBANK_OPERATOR_TOKEN": token}
    with ServerProcess("ledger-serve", ledger_argv, log_dir, env) as server:
        _open_members(server.url, headers)
        pids = {"ledger serve": server.pid}
        with CpuMeter("POST /v1/exchanges", pids) as served_cpu:
            served = _load(server.url, headers, count, seconds)
        step(f"HTTP: POST /v1/exchanges/batch, {BATCH_ITEMS:,} per request")
        with CpuMeter("POST /v1/exchanges/batch", pids) as served_batch_cpu:
            served_batch = _load_batches(server.url, headers, batches, seconds)
        if server.stop() != 0:
            raise BenchError(f"the ledger server did not stop cleanly:\n{server.tail()}")
    notes = [
        note
        for what, run in (
            ("HTTP baseline", baseline),
            ("POST /v1/exchanges", served),
            ("HTTP batch baseline (requests)", baseline_batch.run),
            ("POST /v1/exchanges/batch (requests)", served_batch.run),
        )
        if (note := run.shortfall(what))
    ]
    notes += [
        goal_note(served_batch.rate),
        "HTTP servers: uvicorn, one process each, --log-level warning (no access log)",
        f"HTTP batches, both servers: {BATCH_CLIENTS} clients, {served_batch.run.done} timed "
        f"requests of {BATCH_ITEMS:,} exchanges at the ledger (after 1 each untimed), each "
        f"client paying around a ring of {RING} members; the rate counts only items answered "
        "201",
        baseline_cpu.note(),
        baseline_batch_cpu.note(),
        served_cpu.note(),
        served_batch_cpu.note(),
    ]
    figures = [*_figures(served, baseline), _batch_figure(served_batch, baseline_batch)]
    return HTTPFigures(figures, ledger_url, DEFAULT_OVERDRAFT_MINUTES, notes)


def goal_note(rate: float) -> str:
    """Whether the batch route reached the project's goal, in words that stand out."""
    verdict = "met" if rate >= BATCH_GOAL_RATE else "NOT met"
    return (
        f"goal: at least {BATCH_GOAL_RATE:,} exchanges/s through the HTTP API with batching: "
        f"{verdict} ({rate:,.0f} exchanges/s through POST /v1/exchanges/batch)"
    )


def _figures(served: Run, baseline: Run) -> list[Figure]:
    name = f"POST /v1/exchanges, {CLIENTS} clients"
    base = f"bare ASGI + 1 INSERT, {CLIENTS} clients"
    return [
        Figure("http_exchanges_rate", name, served.rate, base, baseline.rate, "requests/s"),
        Figure(
            "http_exchanges_p50",
            f"{name}: p50",
            served.percentile_ms(50),
            f"{base}: p50",
            baseline.percentile_ms(50),
            "ms",
            higher_is_better=False,
        ),
        Figure(
            "http_exchanges_p99",
            f"{name}: p99",
            served.percentile_ms(99),
            f"{base}: p99",
            baseline.percentile_ms(99),
            "ms",
            higher_is_better=False,
        ),
    ]


def _batch_figure(served: Batches, baseline: Batches) -> Figure:
    """Both from BATCH_CLIENTS clients (said in the notes, to keep the row short)."""
    return Figure(
        "http_batch_exchanges_rate",
        f"POST /v1/exchanges/batch, {BATCH_ITEMS:,} per request",
        served.rate,
        f"bare ASGI + {BATCH_ITEMS:,} INSERTs in 1 transaction",
        baseline.rate,
        "exchanges/s",
    )


def batch_items(client: int) -> list[dict[str, object]]:
    """A batch for this client: BATCH_ITEMS exchanges around its own ring of members."""
    ring = MEMBERS[client * RING : (client + 1) * RING]
    return [
        {"payer": ring[n % RING], "payee": ring[(n + 1) % RING], "minutes": MINUTES,
         "memo": "bench"}
        for n in range(BATCH_ITEMS)
    ]  # fmt: skip


def _load_batches(url: str, headers: dict[str, str], count: int, seconds: float) -> Batches:
    """``count`` batch requests of BATCH_ITEMS exchanges from BATCH_CLIENTS threads, after one
    untimed request each; counts the items answered 201 (the baseline answers how many rows it
    stored). A refused item is an error of its request, shown in the notes."""
    clients: list[httpx.Client] = []
    lock = threading.Lock()
    stored = 0

    def worker(thread: int) -> Operation:
        client = httpx.Client(base_url=url, headers=headers, timeout=60.0)
        clients.append(client)
        items = batch_items(thread)

        def post(i: int) -> None:
            nonlocal stored
            response = client.post("/v1/exchanges/batch", json={"items": items})
            if response.status_code != 200:
                raise BenchError(f"{response.status_code} {response.text[:200]}")
            answer = response.json()
            if "stored" in answer:  # the bare ASGI baseline
                accepted, refused = int(answer["stored"]), []
            else:
                results = answer["results"]
                accepted = sum(1 for r in results if r["status"] == 201)
                refused = [r for r in results if r["status"] != 201]
            if i >= 0:  # not the warm-up
                with lock:
                    stored += accepted
            if refused:
                problem = refused[0].get("problem") or {}
                raise BenchError(f"{len(refused)} items refused, first: {problem.get('code')}")

        return post

    try:
        run = run_threads(worker, threads=BATCH_CLIENTS, count=count, seconds=seconds, warmup=1)
    finally:
        for client in clients:
            client.close()
    return Batches(run, stored)


def _open_members(url: str, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=url, headers=headers, timeout=10.0) as client:
        for member_id in MEMBERS:
            body = {"member_id": member_id, "name": member_id.upper(), "kind": "person"}
            response = client.post("/v1/members", json=body)
            if response.status_code != 201:
                detail = f"{response.status_code} {response.text[:200]}"
                raise BenchError(f"opening member {member_id}: {detail}")


def _load(url: str, headers: dict[str, str], count: int, seconds: float) -> Run:
    clients: list[httpx.Client] = []

    def worker(thread: int) -> Operation:
        client = httpx.Client(base_url=url, headers=headers, timeout=10.0)
        clients.append(client)
        first, second = MEMBERS[2 * thread], MEMBERS[2 * thread + 1]

        def post(i: int) -> None:
            payer, payee = (first, second) if i % 2 == 0 else (second, first)
            body = {"payer": payer, "payee": payee, "minutes": MINUTES, "memo": "bench"}
            response = client.post("/v1/exchanges", json=body)
            if response.status_code != 201:
                raise BenchError(f"{response.status_code} {response.text[:200]}")

        return post

    try:
        return run_threads(worker, threads=CLIENTS, count=count, seconds=seconds, warmup=WARMUP)
    finally:
        for client in clients:
            client.close()
