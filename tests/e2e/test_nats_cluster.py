"""The federation on a 3-node NATS JetStream cluster, its streams on all three nodes: one node
killed (SIGKILL) while 300+ transfers cross it, then started again. Every transfer is decided
and committed once everywhere, invariants 1-5 hold, and the node that was killed catches up."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from services.local.client import FederationClient
from services.local.config import BankConfig, ClearingConfig, FederationConfig
from services.local.federation import LocalFederation
from services.local.nats_cluster import NatsCluster
from shared.bus import Bus, connect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

GP, COLLEGE, COMMUNITY = "rushey-green", "lewisham-college", "deptford-community"
MEMBERS = {GP: ["amara"], COLLEGE: ["priya"], COMMUNITY: ["tom"]}
# Each route pays its own amount, so the positions say which transfers committed.
ROUTES = [
    (GP, "amara", COLLEGE, "priya", 1),
    (COLLEGE, "priya", COMMUNITY, "tom", 2),
    (COMMUNITY, "tom", GP, "amara", 3),
]
PER_ROUTE = 110
TIMEBANK = Path(sys.executable).parent / "timebank"


def federation_config() -> FederationConfig:
    """No transfer may abort for its deadline while a node is down: all must commit."""
    return FederationConfig(
        clearing=ClearingConfig(deadline_seconds=300),
        banks=[
            BankConfig(id=GP, name="Rushey Green", limit_minutes=100_000),
            BankConfig(id=COLLEGE, name="Lewisham College", limit_minutes=100_000),
            BankConfig(id=COMMUNITY, name="Deptford Community", limit_minutes=100_000),
        ],
    )


async def stream_setup(url: str, bus: Bus) -> tuple[dict[str, int], dict[str, int], str]:
    """Each stream's replicas and message count (JetStream's stream info, from its leader),
    and the leader of the stream the banks send to."""
    nc = await connect(url, "test")
    try:
        js = nc.jetstream()
        infos = {s.name or "": await js.stream_info(s.name or "") for s in bus.streams()}
    finally:
        await nc.close()
    leader = infos[bus.to_clearing_stream].cluster
    assert leader is not None
    assert leader.leader
    return (
        {name: info.config.num_replicas or 1 for name, info in infos.items()},
        {name: info.state.messages for name, info in infos.items()},
        leader.leader,
    )


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s: {what}")
        time.sleep(0.05)


def test_a_nats_node_killed_during_300_transfers_loses_nothing_and_catches_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The clearing house sets up the streams: at 3 replicas, one on each node.
    # (LocalFederation has no option for it; its services inherit this environment.)
    monkeypatch.setenv("TIMEBANK_STREAM_REPLICAS", "3")
    with NatsCluster(tmp_path / "nats") as cluster:
        federation = LocalFederation(federation_config(), tmp_path / "fed", nats_url=cluster.url)
        with federation, FederationClient(federation.describe()) as client:
            for bank_id, members in MEMBERS.items():
                for member_id in members:
                    client.open_member(bank_id, member_id, member_id.title())
            replicas, _, leader = asyncio.run(stream_setup(cluster.url, federation.bus))
            assert replicas == dict.fromkeys(replicas, 3)
            assert len(replicas) == 3
            # The leader of the banks' stream: its loss forces an election mid-transfers.
            victim = [server.name for server in cluster.servers].index(leader)

            failures: list[str] = []

            def send(route: tuple[str, str, str, str, int]) -> None:
                payer_bank, payer, payee_bank, payee, minutes = route
                for n in range(PER_ROUTE):
                    try:
                        client.transfer(payer_bank, payer, payee_bank, payee, minutes, f"#{n}")
                    except Exception as e:
                        failures.append(f"{payer_bank} #{n}: {e!r}")
                    time.sleep(0.05)

            senders = [threading.Thread(target=send, args=(route,)) for route in ROUTES]
            for sender in senders:
                sender.start()
            try:
                wait_for(lambda: len(client.transfers) >= 90, 60, "90 transfers asked for")
                cluster.stop_node(victim, kill=True)
                wait_for(lambda: len(client.transfers) >= 240, 60, "240 transfers asked for")
                cluster.start_node(victim)
            finally:
                for sender in senders:
                    sender.join(timeout=120)
            assert not any(sender.is_alive() for sender in senders)
            # The banks take every transfer: a hold and an outbox entry, whatever NATS does.
            assert failures == []
            assert len(client.transfers) == 3 * PER_ROUTE

            assert client.wait_until_settled(MEMBERS, seconds=120)
            expected = dict.fromkeys(client.transfers, "committed")
            assert client.check_invariants(MEMBERS, expected) == []
            paid = {GP: 1 * PER_ROUTE, COLLEGE: 2 * PER_ROUTE, COMMUNITY: 3 * PER_ROUTE}
            received = {GP: 3 * PER_ROUTE, COLLEGE: 1 * PER_ROUTE, COMMUNITY: 2 * PER_ROUTE}
            positions = {bank: received[bank] - paid[bank] for bank in MEMBERS}
            assert client.clearing("/v1/positions")["positions"] == positions

            # The node that was killed holds what the others hold, and what JetStream says.
            def caught_up() -> bool:
                _, counts, _ = asyncio.run(stream_setup(cluster.url, federation.bus))
                per_node = [cluster.stream_messages(i) for i in range(3)]
                return all(node == counts for node in per_node)

            wait_for(caught_up, 60, "every node's copy of every stream to be the same")
            counts = cluster.stream_messages(victim)
            assert counts[federation.bus.to_clearing_stream] >= 3 * PER_ROUTE
            assert counts[federation.bus.to_banks_stream] >= 2 * 3 * PER_ROUTE

            # The logs, replayed from their first events, agree: nothing posted twice or lost.
            federation.stop()
            audit = subprocess.run(
                [str(TIMEBANK), "audit", "federation", "--data-dir", str(federation.data_dir),
                 "--format", "json"],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert audit.returncode == 0, audit.stdout + audit.stderr
            verdict = json.loads(audit.stdout)
            assert verdict["ok"] is True
            assert verdict["positions"] == positions
