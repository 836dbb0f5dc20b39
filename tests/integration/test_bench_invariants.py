"""The bench's verdicts on real stores: a ledger's log that the audit passes is a check that
held; one with a doctored event, or one that cannot be read, is a check that did not, and then
the bench says the invariants did not hold."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from rich.console import Console

from services.bench.invariants import Check, audit_bank_store, audit_federation_stores
from services.bench.report import print_report
from services.bench.run import BenchResult
from services.common.stores import parse_store_url
from services.ledger.application import Ledger
from services.ledger.domain_terms import DEFAULT_OVERDRAFT_MINUTES


@pytest.fixture
def bank_url(tmp_path: Path) -> str:
    """A bank's log written by the real Ledger: three members, three exchanges."""
    url = f"sqlite:///{tmp_path / 'bank.db'}"
    ledger = Ledger("bench-ledger", parse_store_url(url))
    for member_id in ("maya", "ali", "tom"):
        ledger.open_member(member_id, member_id.title(), "person")
    ledger.exchange("maya", "ali", 60, "a lift")
    ledger.exchange("maya", "tom", 40, "gardening")
    ledger.exchange("ali", "tom", 15, "shopping")
    ledger.close()
    return url


def doctor_first_credit(url: str, minutes: int) -> None:
    """Change the amount of the log's first credit in the file, as an intruder would."""
    path = parse_store_url(url).env["SQLITE_DBNAME"]
    with closing(sqlite3.connect(path)) as conn:
        rowid, state = conn.execute(
            "SELECT rowid, state FROM stored_events WHERE topic LIKE '%Account.Credited' "
            "ORDER BY rowid LIMIT 1"
        ).fetchone()
        changed = json.loads(state) | {"minutes": minutes}
        conn.execute(
            "UPDATE stored_events SET state = ? WHERE rowid = ?",
            (json.dumps(changed).encode(), rowid),
        )
        conn.commit()


def result_with(*checks: Check) -> BenchResult:
    return BenchResult(
        quick=True,
        store="SQLite",
        figures=[],
        checks=list(checks),
        notes=[],
        load_before=(0.0, 0.0, 0.0),
        load_after=(0.0, 0.0, 0.0),
        seconds=1.0,
    )


def printed(result: BenchResult) -> str:
    console = Console(record=True, width=200)
    print_report(console, result)
    return console.export_text()


def test_an_untouched_ledger_log_is_a_check_that_held(bank_url: str) -> None:
    check = audit_bank_store("bank", bank_url, DEFAULT_OVERDRAFT_MINUTES)
    assert check.held, check.detail
    result = result_with(check)
    assert result.invariants_held
    assert "invariants held: yes" in printed(result)


def test_a_doctored_event_in_a_ledger_log_is_a_check_that_did_not_hold(bank_url: str) -> None:
    doctor_first_credit(bank_url, minutes=400)
    check = audit_bank_store("bank", bank_url, DEFAULT_OVERDRAFT_MINUTES)
    assert not check.held
    assert "double-entry" in check.detail
    result = result_with(check)
    assert not result.invariants_held
    assert result.to_json()["invariants"]["held"] is False
    text = printed(result)
    assert "invariants held: no" in text
    assert "invariants held: yes" not in text


def test_a_ledger_store_that_cannot_be_read_is_a_check_that_did_not_hold(tmp_path: Path) -> None:
    check = audit_bank_store("bank", f"sqlite:///{tmp_path / 'gone.db'}", 600)
    assert not check.held
    assert "cannot be audited" in check.detail


def test_federation_stores_that_cannot_be_read_are_a_check_that_did_not_hold(
    tmp_path: Path, bank_url: str
) -> None:
    check = audit_federation_stores(
        f"sqlite:///{tmp_path / 'no-clearing.db'}",
        {"bench-ledger": bank_url},
        {"bench-ledger": 600},
    )
    assert not check.held
    assert "cannot be audited" in check.detail
