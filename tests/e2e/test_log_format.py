"""`timebank ledger serve --log-format json`: every line the server writes, uvicorn's access log
included, is one JSON object."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.e2e.conftest import TIMEBANK, StartServer, timebank_env
from tests.helpers import BANK_ID


def test_json_log_format_writes_one_json_object_per_line_access_log_included(
    start_server: StartServer, bank_store_url: str
) -> None:
    server = start_server("--bank", BANK_ID, "--store", bank_store_url, "--log-format", "json")
    client = server.client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert server.stop() == 0

    lines = [line for line in server.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]
    assert entries, server.log()
    # The CLI's own announcement (store and URL) is a record like the others.
    assert entries[0]["message"].startswith(f"bank {BANK_ID}: store ")
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert {(e["method"], e["path"], e["status"]) for e in access} >= {
        ("GET", "/healthz", 200),
        ("GET", "/readyz", 200),
    }
    assert any(e["logger"] == "uvicorn.error" and e["level"] == "INFO" for e in entries)


def test_an_unknown_log_format_is_refused_with_a_usage_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(TIMEBANK), "ledger", "serve", "--bank", BANK_ID, "--log-format", "xml"],
        env=timebank_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--log-format" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
