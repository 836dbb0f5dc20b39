"""`timebank up`: a whole federation as real processes, driven over HTTP from federation.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

pytestmark = pytest.mark.timeout(120)

TIMEBANK = Path(sys.executable).parent / "timebank"
CONFIG = """
[clearing]
deadline_seconds = 5

[[banks]]
id = "rushey-green"
name = "Rushey Green Time Bank (GP surgery)"
limit_minutes = 600

[[banks]]
id = "lewisham-college"
name = "Lewisham College Time Bank"
limit_minutes = 600
"""


def processes_using(path: Path) -> list[str]:
    """Command lines of live processes, other than this test's, that mention ``path`` (the
    federation's data dir)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        if int(cmdline.parent.name) == os.getpid():
            continue
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in text and not _is_zombie(cmdline.parent):
            found.append(text)
    return found


def _is_zombie(proc: Path) -> bool:
    try:
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def wait_for(check: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_up_runs_a_federation_that_commits_a_transfer_and_stops_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "federation.toml"
    config.write_text(CONFIG)
    data_dir = tmp_path / "data"
    up = subprocess.Popen(
        [str(TIMEBANK), "up", "--config", str(config), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        described_path = data_dir / "federation.json"
        wait_for(described_path.exists, 60, "federation.json")
        described = json.loads(described_path.read_text())
        assert described["nats_url"].startswith("nats://127.0.0.1:")
        assert set(described["banks"]) == {"rushey-green", "lewisham-college"}
        assert described_path.stat().st_mode & 0o077 == 0  # it holds tokens

        gp, college = described["banks"]["rushey-green"], described["banks"]["lewisham-college"]

        def auth(bank: dict[str, str]) -> dict[str, str]:
            return {"Authorization": f"Bearer {bank['operator_token']}"}

        for bank, member in ((gp, "maya"), (college, "bob")):
            body = {"member_id": member, "name": member.title(), "kind": "person"}
            assert httpx.post(f"{bank['url']}/v1/members", json=body, headers=auth(bank)).is_success

        transfer = {
            "payer": "maya",
            "to_bank": "lewisham-college",
            "payee": "bob",
            "minutes": 60,
            "memo": "evening class",
        }

        def request() -> httpx.Response | None:
            # Until the bank has heard the directory from the clearing house: 404 unknown_bank.
            r = httpx.post(f"{gp['url']}/v1/transfers", json=transfer, headers=auth(gp))
            return r if r.status_code == 202 else None

        transfer_id = wait_for(request, 20, "the directory to reach the bank").json()["transfer_id"]

        def settled() -> bool:
            status = httpx.get(f"{gp['url']}/v1/transfers/{transfer_id}", headers=auth(gp))
            return bool(status.json()["status"] == "committed")

        wait_for(settled, 20, "the transfer to commit")
        bob = httpx.get(f"{college['url']}/v1/members/bob", headers=auth(college)).json()
        assert bob["balance_minutes"] == 60
        positions = httpx.get(
            f"{described['clearing']['url']}/v1/positions",
            headers={"Authorization": f"Bearer {described['clearing']['admin_token']}"},
        ).json()
        assert positions == {
            "positions": {"rushey-green": -60, "lewisham-college": 60},
            "sum_minutes": 0,
        }

        # The partner institutions settle, from the command line.
        settle = run_timebank("settle", "--data-dir", str(data_dir))
        assert settle.returncode == 0, settle.stderr
        assert "rushey-green" in settle.stdout
        assert "lewisham-college" in settle.stdout
        assert "1h 00m" in settle.stdout
        not_creditor = run_timebank(
            "settle", "confirm", "1", "1", "--bank", "rushey-green", "--data-dir", str(data_dir)
        )
        assert not_creditor.returncode == 2
        assert "not_creditor" in not_creditor.stderr
        assert len(not_creditor.stderr.strip().splitlines()) == 1
        confirm = run_timebank(
            "settle", "confirm", "1", "1", "--bank", "lewisham-college", "--data-dir", str(data_dir)
        )
        assert confirm.returncode == 0, confirm.stderr
        assert "cycle completed" in confirm.stdout

        def mirrored() -> bool:
            federation = httpx.get(f"{gp['url']}/v1/members/federation", headers=auth(gp)).json()[
                "balance_minutes"
            ]
            settlement = httpx.get(f"{gp['url']}/v1/members/settlement", headers=auth(gp)).json()[
                "balance_minutes"
            ]
            return bool(federation == 0 and settlement == 60)

        wait_for(mirrored, 20, "the surgery's bank to post the settlement")
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=40)
    assert code == 0, (up.stdout.read() if up.stdout else b"").decode()
    assert processes_using(data_dir) == []


def run_timebank(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TIMEBANK), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_settle_without_a_running_federation_says_where_it_looked(tmp_path: Path) -> None:
    result = run_timebank("settle", "--data-dir", str(tmp_path / "nowhere"))

    assert result.returncode == 2
    assert "federation.json" in result.stderr
    assert "timebank up" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_with_a_bad_config_names_the_line_and_starts_nothing(tmp_path: Path) -> None:
    config = tmp_path / "federation.toml"
    config.write_text(
        CONFIG.replace("limit_minutes = 600\n\n[[banks]]", 'limit_minutes = "lots"\n\n[[banks]]')
    )
    result = subprocess.run(
        [str(TIMEBANK), "up", "--config", str(config), "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "line 8:" in result.stderr
    assert "limit_minutes" in result.stderr
    assert "Traceback" not in result.stderr
    assert processes_using(tmp_path / "data") == []
