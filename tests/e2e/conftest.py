"""Fixtures that run the installed `timebank` command as a real server process on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest

from tests.helpers import AUDITOR_TOKEN, BANK_ID, OPERATOR_TOKEN

# The console script installed next to this interpreter: the command users actually run.
TIMEBANK = Path(sys.executable).parent / "timebank"
HOST = "127.0.0.1"
STARTUP_SECONDS = 20.0
STOP_SECONDS = 10.0
POLL_SECONDS = 0.05


def pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def timebank_env(**overrides: str | None) -> dict[str, str]:
    """The test's environment plus both tokens; an override of None removes the variable."""
    env = {
        **os.environ,
        "TIMEBANK_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "TIMEBANK_AUDITOR_TOKEN": AUDITOR_TOKEN,
    }
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@dataclass
class Server:
    """One running `timebank ledger serve` process and the clients opened against it."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    clients: list[httpx2.Client] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, headers: dict[str, str] | None = None) -> httpx2.Client:
        client = httpx2.Client(base_url=self.base_url, headers=headers or {}, timeout=15.0)
        self.clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()

    def stop(self) -> int:
        """SIGTERM, then wait; a server that has to be killed fails the test. Returns the code."""
        self.close_clients()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_SECONDS)
                pytest.fail(
                    f"the server did not exit within {STOP_SECONDS}s of SIGTERM and was killed;"
                    f" its log:\n{self.log()}"
                )
        return self.process.returncode


def wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"the server exited with {server.process.returncode} before answering /healthz;"
                f" its log:\n{server.log()}"
            )
        try:
            if httpx2.get(f"{server.base_url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx2.TransportError:
            pass  # Not listening yet.
        time.sleep(POLL_SECONDS)
    server.process.kill()
    server.process.wait(timeout=STOP_SECONDS)
    pytest.fail(f"the server did not answer /healthz within {STARTUP_SECONDS}s:\n{server.log()}")


StartServer = Callable[..., Server]


@pytest.fixture
def free_port() -> int:
    """A loopback port nobody is listening on right now."""
    return pick_free_port()


@pytest.fixture
def bank_store_url(tmp_path: Path) -> str:
    """An absolute SQLite file in the test's own directory."""
    return f"sqlite:///{tmp_path}/bank.db"


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start `timebank ledger serve <args> --host 127.0.0.1 --port <free>` and wait for /healthz.

    Call it again to restart the service; every process still running is stopped after the test.
    """
    servers: list[Server] = []

    def start(*args: str, cwd: Path | None = None) -> Server:
        port = pick_free_port()
        # A file, not a pipe: a full pipe would block the server's access log mid-test.
        log_path = tmp_path / f"server-{len(servers)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(TIMEBANK), "ledger", "serve", *args, "--host", HOST, "--port", str(port)],
                env=timebank_env(),
                cwd=cwd or tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = Server(process, f"http://{HOST}:{port}", log_path)
        servers.append(server)
        wait_until_healthy(server)
        return server

    yield start
    for server in servers:
        server.stop()
        assert server.process.poll() is not None, "the server process is still running"


@pytest.fixture
def server(start_server: StartServer, bank_store_url: str) -> Server:
    """The bank BANK_ID served from a SQLite file in the test's directory."""
    return start_server("--bank", BANK_ID, "--store", bank_store_url)
