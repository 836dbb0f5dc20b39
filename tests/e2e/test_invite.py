"""A bank's first coordinator, the way an operator brings them in on a running federation:
`timebank up` says where the dashboards are, `timebank invite` prints a one-time code, and the
coordinator sets a passphrase with it and logs in."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.e2e.test_up import CONFIG, run_timebank
from tests.e2e.test_up_supervised import running_up

pytestmark = pytest.mark.timeout(180)


def test_up_prints_the_dashboards_and_invite_brings_in_a_coordinator_then_a_member(
    tmp_path: Path,
) -> None:
    config, data_dir = tmp_path / "federation.toml", tmp_path / "data"
    config.write_text(CONFIG)
    with running_up(config, data_dir) as up:
        described = json.loads((data_dir / "federation.json").read_text())
        gp = described["banks"]["rushey-green"]
        invited = run_timebank(
            "invite",
            "rushey-green",
            "sam",
            "--coordinator",
            "Sam Reid",
            "--data-dir",
            str(data_dir),
        )
        assert invited.returncode == 0, invited.stderr
        first = invited.stdout.splitlines()[0]
        assert first.startswith("coordinator sam at rushey-green: code ")
        assert f"{gp['url']}/ui/welcome" in invited.stdout
        code = first.rsplit(" ", 1)[1]
        body = {"login": "sam", "code": code, "passphrase": "a long enough passphrase"}
        accepted = httpx.post(f"{gp['url']}/v1/invitations/accept", json=body)
        assert accepted.status_code == 201, accepted.text
        sam = {"Authorization": f"Bearer {accepted.json()['token']}"}
        opened = httpx.post(
            f"{gp['url']}/v1/members",
            json={"member_id": "maya", "name": "Maya", "kind": "person"},
            headers=sam,
        )
        assert opened.status_code == 201, opened.text
        member = run_timebank("invite", "rushey-green", "maya", "--data-dir", str(data_dir))
        assert member.returncode == 0, member.stderr
        assert member.stdout.startswith("member maya at rushey-green: code ")
        unknown = run_timebank("invite", "rushey-green", "nobody", "--data-dir", str(data_dir))
        assert unknown.returncode == 2
        assert "unknown_member" in unknown.stderr
        assert len(unknown.stderr.strip().splitlines()) == 1
        up.terminate()
        printed = up.communicate(timeout=40)[0]
    assert f"federation (clearing admin): {described['clearing']['url']}/ui/" in printed
    assert f"rushey-green (coordinators, members): {gp['url']}/ui/" in printed
    assert "timebank invite BANK ID --coordinator" in printed
