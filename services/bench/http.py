"""Figure 2: POST /v1/exchanges over HTTP from 8 clients, beside a bare ASGI app's INSERTs.

The ledger is a real `timebank ledger serve` process; the baseline is asgi_baseline.py.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
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
START_SECONDS = 30.0
STOP_SECONDS = 15.0
# Each client pays back and forth between a pair of its own.
MEMBERS = [f"m{i:02d}" for i in range(2 * CLIENTS)]

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


def measure_http(
    stores: BenchStores, log_dir: Path, count: int, seconds: float, step: Step
) -> HTTPFigures:
    batches = max(BATCH_CLIENTS, count // 200)
    """Figure 2: ``count`` requests from CLIENTS threads, at each server in turn."""
    token = secrets.token_urlsafe(32)
    headers = {"Authorization": f"Bearer {token}"}
    ledger_url = stores.url("http")
    python = [sys.executable, "-m"]
    step("HTTP: the bare ASGI baseline")
    baseline_argv = [*python, "services.bench.asgi_baseline", "--store", stores.url("asgi")]
    with (
        ServerProcess("asgi-baseline", baseline_argv, log_dir, dict(os.environ)) as server,
        CpuMeter("the bare ASGI baseline", {"its server": server.pid}) as baseline_cpu,
    ):
        baseline = _load(server.url, headers, count, seconds)
        baseline_batch = _load_batches(server.url, headers, batches, seconds)
    step("HTTP: POST /v1/exchanges on `timebank ledger serve`")
    ledger_argv = [*python, "services.cli", "ledger", "serve", "--bank", BANK, "--store",
                   ledger_url, "--host", HOST, "--log-level", "warning",
                   "--overdraft-limit-minutes", str(DEFAULT_OVERDRAFT_MINUTES)]  # fmt: skip
    env = {**os.environ, "TIMEBANK_OPERATOR_TOKEN": token}
    with ServerProcess("ledger-serve", ledger_argv, log_dir, env) as server:
        _open_members(server.url, headers)
        with CpuMeter("POST /v1/exchanges", {"ledger serve": server.pid}) as served_cpu:
            served = _load(server.url, headers, count, seconds)
        step(f"HTTP: POST /v1/exchanges/batch, {BATCH_ITEMS:,} a request")
        served_batch = _load_batches(server.url, headers, batches, seconds)
        if server.stop() != 0:
            raise BenchError(f"the ledger server did not stop cleanly:\n{server.tail()}")
    notes = [
        note
        for what, run in (
            ("HTTP baseline", baseline),
            ("POST /v1/exchanges", served),
            ("HTTP batch baseline", baseline_batch),
            ("POST /v1/exchanges/batch", served_batch),
        )
        if (note := run.shortfall(what))
    ]
    notes += [
        "HTTP servers: uvicorn, one process each, --log-level warning (no access log)",
        baseline_cpu.note(),
        served_cpu.note(),
    ]
    figures = [*_figures(served, baseline), _batch_figure(served_batch, baseline_batch)]
    return HTTPFigures(figures, ledger_url, DEFAULT_OVERDRAFT_MINUTES, notes)


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


def _batch_figure(served: Run, baseline: Run) -> Figure:
    """Items per second: each request's latency counts once per item it carried."""
    return Figure(
        "http_batch_exchanges_rate",
        f"POST /v1/exchanges/batch, {BATCH_ITEMS:,} a request, {BATCH_CLIENTS} clients",
        served.rate * BATCH_ITEMS,
        f"bare ASGI + {BATCH_ITEMS:,} INSERTs in 1 transaction",
        baseline.rate * BATCH_ITEMS,
        "exchanges/s",
    )


def _load_batches(url: str, headers: dict[str, str], count: int, seconds: float) -> Run:
    """``count`` batch requests from BATCH_CLIENTS threads; each pays around a ring of the
    members, so none is refused (a refused item fails the run)."""
    clients: list[httpx.Client] = []

    def worker(thread: int) -> Operation:
        client = httpx.Client(base_url=url, headers=headers, timeout=60.0)
        clients.append(client)
        items = [
            {"payer": MEMBERS[n % len(MEMBERS)], "payee": MEMBERS[(n + 1) % len(MEMBERS)],
             "minutes": MINUTES, "memo": "bench"}
            for n in range(BATCH_ITEMS)
        ]  # fmt: skip

        def post(i: int) -> None:
            response = client.post("/v1/exchanges/batch", json={"items": items})
            if response.status_code != 200:
                raise BenchError(f"{response.status_code} {response.text[:200]}")
            results = response.json().get("results")
            if results is not None and any(r["status"] != 201 for r in results):
                raise BenchError("a batch item was refused")

        return post

    try:
        return run_threads(worker, threads=BATCH_CLIENTS, count=count, seconds=seconds)
    finally:
        for client in clients:
            client.close()


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
