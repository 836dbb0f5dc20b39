"""`timebank demo`, the README's first command: the story runs and every invariant holds."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.e2e.test_up import processes_using

pytestmark = pytest.mark.timeout(120)


def test_demo_tells_the_story_and_exits_zero_with_every_invariant_holding(
    tmp_path: Path,
) -> None:
    data = tmp_path / "demo"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "timebank"), "demo", "--keep", str(data)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "committed" in out
    assert "aborted (unknown_payee)" in out
    assert "aborted (bank_limit_exceeded)" in out
    assert "All invariants hold" in out
    assert "Positions at the clearing house" in out
    assert "Settlement cycle 1: completed" in out
    assert "Dashboards" in out
    assert "/ui/" in out
    assert "timebank demo --stay" in out
    # Everything it started has stopped; its data stays where it was asked to keep it.
    assert processes_using(data) == []
    assert (data / "federation.json").exists()

    # The logs it wrote pass the audit: every bank's rules, invariants 2-4, every checkpoint.
    audit = subprocess.run(
        [str(Path(sys.executable).parent / "timebank"), "audit", "federation", "--data-dir",
         str(data), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )  # fmt: skip
    assert audit.returncode == 0, audit.stdout + audit.stderr
    verdict = json.loads(audit.stdout)
    assert verdict["ok"] is True
    assert set(verdict["banks"]) == {"rushey-green", "lewisham-college", "deptford-community"}
    assert all(position == 0 for position in verdict["positions"].values())  # settled
    assert all(count >= 1 for count in verdict["checkpoints"].values())  # and checked


def test_demo_stay_keeps_the_dashboards_up_with_logins_until_ctrl_c(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    demo = subprocess.Popen(
        [str(Path(sys.executable).parent / "timebank"), "demo", "--stay", "--keep", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "Ctrl-C stops everything." not in lines[-1:]:
            lines.append(demo.stdout.readline().strip())
        logins = [line.split() for line in lines if " coordinator / " in line]
        assert len(logins) == 3, lines
        # Whole lines (a passphrase is copied from them), on a terminal of any width.
        assert all(len(login) == 7 for login in logins), lines
        bank_id, passphrase = logins[0][0].rstrip(":"), logins[0][3]
        member, member_passphrase = logins[0][4], logins[0][6]
        described = json.loads((data / "federation.json").read_text())
        url = described["banks"][bank_id]["url"]
        body = {"login": "coordinator", "passphrase": passphrase}
        assert httpx.post(f"{url}/v1/sessions", json=body).status_code == 201
        as_member = {"login": member, "passphrase": member_passphrase}
        assert httpx.post(f"{url}/v1/sessions", json=as_member).status_code == 201
        admin_line = next(line for line in lines if "the admin token: " in line)
        token = admin_line.split("the admin token: ")[1].rstrip(")")
        assert token == described["clearing"]["admin_token"]
        login_page = httpx.get(f"{url}/ui/", follow_redirects=True)
        assert login_page.status_code == 200
        assert "Log in" in login_page.text
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(timeout=40)
    assert code == 0
    assert processes_using(data) == []
