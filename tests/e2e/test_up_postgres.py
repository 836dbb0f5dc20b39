"""`timebank up` with the clearing house and every bank on PostgreSQL, as in production: a
transfer commits, and the federation's audit replays every log from the database."""

from __future__ import annotations

import secrets
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from services.local.client import FederationClient
from services.local.datadir import read_description
from tests.e2e.test_up import CONFIG, run_timebank
from tests.e2e.test_up_supervised import running_up

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]


def test_up_runs_every_service_on_postgresql_and_the_audit_reads_it_there(
    tmp_path: Path, postgres_url: str
) -> None:
    prefix = f"tb_up_{secrets.token_hex(4)}"
    config, data_dir = tmp_path / "federation.toml", tmp_path / "data"
    config.write_text(f'store_template = "{postgres_url}?schema={prefix}_{{schema}}"\n' + CONFIG)
    try:
        with running_up(config, data_dir):
            described = read_description(data_dir)
            assert described["clearing"]["store"] == f"{postgres_url}?schema={prefix}_clearing"
            assert described["banks"]["rushey-green"]["store"].endswith(
                f"?schema={prefix}_rushey_green"
            )
            with FederationClient(described) as client:
                client.open_member("rushey-green", "maya", "Maya")
                client.open_member("lewisham-college", "bob", "Bob")
                paid = client.transfer("rushey-green", "maya", "lewisham-college", "bob", 45, "")
                assert client.outcome("rushey-green", paid)["status"] == "committed"
        # Nothing of the stores is in the data dir.
        assert not list(data_dir.glob("*.db"))
        audit = run_timebank("audit", "federation", "--data-dir", str(data_dir))
        assert audit.returncode == 0, audit.stdout + audit.stderr
        # Stores on PostgreSQL are backed up with pg_dump: said, and nothing half-made.
        backup = run_timebank("backup", "--data-dir", str(data_dir), "--out", str(tmp_path / "b"))
        assert backup.returncode == 2
        assert "3 of the stores are not in" in backup.stderr
        assert not (tmp_path / "b").exists()
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            for name in ("clearing", "rushey_green", "lewisham_college"):
                schema = sql.Identifier(f"{prefix}_{name}")
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
