"""NatsCluster: three real nats-servers as one JetStream cluster, with the federation's users;
streams kept on all three; a client of the URL list carries on when its node is killed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js import JetStreamContext

from services.local.nats_cluster import NatsCluster
from services.local.nats_config import write_auth_config
from services.local.nats_server import NatsServer, NatsServerError
from shared.bus import Bus, StreamSetupError, connect
from shared.nats_users import new_seed
from shared.protocol import CLEARING

BANK = "gp"
# Long enough for a stream to elect a new leader after its leader is killed.
ACK_DEADLINE_SECONDS = 30


@pytest.fixture
def seeds(tmp_path: Path) -> dict[str, Path]:
    keys = tmp_path / "keys"
    keys.mkdir()
    return {name: keys / f"{name}.nk" for name in (CLEARING, BANK)}


@pytest.fixture
def cluster(tmp_path: Path, seeds: dict[str, Path]) -> Iterator[tuple[NatsCluster, Bus]]:
    """A cluster whose nodes have the federation's users: the clearing house's and a bank's."""
    bus = Bus("tc", stream_replicas=3)
    clearing = new_seed(seeds[CLEARING])
    users = tmp_path / "conf" / "nats-auth.conf"
    users.parent.mkdir()
    write_auth_config(users, bus, clearing, [(BANK, new_seed(seeds[BANK]))])
    with NatsCluster(tmp_path / "nats", users_file=users) as running:
        yield running, bus


async def anonymous_refused(url: str) -> bool:
    """Whether the node refuses a client with no credentials for want of them (not because
    it is down). The refusal is expected, so it is not logged as an error."""

    async def expected(e: Exception) -> None:
        pass

    try:
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2, error_cb=expected)
    except nats.errors.Error as e:
        return "Authorization Violation" in str(e)
    await nc.close()
    return False


async def publish(js: JetStreamContext, subject: str, n: int) -> None:
    """Publish message n until JetStream acknowledges it, pausing between tries as the outbox
    relay does. One in flight when a node dies gets no answer; and until the stream elects a
    new leader (a few seconds, when the node killed led it) JetStream answers at once that
    no one listens. Its Nats-Msg-Id makes a repeat harmless."""
    deadline = time.monotonic() + ACK_DEADLINE_SECONDS
    tries = 0
    while True:
        try:
            await js.publish(subject, f"{n}".encode(), timeout=2, headers={"Nats-Msg-Id": f"{n}"})
            return
        except nats.errors.Error as e:
            tries += 1
            if time.monotonic() > deadline:
                pytest.fail(f"message {n} was never acknowledged ({tries} tries, last: {e!r})")
            await asyncio.sleep(min(0.1 * 2**tries, 1.0))


def same_everywhere(cluster: NatsCluster, stream: str, count: int) -> bool:
    """Whether every node's own copy of the stream holds ``count`` messages, within 10 s."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(cluster.stream_messages(i).get(stream) == count for i in range(3)):
            return True
        time.sleep(0.1)
    return False


def test_every_node_has_the_users_and_keeps_every_stream_and_a_client_outlives_its_node(
    cluster: tuple[NatsCluster, Bus], seeds: dict[str, Path]
) -> None:
    running, bus = cluster
    urls = running.url.split(",")
    assert len(urls) == 3
    assert all(url.startswith("nats://127.0.0.1:") for url in urls)

    async def scenario() -> None:
        for url in urls:
            assert await anonymous_refused(url), f"{url} let an anonymous client in"
        nc = await connect(
            running.url,
            "clearing",
            seed_file=seeds[CLEARING],
            inbox_prefix=bus.inbox_prefix(CLEARING),
        )
        try:
            js = nc.jetstream()
            await bus.ensure_streams(js)
            info = await js.stream_info(bus.to_banks_stream)
            assert info.config.num_replicas == 3
            assert info.cluster is not None
            assert len(info.cluster.replicas or []) == 2
            for n in range(10):
                await publish(js, bus.to_bank(BANK), n)
            # Kill the node this client is connected to: it goes on through another.
            assert nc.connected_url is not None
            index = urls.index(f"nats://127.0.0.1:{nc.connected_url.port}")
            running.stop_node(index, kill=True)
            for n in range(10, 20):
                await publish(js, bus.to_bank(BANK), n)
            assert nc.connected_url is not None
            assert f"nats://127.0.0.1:{nc.connected_url.port}" != urls[index]
            assert (await js.stream_info(bus.to_banks_stream)).state.messages == 20
            running.start_node(index)
        finally:
            await nc.close()

    asyncio.run(scenario())
    # The node killed caught up on what was published while it was down.
    assert same_everywhere(running, bus.to_banks_stream, 20)


def test_streams_on_one_server_move_to_three_when_the_clearing_house_says_so(
    tmp_path: Path,
) -> None:
    """A clearing house started again with --stream-replicas 3 moves the existing streams
    onto every node, messages and all."""
    one, three = Bus("tm"), Bus("tm", stream_replicas=3)
    with NatsCluster(tmp_path / "nats") as running:

        async def scenario() -> None:
            nc = await connect(running.url, "test")
            try:
                js = nc.jetstream()
                await one.ensure_streams(js)
                assert (await js.stream_info(one.to_clearing_stream)).config.num_replicas == 1
                for _ in range(5):
                    await js.publish(one.to_clearing(BANK), b"m")
                await three.ensure_streams(js)
                for stream in three.streams():
                    info = await js.stream_info(stream.name or "")
                    assert info.config.num_replicas == 3
                assert (await js.stream_info(one.to_clearing_stream)).state.messages == 5
            finally:
                await nc.close()

        asyncio.run(scenario())
        assert same_everywhere(running, three.to_clearing_stream, 5)


def test_three_replicas_on_a_single_server_is_refused_saying_why(
    nats_server: NatsServer,
) -> None:
    async def scenario() -> None:
        nc = await connect(nats_server.url, "test")
        try:
            with pytest.raises(StreamSetupError) as refused:
                await Bus("ts", stream_replicas=3).ensure_streams(nc.jetstream())
        finally:
            await nc.close()
        message = str(refused.value)
        assert message.startswith("NATS refused stream TS_TO_CLEARING with 3 replica(s): ")
        assert "non-clustered" in message
        assert message.endswith(
            "A single NATS server keeps 1 replica, a cluster of N servers up to N"
        )

    asyncio.run(scenario())


def test_a_cluster_whose_users_file_is_missing_does_not_start_and_says_why(
    tmp_path: Path,
) -> None:
    running = NatsCluster(tmp_path / "nats", users_file=tmp_path / "conf" / "users.conf")
    with pytest.raises(NatsServerError, match=r"error parsing include file 'users\.conf'"):
        running.start(timeout=10)
    assert not any(server.running for server in running.servers)
