"""`timebank up` as an operator runs it for real: one run per data dir, no orphans, the same
URLs and tokens across restarts, the config's changes applied at the clearing house, crashed
services started again, and a bank joining a running federation."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from services.local.client import FederationClient
from services.local.datadir import read_description
from tests.e2e.test_up import CONFIG, TIMEBANK, processes_using, run_timebank, wait_for

pytestmark = pytest.mark.timeout(240)

ONE_BANK_LESS = CONFIG.split("[[banks]]")[0] + "[[banks]]" + CONFIG.split("[[banks]]")[1]


@contextmanager
def running_up(config: Path, data_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """`timebank up` in the background until the block ends (SIGTERM, then a clean exit)."""
    described = data_dir / "federation.json"
    before = described.stat().st_mtime_ns if described.exists() else 0
    up = subprocess.Popen(
        [str(TIMEBANK), "up", "--config", str(config), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(
            lambda: described.exists() and described.stat().st_mtime_ns != before,
            60,
            "federation.json to be written",
        )
        yield up
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=40)


def clearing_banks(described: dict[str, Any]) -> dict[str, dict[str, Any]]:
    clearing = described["clearing"]
    response = httpx.get(
        f"{clearing['url']}/v1/banks",
        headers={"Authorization": f"Bearer {clearing['admin_token']}"},
    )
    return {bank["bank_id"]: bank for bank in response.json()["banks"]}


def test_a_second_up_is_refused_and_sigkill_of_up_leaves_no_process_behind(
    tmp_path: Path,
) -> None:
    config, data_dir = tmp_path / "federation.toml", tmp_path / "data"
    config.write_text(CONFIG)
    with running_up(config, data_dir) as up:
        written = (data_dir / "federation.json").read_text()
        second = run_timebank("up", "--config", str(config), "--data-dir", str(data_dir))
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"error: {data_dir.resolve()} is in use by another `timebank up` (pid {up.pid}); "
            "stop it first, or give this one another --data-dir"
        ]
        # Nothing of the running federation was touched.
        assert (data_dir / "federation.json").read_text() == written
        # `up` itself, NATS, the clearing house and two banks.
        assert len(processes_using(data_dir)) == 5
        up.kill()
        up.wait(timeout=10)
        wait_for(lambda: processes_using(data_dir) == [], 30, "every child to exit")


def test_a_restart_keeps_urls_and_tokens_applies_the_configs_changes_and_suspends_a_removed_bank(
    tmp_path: Path,
) -> None:
    config, data_dir = tmp_path / "federation.toml", tmp_path / "data"
    config.write_text(CONFIG)
    with running_up(config, data_dir):
        first = read_description(data_dir)
    raw = json.loads((data_dir / "federation.json").read_text())
    # Paths are relative to the data dir, so a copy of it describes the copy.
    assert raw["clearing"]["store"] == "sqlite:///clearing.db"
    assert raw["banks"]["rushey-green"]["signing_key"] == "keys/rushey-green.key"

    config.write_text(
        ONE_BANK_LESS.replace("limit_minutes = 600", "limit_minutes = 900").replace(
            "Rushey Green Time Bank (GP surgery)", "Rushey Green Time Bank"
        )
    )
    with running_up(config, data_dir) as up:
        second = read_description(data_dir)
        banks = clearing_banks(second)
        up.send_signal(signal.SIGTERM)
        output = up.communicate(timeout=40)[0]
    for key in ("nats_url",):
        assert second[key] == first[key]
    for key in ("url", "admin_token"):
        assert second["clearing"][key] == first["clearing"][key]
    gp_first, gp_second = first["banks"]["rushey-green"], second["banks"]["rushey-green"]
    for key in ("url", "operator_token", "clearing_token"):
        assert gp_second[key] == gp_first[key]
    assert (banks["rushey-green"]["name"], banks["rushey-green"]["limit_minutes"]) == (
        "Rushey Green Time Bank",
        900,
    )
    assert banks["lewisham-college"]["status"] == "suspended"
    assert "warning: lewisham-college is no longer in the config" in output
    assert "rushey-green: applied the config's change at the clearing house" in output

    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    assert read_description(copy)["clearing"]["store"] == f"sqlite:///{copy / 'clearing.db'}"


def pid_of(data_dir: Path, marker: str) -> int:
    """The pid of the federation's process whose command line holds ``marker``."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with suppress(OSError):
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(data_dir) in text and marker in text and int(cmdline.parent.name) != os.getpid():
                return int(cmdline.parent.name)
    raise AssertionError(f"no process with {marker!r}")


@pytest.mark.slow
def test_a_killed_clearing_house_bank_or_nats_is_started_again_and_every_transfer_is_decided(
    tmp_path: Path,
) -> None:
    config, data_dir = tmp_path / "federation.toml", tmp_path / "data"
    # A deadline well past a restart: every transfer should commit.
    config.write_text(CONFIG.replace("deadline_seconds = 5", "deadline_seconds = 30"))
    members = {"rushey-green": ["maya"], "lewisham-college": ["bob"]}
    recovery: dict[str, float] = {}
    with running_up(config, data_dir), FederationClient(read_description(data_dir)) as client:
        client.open_member("rushey-green", "maya", "Maya", overdraft_limit_minutes=10_000)
        client.open_member("lewisham-college", "bob", "Bob", overdraft_limit_minutes=10_000)
        sent: list[str] = []

        def pay(count: int) -> None:
            """``count`` transfers, each way in turn."""
            ends = [("rushey-green", "maya"), ("lewisham-college", "bob")]
            for n in range(count):
                (payer_bank, payer), (payee_bank, payee) = ends[n % 2], ends[1 - n % 2]
                sent.append(client.transfer(payer_bank, payer, payee_bank, payee, 1, "shift"))

        pay(4)
        for victim, marker in (
            ("clearing", "clearing serve"),
            ("rushey-green", "--bank rushey-green"),
            ("nats", "nats-server"),
        ):
            pay(6)  # in flight as the victim dies
            os.kill(pid_of(data_dir, marker), signal.SIGKILL)
            killed = time.monotonic()
            # Recovered when a transfer asked for just after the kill has committed (its payer
            # bank, the college's, is up throughout; the victim is on its path).
            probe = client.transfer("lewisham-college", "bob", "rushey-green", "maya", 1, "probe")
            sent.append(probe)
            assert client.outcome("lewisham-college", probe, seconds=60)["status"] == "committed"
            recovery[victim] = time.monotonic() - killed
            if victim != "nats":  # started again where it was
                url = (
                    client.described["clearing"]["url"]
                    if victim == "clearing"
                    else client.described["banks"]["rushey-green"]["url"]
                )
                assert serving(url)
            else:
                assert pid_of_or_none(data_dir, marker) is not None
            pay(6)
        outcomes = {t: client.outcome(client.transfers[t][0], t, seconds=60) for t in sent}
        decided = {(o["status"], o.get("reason")) for o in outcomes.values()}
        assert decided == {("committed", None)}
        assert client.wait_until_settled(members, seconds=60)
        assert client.check_invariants(members) == []
    print("recovery, kill to a new transfer committed (s):", recovery)


def serving(url: str) -> bool:
    with suppress(httpx.HTTPError):
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    return False


def pid_of_or_none(data_dir: Path, marker: str) -> int | None:
    try:
        return pid_of(data_dir, marker)
    except AssertionError:
        return None


def test_a_bank_joins_a_running_federation_pays_and_is_paid_settles_and_is_audited(
    tmp_path: Path,
) -> None:
    config, data_dir = tmp_path / "federation.toml", tmp_path / "data"
    config.write_text(CONFIG)
    with running_up(config, data_dir):
        joined = run_timebank(
            "join", "--bank", "peckham", "--name", "Peckham Time Bank", "--limit-minutes",
            "600", "--data-dir", str(data_dir),
        )  # fmt: skip
        assert joined.returncode == 0, joined.stderr
        described = read_description(data_dir)
        assert "peckham" in described["banks"]
        assert f"serving at {described['banks']['peckham']['url']}" in joined.stdout
        with FederationClient(described) as client:
            client.open_member("peckham", "pat", "Pat")
            client.open_member("rushey-green", "maya", "Maya")
            paid = client.transfer("rushey-green", "maya", "peckham", "pat", 90, "garden")
            back = client.transfer("peckham", "pat", "rushey-green", "maya", 30, "lift")
            for payer_bank, transfer_id in (("rushey-green", paid), ("peckham", back)):
                assert client.outcome(payer_bank, transfer_id)["status"] == "committed"
            assert client.member("peckham", "pat")["balance_minutes"] == 60
            cycle = client.open_settlement()
            [obligation] = cycle["obligations"]
            assert (obligation["debtor"], obligation["creditor"]) == ("rushey-green", "peckham")
            confirmed = client.ok(client.confirm_obligation(cycle["settlement_id"], 1, "peckham"))
            assert confirmed["status"] == "completed"
            assert client.wait_until_mirrored()
        # A backup taken while it runs is a data dir of its own.
        copy = tmp_path / "backup"
        backup = run_timebank("backup", "--data-dir", str(data_dir), "--out", str(copy))
        assert backup.returncode == 0, backup.stderr
        assert "4 stores copied" in backup.stdout
    for audited in (data_dir, copy):
        audit = run_timebank("audit", "federation", "--data-dir", str(audited))
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert "peckham" in audit.stdout
    # Restored: `up` runs the copy, with every balance as it was.
    with running_up(config, copy), FederationClient(read_description(copy)) as client:
        assert client.member("peckham", "pat")["balance_minutes"] == 60
        assert client.member("rushey-green", "maya")["balance_minutes"] == -60
        # and the bus (made anew: the stores hold every outbox and inbox position) carries on.
        again = client.transfer("peckham", "pat", "rushey-green", "maya", 15, "again")
        assert client.outcome("peckham", again)["status"] == "committed"


def test_ports_set_in_the_config_are_the_ports_served_and_logs_can_be_json(
    tmp_path: Path,
) -> None:
    from services.local.config import BankConfig, ClearingConfig, FederationConfig
    from services.local.federation import LocalFederation
    from services.local.nats_server import free_ports

    nats, clearing, bank = free_ports("127.0.0.1", 3)
    config = FederationConfig(
        banks=[BankConfig(id="gp", name="GP", limit_minutes=600, port=bank)],
        clearing=ClearingConfig(port=clearing),
        nats_port=nats,
    )
    with LocalFederation(config, tmp_path / "data", log_format="json") as federation:
        described = federation.describe()
        assert described["nats_url"] == f"nats://127.0.0.1:{nats}"
        assert described["clearing"]["url"] == f"http://127.0.0.1:{clearing}"
        assert described["banks"]["gp"]["url"] == f"http://127.0.0.1:{bank}"
        assert serving(described["banks"]["gp"]["url"])
    lines = (tmp_path / "data" / "logs" / "gp.log").read_text().splitlines()
    assert lines
    assert all(isinstance(json.loads(line), dict) for line in lines)


def test_a_new_run_waits_for_an_earlier_runs_children_to_stop_and_names_any_that_do_not(
    tmp_path: Path,
) -> None:
    """After `up` is killed its children stop on their own (they were told to), but not at
    once; a new `up` on the same dir waits for them rather than fight over the stores."""
    import sys

    from services.local.processes import FederationError, leftover_children, wait_for_leftovers

    data_dir = tmp_path / "data"
    # A stand-in for a bank still stopping: its command line names the dir, as a service's does.
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "ledger", "serve", str(data_dir)]
    )
    try:
        wait_for(lambda: child.pid in leftover_children(data_dir), 10, "the child to be seen")
        with pytest.raises(FederationError, match=f"earlier run still use .*{child.pid}"):
            wait_for_leftovers(data_dir, seconds=0.5)
        began = time.monotonic()
        threading.Timer(1.0, child.terminate).start()
        wait_for_leftovers(data_dir, seconds=20)
        assert time.monotonic() - began >= 0.9
    finally:
        child.kill()
        child.wait()
    assert leftover_children(data_dir) == []
