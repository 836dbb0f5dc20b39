"""A store given to the audit as the wrong participant's (the clearing house's as a bank's, or
the other way round) is told by the topics of its first events, whatever the file is called:
one line, exit 2, instead of a replay full of problems that are not the real one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.audit.eventlog import AnotherLog, open_event_log
from services.clearing import APPLICATION_NAME as CLEARING
from services.clearing.application import Clearing
from services.common.stores import parse_store_url
from services.ledger.application import Ledger

TIMEBANK = Path(sys.executable).parent / "timebank"


@pytest.fixture
def clearing_store(tmp_path: Path) -> str:
    """The clearing house's store, under a name that could be a bank's."""
    url = f"sqlite:///{tmp_path / 'gp.db'}"
    clearing = Clearing(parse_store_url(url))
    clearing.admit_bank("gp", "GP", 600)
    clearing.close()
    return url


@pytest.fixture
def bank_store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'clearing.db'}"
    ledger = Ledger("gp", parse_store_url(url))
    ledger.open_member("maya", "Maya", "person")
    ledger.close()
    return url


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TIMEBANK), "audit", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_clearing_houses_store_is_not_a_banks_log(clearing_store: str) -> None:
    with pytest.raises(AnotherLog, match="not a bank's log: it is the clearing house's log"):
        open_event_log(clearing_store)


def test_a_banks_store_is_not_the_clearing_houses_log(bank_store: str) -> None:
    with pytest.raises(AnotherLog, match="not the clearing house's log: it is a bank's log"):
        open_event_log(bank_store, application=CLEARING)


def test_each_store_opens_as_its_own_log(clearing_store: str, bank_store: str) -> None:
    open_event_log(clearing_store, application=CLEARING).close()
    open_event_log(bank_store).close()


def test_audit_bank_on_the_clearing_houses_store_exits_2_with_one_line(
    clearing_store: str,
) -> None:
    result = audit("bank", "--store", clearing_store)

    assert result.returncode == 2, result.stdout
    [line] = result.stderr.strip().splitlines()
    assert "not a bank's log" in line
    assert "the clearing house's log" in line
    assert result.stdout == ""


def test_audit_federation_with_the_stores_swapped_exits_2_with_one_line(
    clearing_store: str, bank_store: str
) -> None:
    result = audit("federation", "--clearing-store", bank_store, "--bank", f"gp={clearing_store}")

    assert result.returncode == 2, result.stdout
    [line] = result.stderr.strip().splitlines()
    assert "not the clearing house's log" in line
