"""Figures beside their baselines, percentiles, and load loops bounded in count and time."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

# An operation of a load loop: called with its number (0, 1, ...) within its thread's share.
Operation = Callable[[int], None]
# Makes one thread's operation, given the thread's number: per-thread state (a client, a pair
# of members) lives in its closure.
Worker = Callable[[int], Operation]


class BenchError(RuntimeError):
    """The bench could not measure something; the message says what and why."""


@dataclass(frozen=True)
class Figure:
    """One measured figure, beside the baseline measured in the same run."""

    key: str
    name: str
    value: float
    baseline_name: str
    baseline: float
    unit: str
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        """The figure over its baseline (0 when the baseline is 0, i.e. was not measured)."""
        return self.value / self.baseline if self.baseline else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "figure": self.name,
            "value": self.value,
            "baseline_figure": self.baseline_name,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "unit": self.unit,
            "better": "higher" if self.higher_is_better else "lower",
        }


@dataclass
class Run:
    """What a load loop did: operations completed, wall time, each one's latency (seconds)."""

    planned: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, percent: float) -> float:
        return percentile(self.latencies, percent) * 1000

    def shortfall(self, what: str) -> str | None:
        """A note when the loop did not complete every operation planned, else None."""
        if self.done == self.planned and not self.errors:
            return None
        first = f"; first error: {self.errors[0]}" if self.errors else ""
        return f"{what}: {self.done} of {self.planned} completed, {len(self.errors)} failed{first}"


def percentile(samples: list[float], percent: float) -> float:
    """The nearest-rank percentile (0 for no samples)."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * percent // 100))
    return ordered[min(len(ordered), int(rank)) - 1]


def shares(count: int, threads: int) -> list[int]:
    """``count`` operations split as evenly as possible over ``threads``."""
    base, extra = divmod(count, threads)
    return [base + (1 if t < extra else 0) for t in range(threads)]


def run_threads(
    worker: Worker, *, threads: int, count: int, seconds: float, warmup: int = 0
) -> Run:
    """``count`` operations from ``threads`` threads at once, each thread doing its share one
    after another; a thread stops early once ``seconds`` have passed since the start. Each
    thread first does ``warmup`` operations of its own, untimed, before they all start."""
    run = Run(planned=count)
    lock = threading.Lock()
    operations = [worker(t) for t in range(threads)]
    start = threading.Barrier(threads + 1)

    def loop(thread: int, share: int) -> None:
        operation = operations[thread]
        latencies: list[float] = []
        try:
            for i in range(warmup):
                operation(-1 - i)
        except Exception as e:
            with lock:
                run.errors.append(f"warm-up: {type(e).__name__}: {e}")
        start.wait()
        deadline = time.perf_counter() + seconds
        for i in range(share):
            if time.perf_counter() > deadline:
                break
            began = time.perf_counter()
            try:
                operation(i)
            except Exception as e:  # counted and shown, not raised: the others go on
                with lock:
                    run.errors.append(f"{type(e).__name__}: {e}")
                continue
            latencies.append(time.perf_counter() - began)
        with lock:
            run.latencies.extend(latencies)

    pool = [
        threading.Thread(target=loop, args=(t, share), name=f"bench-{t}", daemon=True)
        for t, share in enumerate(shares(count, threads))
    ]
    for thread in pool:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in pool:
        thread.join(seconds + 60)
    run.seconds = time.perf_counter() - began
    return run


def run_paced(worker: Worker, *, threads: int, count: int, rate: float, seconds: float) -> Run:
    """``count`` operations started on a fixed schedule, ``rate`` per second (open loop), by
    whichever of ``threads`` threads is free; none starts after ``seconds``."""
    run = Run(planned=count)
    lock = threading.Lock()
    operations = [worker(t) for t in range(threads)]
    next_number = iter(range(count))
    start = threading.Barrier(threads + 1)
    interval = 1.0 / rate
    origin = 0.0

    def loop(thread: int) -> None:
        operation = operations[thread]
        start.wait()
        done = 0
        while True:
            with lock:
                number = next(next_number, None)
            if number is None:
                return
            due = origin + number * interval
            if due - origin > seconds:
                return
            time.sleep(max(0.0, due - time.perf_counter()))
            began = time.perf_counter()
            try:
                operation(done)
            except Exception as e:
                with lock:
                    run.errors.append(f"{type(e).__name__}: {e}")
                continue
            finally:
                done += 1
            with lock:
                run.latencies.append(time.perf_counter() - began)

    pool = [threading.Thread(target=loop, args=(t,), daemon=True) for t in range(threads)]
    for thread in pool:
        thread.start()
    origin = time.perf_counter() + 0.05
    start.wait()
    for thread in pool:
        thread.join(seconds + 60)
    run.seconds = time.perf_counter() - origin
    return run


def cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) a process has used so far, from Linux's /proc; None when it
    cannot be read (another system, a process gone)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Where CPU time went during a run, by process: ``with meter: ...`` then ``note()``."""

    def __init__(self, what: str, pids: dict[str, int | None]) -> None:
        self.what = what
        self.pids = pids
        self.before: dict[str, float | None] = {}
        self.used: dict[str, float] = {}
        self.wall = 0.0

    def __enter__(self) -> Self:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.before["the bench's clients"] = time.process_time()
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        after = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        after["the bench's clients"] = time.process_time()
        for name, start in self.before.items():
            end = after.get(name)
            if start is not None and end is not None:
                self.used[name] = end - start

    def note(self) -> str:
        parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.used.items())
        wall = f"{self.wall:.1f} s wall, {os.cpu_count()} cores"
        return f"CPU seconds during {self.what} ({wall}): {parts}"
