"""The federation's child processes: started so they die with their parent, watched, and
restarted with backoff when they crash."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx2 as httpx

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
# A crashed child waits 1, 2, 4 ... seconds before each new start, at most this long;
BACKOFF_MAX_SECONDS = 30.0
# and one that then ran this long is counted as healthy again (its next crash waits 1 s).
HEALTHY_AFTER_SECONDS = 60.0
_PR_SET_PDEATHSIG = 1


class FederationError(RuntimeError):
    """A part of the local federation failed to start; the message says which and why."""


def die_with_parent() -> None:
    """In a child between fork and exec: ask Linux to send it SIGTERM when its parent dies,
    however the parent dies (SIGKILL included), so no child outlives `timebank up`."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


@dataclass
class Service:
    name: str
    url: str
    token: str
    # A bank's own token at the clearing house's API (to confirm settlement receipts).
    clearing_token: str | None = None
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    cwd: Path | None = None
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = field(default=None, repr=False)
    # Supervision: when it last started, how many crashes in a row, when it may start again.
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self) -> None:
        assert self.log_path is not None
        self.log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 (this interpreter, our arguments, no shell)
            self.argv,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            # Its own session: Ctrl-C at the terminal reaches `up`, which stops them in order.
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.started_at = time.monotonic()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def reap(self) -> None:
        """Wait for a signalled process to end (killing it if it takes too long); close its
        log."""
        if self.process is not None:
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", self.name)
                self.process.kill()
                self.process.wait(timeout=5)
            self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def wait_healthy(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise FederationError(f"{self.name} exited at start-up: {self.tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise FederationError(f"{self.name} did not start: {self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 15) -> str:
        if self.log_path is None:
            return "(no log)"
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def crashed(self, now: float) -> float:
        """Note that the process ended on its own; returns the seconds until it may start
        again (1, 2, 4 ... up to BACKOFF_MAX_SECONDS; 1 again after a healthy run)."""
        code = self.process.returncode if self.process is not None else None
        if now - self.started_at >= HEALTHY_AFTER_SECONDS:
            self.crashes = 0
        self.crashes += 1
        delay = min(2.0 ** (self.crashes - 1), BACKOFF_MAX_SECONDS)
        self.reap()
        self.restart_at = now + delay
        log.warning(
            "%s exited (code %s); starting it again in %.0f s (crash %d in a row)",
            self.name,
            code,
            delay,
            self.crashes,
        )
        return delay


def leftover_children(data_dir: Path) -> list[int]:
    """Services and NATS servers still running on ``data_dir`` (Linux's /proc): children of an
    earlier `up` that was killed and are still finishing."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        ours = str(data_dir) in text and (" serve " in text or "nats-server" in text)
        if ours and state != "Z" and int(cmdline.parent.name) != os.getpid():
            found.append(int(cmdline.parent.name))
    return found


def wait_for_leftovers(data_dir: Path, seconds: float = STOP_TIMEOUT_SECONDS) -> None:
    """Wait until an earlier run's children have stopped (they were told to when it died);
    FederationError if some are still running after ``seconds``."""
    deadline = time.monotonic() + seconds
    while pids := leftover_children(data_dir):
        if time.monotonic() > deadline:
            raise FederationError(
                f"processes of an earlier run still use {data_dir} (pids "
                f"{', '.join(map(str, pids))}); stop them first"
            )
        time.sleep(0.2)
