"""`timebank audit bank` as operators run it: the installed console script on real stores; exit
0 when every check holds, 1 when one fails, 2 when the store cannot be audited (one line, no
traceback, nothing created)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.common.stores import parse_store_url
from services.ledger.application import (
    Ledger,
)
from tests.helpers import run_in_terminal

TIMEBANK = Path(sys.executable).parent / "timebank"
TIMEOUT_SECONDS = 60


def run_audit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TIMEBANK), "audit", "bank", *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )


def write_bank(url: str) -> Ledger:
    ledger = Ledger("gp", parse_store_url(url))
    for member_id in ("maya", "ali"):
        ledger.open_member(member_id, member_id.title(), "person")
    ledger.exchange("maya", "ali", 60, "a lift")
    ledger.place_hold("ali", "h1", 15, "maya", "shopping")
    return ledger


@pytest.fixture
def bank(store_url: str) -> str:
    """A small bank's store (SQLite, or PostgreSQL when configured) with the ledger closed."""
    write_bank(store_url).close()
    return store_url


@pytest.fixture
def sqlite_bank(tmp_path: Path) -> Path:
    path = tmp_path / "gp.db"
    write_bank(f"sqlite:///{path}").close()
    return path


def damage(path: Path) -> int:
    """Edit the first credit's minutes in the file; returns its position."""
    with closing(sqlite3.connect(path)) as conn:
        position, state = conn.execute(
            "SELECT rowid, state FROM stored_events WHERE topic LIKE '%Account.Credited' "
            "ORDER BY rowid LIMIT 1"
        ).fetchone()
        edited = {**json.loads(state), "minutes": 61}
        conn.execute(
            "UPDATE stored_events SET state = ? WHERE rowid = ?",
            (json.dumps(edited).encode(), position),
        )
        conn.commit()
    return int(position)


def test_a_sound_log_exits_0_with_the_balances_and_a_verdict(bank: str, tmp_path: Path) -> None:
    result = run_audit("--store", bank, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for text in ("maya", "ali", "federation", "-60", "45", "OK"):
        assert text in result.stdout
    assert "chain head at position" in result.stdout


def test_json_output_is_one_object_with_the_documented_keys(bank: str, tmp_path: Path) -> None:
    result = run_audit("--store", bank, "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    verdict: dict[str, Any] = json.loads(result.stdout)
    assert {"bank", "events", "until", "balances", "problems", "ok"} <= set(verdict)
    assert verdict["ok"] is True
    assert verdict["problems"] == []
    assert verdict["until"] is None
    assert verdict["events"] > 0
    assert verdict["balances"]["ali"] == {
        "kind": "person",
        "posted_minutes": 60,
        "held_minutes": 15,
        "available_minutes": 45,
        "overdraft_limit_minutes": 600,
    }
    assert len(verdict["chain"]["head"]) == 64


def test_a_damaged_log_exits_1_naming_the_event_and_the_rule(
    sqlite_bank: Path, tmp_path: Path
) -> None:
    position = damage(sqlite_bank)
    result = run_audit("--store", f"sqlite:///{sqlite_bank}", "--format", "json", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["ok"] is False
    assert {"position": position, "rule": "double-entry"} in [
        {"position": p["position"], "rule": p["rule"]} for p in verdict["problems"]
    ]
    assert all(set(p) == {"position", "event", "rule", "detail"} for p in verdict["problems"])


def test_a_damaged_log_shown_as_a_table_says_failed(sqlite_bank: Path, tmp_path: Path) -> None:
    damage(sqlite_bank)
    result = run_audit("--store", f"sqlite:///{sqlite_bank}", cwd=tmp_path)
    assert result.returncode == 1
    assert "double-entry" in result.stdout
    assert "FAILED" in result.stdout


def test_until_gives_the_balances_of_that_moment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gp.db'}"
    ledger = write_bank(url)
    time.sleep(0.01)
    moment = datetime.now(UTC)
    time.sleep(0.01)
    ledger.exchange("ali", "maya", 20, "gardening")
    ledger.close()
    result = run_audit(
        "--store", url, "--until", moment.isoformat(), "--format", "json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["balances"]["ali"]["posted_minutes"] == 60
    assert datetime.fromisoformat(verdict["until"]) == moment


def test_an_until_without_an_offset_is_taken_as_utc(sqlite_bank: Path, tmp_path: Path) -> None:
    result = run_audit(
        "--store", f"sqlite:///{sqlite_bank}", "--until", "2000-01-01T00:00", "--format", "json",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["until"] == "2000-01-01T00:00:00+00:00"
    assert verdict["events"] == 0


def test_the_banks_default_overdraft_limit_comes_from_its_log(
    sqlite_bank: Path, tmp_path: Path
) -> None:
    """The ledger records its default at start: a wrong one given to the audit changes nothing."""
    url = f"sqlite:///{sqlite_bank}"
    result = run_audit("--store", url, "--overdraft-limit-minutes", "30", cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert "OK" in result.stdout


def test_the_default_given_applies_to_a_log_that_does_not_record_one(
    sqlite_bank: Path, tmp_path: Path
) -> None:
    # A log written before the ledger recorded its default: remove the record.
    with closing(sqlite3.connect(sqlite_bank)) as conn:
        conn.execute("DELETE FROM stored_events WHERE topic LIKE '%BankPolicy.%'")
        conn.commit()
    url = f"sqlite:///{sqlite_bank}"
    too_low = run_audit("--store", url, "--overdraft-limit-minutes", "30", "--format", "json",
                        cwd=tmp_path)  # fmt: skip
    assert too_low.returncode == 1
    assert {p["rule"] for p in json.loads(too_low.stdout)["problems"]} >= {"invariant-5"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("--store", "sqlite:///missing/bank.db"), "no SQLite file", id="missing"),
        pytest.param(("--store", "ftp://x"), "scheme must be", id="bad-url"),
        pytest.param(("--store", "memory://"), "in-memory", id="memory"),
        pytest.param(
            ("--store", "sqlite:///bank.db", "--until", "last tuesday"),
            "not an ISO 8601",
            id="bad-until",
        ),
    ],
)
def test_unusable_input_exits_2_with_one_line_and_no_traceback(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    (tmp_path / "bank.db").touch()
    result = run_audit(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "missing").exists()


def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "bank.db"
    result = run_audit("--store", f"sqlite:///{path}", cwd=tmp_path)
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_file_that_is_not_an_event_store_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE other (x)")
        conn.commit()
    result = run_audit("--store", f"sqlite:///{path}", cwd=tmp_path)
    assert result.returncode == 2
    assert "no stored_events table" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_postgresql_exits_2(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{_free_port()}/test"
    result = run_audit("--store", url, cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot use PostgreSQL" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.postgres
def test_a_postgresql_schema_without_a_bank_exits_2(postgres_url: str, tmp_path: Path) -> None:
    result = run_audit("--store", f"{postgres_url}?schema=tb_audit_nothing_here", cwd=tmp_path)
    assert result.returncode == 2
    assert "no ledger_events table" in result.stderr


def test_no_progress_bar_when_piped(sqlite_bank: Path, tmp_path: Path) -> None:
    result = run_audit("--store", f"sqlite:///{sqlite_bank}", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr == ""
    json.loads(result.stdout)


def test_a_progress_bar_on_a_terminal(sqlite_bank: Path, tmp_path: Path) -> None:
    code, output = run_in_terminal(
        [str(TIMEBANK), "audit", "bank", "--store", f"sqlite:///{sqlite_bank}"], tmp_path
    )
    assert code == 0
    assert b"replaying" in output
    assert b"OK" in output


def test_an_interrupted_audit_exits_130_not_1(
    sqlite_bank: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from services.audit import replay
    from services.cli import app

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(replay, "audit_bank", interrupted)
    result = CliRunner().invoke(app, ["audit", "bank", "--store", f"sqlite:///{sqlite_bank}"])
    assert result.exit_code == 130
    assert "interrupted" in result.output
