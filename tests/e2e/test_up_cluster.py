"""`timebank up --nats-cluster 3`: the federation on a three-node NATS JetStream cluster, every
stream on all three nodes, as the deployment across hosts runs it (with PostgreSQL stores too,
when the suite is given a server): transfers commit, a NATS node killed is started again by
`up` and transfers go on committing, and the audit passes."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from services.local.client import FederationClient
from services.local.datadir import read_description
from tests.e2e.test_up import CONFIG, TIMEBANK, run_timebank, wait_for
from tests.e2e.test_up_supervised import pid_of_or_none

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_template(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    server: str = request.getfixturevalue("postgres_url")
    prefix = f"tb_cl_{secrets.token_hex(4)}"
    yield f"{server}?schema={prefix}_{{schema}}"
    with psycopg.connect(server, autocommit=True) as conn:
        for name in ("clearing", "rushey_green", "lewisham_college"):
            schema = sql.Identifier(f"{prefix}_{name}")
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))


def test_up_on_a_three_node_cluster_survives_a_node_and_audits(
    tmp_path: Path, store_template: str | None
) -> None:
    config, data_dir = tmp_path / "federation.toml", tmp_path / "data"
    config.write_text(CONFIG.replace("deadline_seconds = 5", "deadline_seconds = 30"))
    command = [str(TIMEBANK), "up", "--config", str(config), "--data-dir", str(data_dir)]
    command += ["--nats-cluster", "3"]
    if store_template:
        command += ["--store-template", store_template]
    up = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for((data_dir / "federation.json").exists, 90, "federation.json")
        described = read_description(data_dir)
        assert len(described["nats_url"].split(",")) == 3
        with FederationClient(described) as client:
            client.open_member("rushey-green", "maya", "Maya", overdraft_limit_minutes=1000)
            client.open_member("lewisham-college", "bob", "Bob")
            first = client.transfer("rushey-green", "maya", "lewisham-college", "bob", 30, "")
            assert client.outcome("rushey-green", first)["status"] == "committed"
            node = pid_of_or_none(data_dir, "timebank-1.server.conf")
            assert node is not None
            os.kill(node, signal.SIGKILL)
            sent = [
                client.transfer("rushey-green", "maya", "lewisham-college", "bob", 1, f"{n}")
                for n in range(20)
            ]
            for transfer_id in sent:
                assert client.outcome("rushey-green", transfer_id, 60)["status"] == "committed"
            wait_for(
                lambda: (pid_of_or_none(data_dir, "timebank-1.server.conf") or node) != node,
                60,
                "up to start the node again",
            )
            members = {"rushey-green": ["maya"], "lewisham-college": ["bob"]}
            assert client.wait_until_settled(members, 60)
            assert client.check_invariants(members) == []
            assert client.member("lewisham-college", "bob")["balance_minutes"] == 50
    finally:
        up.send_signal(signal.SIGTERM)
        output = up.communicate(timeout=60)[0]
    assert up.returncode == 0, output
    audit = run_timebank("audit", "federation", "--data-dir", str(data_dir))
    assert audit.returncode == 0, audit.stdout + audit.stderr
