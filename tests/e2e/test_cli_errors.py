"""The `timebank` command given what an operator gets wrong (a stopped federation, a folder in
use, a store or port another service holds, the wrong store): each failure is one line on
stderr and exit 2, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from services.local.nats_server import NatsServer
from shared.signing import SigningKey
from tests.e2e.conftest import TIMEBANK, StartServer, pick_free_port, timebank_env
from tests.helpers import BANK_ID

pytestmark = pytest.mark.timeout(120)

SURGERY = "rushey-green"


def timebank(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TIMEBANK), *args],
        cwd=cwd,
        env=timebank_env(TIMEBANK_ADMIN_TOKEN="admin-" + "x" * 24),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def serve(bank: str, store: str, port: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return timebank("ledger", "serve", "--bank", bank, "--store", store, "--port", port, cwd=cwd)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command writes, after checking it exited 2 and wrote no more."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data dir of a federation that ran (the demo's) and has stopped."""
    data = tmp_path_factory.mktemp("stopped") / "federation"
    result = timebank("demo", "--keep", str(data))
    assert result.returncode == 0, result.stdout + result.stderr
    return data


# A stopped federation.


def test_settle_on_a_stopped_federation_names_the_url_and_says_to_start_it(
    stopped: Path,
) -> None:
    clearing_url = json.loads((stopped / "federation.json").read_text())["clearing"]["url"]

    line = one_line_error(timebank("settle", "--data-dir", str(stopped)))

    assert f"cannot reach {clearing_url}/v1/settlements" in line
    assert "is the federation running?" in line
    assert "timebank up" in line


def test_settle_confirm_on_a_stopped_federation_is_one_line_too(stopped: Path) -> None:
    line = one_line_error(
        timebank("settle", "confirm", "1", "1", "--bank", SURGERY, "--data-dir", str(stopped))
    )
    assert "cannot reach" in line
    assert "timebank up" in line


# The demo's folder.


def test_demo_keep_on_a_folder_that_holds_a_federation_refuses_and_changes_nothing(
    stopped: Path,
) -> None:
    before = {p: p.stat().st_mtime_ns for p in stopped.rglob("*")}

    line = one_line_error(timebank("demo", "--keep", str(stopped)))

    assert "not empty" in line
    assert {p: p.stat().st_mtime_ns for p in stopped.rglob("*")} == before


# The audit of a federation with some of its stores given by hand.


def damaged_copy(source: Path, target: Path) -> Path:
    """A copy of a bank's store with its first credit's minutes changed."""
    shutil.copy(source, target)
    with closing(sqlite3.connect(target)) as conn:
        rowid, state = conn.execute(
            "SELECT rowid, state FROM stored_events WHERE topic LIKE '%Account.Credited' "
            "ORDER BY rowid LIMIT 1"
        ).fetchone()
        edited = {**json.loads(state), "minutes": json.loads(state)["minutes"] + 1}
        conn.execute(
            "UPDATE stored_events SET state = ? WHERE rowid = ?",
            (json.dumps(edited).encode(), rowid),
        )
        conn.commit()
    return target


def test_audit_federation_with_data_dir_and_bank_audits_the_given_store_in_its_place(
    stopped: Path, tmp_path: Path
) -> None:
    copy = damaged_copy(stopped / f"{SURGERY}.db", tmp_path / "copy.db")

    as_described = timebank("audit", "federation", "--data-dir", str(stopped))
    replaced = timebank(
        *("audit", "federation", "--data-dir", str(stopped)),
        *("--bank", f"{SURGERY}=sqlite:///{copy}", "--format", "json"),
    )

    assert as_described.returncode == 0, as_described.stdout + as_described.stderr
    assert replaced.returncode == 1, replaced.stdout + replaced.stderr
    verdict = json.loads(replaced.stdout)
    assert set(verdict["banks"]) == {SURGERY, "lewisham-college", "deptford-community"}
    assert verdict["banks"][SURGERY]["ok"] is False


def test_audit_federation_refuses_a_bank_that_is_not_in_the_federation(stopped: Path) -> None:
    line = one_line_error(
        timebank(
            *("audit", "federation", "--data-dir", str(stopped)),
            *("--bank", f"peckham=sqlite:///{stopped / 'rushey-green.db'}"),
        )
    )
    assert "peckham is not a bank" in line
    assert SURGERY in line


# The wrong store.


def test_audit_bank_on_the_clearing_houses_store_says_it_is_not_a_banks_log(
    stopped: Path,
) -> None:
    line = one_line_error(
        timebank("audit", "bank", "--store", f"sqlite:///{stopped / 'clearing.db'}")
    )
    assert "not a bank's log" in line
    assert "the clearing house's log" in line


def test_a_bank_is_not_served_on_the_clearing_houses_store(stopped: Path, tmp_path: Path) -> None:
    store = tmp_path / "clearing.db"
    shutil.copy(stopped / "clearing.db", store)
    before = store.read_bytes()

    line = one_line_error(serve(SURGERY, f"sqlite:///{store}", str(pick_free_port()), cwd=tmp_path))

    assert "not a bank's log" in line
    assert store.read_bytes() == before


# One service per store, and the default store.


def test_a_second_service_on_the_same_store_is_refused_with_one_line(
    start_server: StartServer, bank_store_url: str, tmp_path: Path
) -> None:
    first = start_server("--bank", BANK_ID, "--store", bank_store_url)

    line = one_line_error(serve(BANK_ID, bank_store_url, str(pick_free_port()), cwd=tmp_path))

    assert "in use by another service" in line
    assert f"pid {first.process.pid}" in line
    assert first.client().get("/healthz").status_code == 200


def test_the_store_is_free_again_once_its_service_is_killed(
    start_server: StartServer, bank_store_url: str
) -> None:
    first = start_server("--bank", BANK_ID, "--store", bank_store_url)
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(timeout=10)

    again = start_server("--bank", BANK_ID, "--store", bank_store_url)

    assert again.client().get("/healthz").status_code == 200


def test_ledger_serve_in_the_folder_up_runs_in_does_not_open_the_federations_store(
    start_server: StartServer, stopped: Path, tmp_path: Path
) -> None:
    """Started with no --store from the folder where `up` keeps its timebank-data."""
    cwd = tmp_path / "operator"
    shutil.copytree(stopped, cwd / "timebank-data")
    federation_store = cwd / "timebank-data" / f"{SURGERY}.db"
    before = federation_store.read_bytes()

    server = start_server("--bank", SURGERY, cwd=cwd)
    server.stop()

    assert f"store SQLite file {cwd / (SURGERY + '.ledger.db')}" in server.log()
    assert federation_store.read_bytes() == before


# A port in use, an address not here.


def test_a_port_in_use_is_refused_with_one_line_before_the_store_is_made(
    start_server: StartServer, bank_store_url: str, tmp_path: Path
) -> None:
    first = start_server("--bank", BANK_ID, "--store", bank_store_url)
    port = first.base_url.rsplit(":", 1)[1]
    store = tmp_path / "other.db"

    line = one_line_error(serve(BANK_ID, f"sqlite:///{store}", port, cwd=tmp_path))

    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert "give another --port" in line
    assert not store.exists()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        pytest.param(("--port", "70000"), "a port is a number from 0 to 65535", id="port"),
        pytest.param(("--host", "no-such-host.invalid"), "not an address", id="host"),
    ],
)
def test_an_address_that_cannot_be_listened_on_is_refused(
    tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    for service in (("ledger", "serve", "--bank", BANK_ID), ("clearing", "serve")):
        line = one_line_error(timebank(*service, *args, cwd=tmp_path))
        assert said in line
    assert list(tmp_path.iterdir()) == []


# Data dirs and descriptions that cannot be used.


def test_up_on_a_data_dir_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "federation.toml"
    config.write_text('[[banks]]\nid = "gp"\nname = "GP"\nlimit_minutes = 60\n')
    (tmp_path / "a-file").write_text("")

    line = one_line_error(
        timebank("up", "--config", str(config), "--data-dir", str(tmp_path / "a-file" / "data"))
    )

    assert "cannot use" in line
    assert "Not a directory" in line


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("settle",), id="settle"),
        pytest.param(("settle", "confirm", "1", "1", "--bank", "gp"), id="settle-confirm"),
        pytest.param(("join", "--bank", "gp", "--name", "GP", "--limit-minutes", "5"), id="join"),
        pytest.param(("audit", "federation"), id="audit"),
    ],
)
@pytest.mark.parametrize(
    "description",
    [
        pytest.param("[1, 2]", id="not-an-object"),
        pytest.param('{"clearing": {}, "banks": {}}', id="no-clearing-house"),
        pytest.param("{not json", id="not-json"),
    ],
)
def test_a_description_that_is_not_a_federations_is_one_line(
    tmp_path: Path, command: tuple[str, ...], description: str
) -> None:
    (tmp_path / "federation.json").write_text(description)

    line = one_line_error(timebank(*command, "--data-dir", str(tmp_path)))

    assert str(tmp_path) in line


def test_backup_of_a_description_without_stores_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "federation.json").write_text('{"clearing": {}, "banks": {}}')

    line = one_line_error(
        timebank("backup", "--data-dir", str(tmp_path), "--out", str(tmp_path / "copy"))
    )

    assert "does not describe a federation" in line


@pytest.mark.parametrize("url", ["peckham.example", "http://peckham.example:99999"])
def test_join_with_a_url_that_is_not_a_banks_is_one_line(tmp_path: Path, url: str) -> None:
    line = one_line_error(
        timebank(
            *("join", "--bank", "peckham", "--name", "P", "--limit-minutes", "5"),
            *("--data-dir", str(tmp_path), "--url", url),
        )
    )
    assert f"--url {url}" in line
    assert list(tmp_path.iterdir()) == []


def test_stream_replicas_one_server_cannot_keep_is_one_line_and_exit_2(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """NATS refuses three replicas on a server that is not in a cluster; the clearing house
    says so in one line and stops, rather than serve without its streams."""
    key = tmp_path / "clearing.key"
    SigningKey.generate().save(key)
    result = timebank(
        "clearing", "serve", "--port", str(pick_free_port()), "--nats-url", nats_server.url,
        "--signing-key", str(key), "--stream-replicas", "3", "--log-level", "error",
        cwd=tmp_path,
    )  # fmt: skip
    line = one_line_error(result)
    assert "replicas" in line


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("up",), "Missing option '--config'"),
        (("ledger", "serve", "--bank", BANK_ID, "--port", "eighty"), "Invalid value for '--port'"),
        (("bogus",), "No such command 'bogus'"),
    ],
)
def test_a_usage_error_is_one_line_too(tmp_path: Path, args: tuple[str, ...], said: str) -> None:
    assert said in one_line_error(timebank(*args, cwd=tmp_path))
