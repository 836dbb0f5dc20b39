"""What a Ledger wrote is what a new Ledger opened on the same store reads back."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.utils import get_topic

from services.common.stores import parse_store_url
from services.ledger.application import (
    Ledger,
)
from services.ledger.domain import (
    Account,
    BankPolicy,
)
from services.ledger.domain_terms import (
    SYSTEM_ACCOUNTS,
    UnknownHold,
    account_id,
)

LedgerFactory = Callable[..., Ledger]
MEMBERS = ("maya", "tom", "ali")
BANK = "rushey-green"
SNAPSHOT_INTERVAL = Ledger.snapshotting_intervals[Account]
# More than twice the snapshot interval: a snapshot, later events, another snapshot, more events.
LONG_HISTORY = 450


def write_history(ledger: Ledger) -> None:
    """Members, exchanges both ways, and three holds: one posted, one voided, one left open."""
    for member_id in MEMBERS:
        ledger.open_member(member_id, member_id.title(), "person", overdraft_limit_minutes=300)
    ledger.exchange("maya", "tom", 90, "lift to the hospital")
    ledger.exchange("tom", "ali", 45, "gardening")
    ledger.exchange("ali", "maya", 30, "ironing")
    ledger.place_hold("maya", "h-posted", 20, "ali", "bike repair")
    ledger.place_hold("maya", "h-voided", 25, "tom", "cancelled visit")
    ledger.place_hold("tom", "h-open", 40, "maya", "shopping, not yet done")
    ledger.post_hold("maya", "h-posted")
    ledger.void_hold("maya", "h-voided")


def read_everything(ledger: Ledger) -> dict[str, Any]:
    account_ids = (*MEMBERS, *SYSTEM_ACCOUNTS)
    return {
        "members": {m: ledger.get_member(m) for m in account_ids},
        "statements": {m: ledger.statement(m) for m in account_ids},
        "summary": ledger.summary(),
    }


def reopened_after_history(open_ledger: LedgerFactory) -> tuple[Ledger, dict[str, Any]]:
    """Write the history with one Ledger, close it, and open another on the same store."""
    before = open_ledger()
    write_history(before)
    seen = read_everything(before)
    before.close()
    return open_ledger(), seen


def test_new_ledger_on_the_same_store_reads_the_same_members_statements_and_summary(
    open_ledger: LedgerFactory,
) -> None:
    after, seen_before = reopened_after_history(open_ledger)

    # The history really has an open hold and posted entries, so the comparison means something.
    assert seen_before["members"]["tom"].held_minutes == 40
    assert len(seen_before["statements"]["maya"].entries) == 3
    assert read_everything(after) == seen_before


def test_hold_left_open_can_be_posted_after_a_restart(open_ledger: LedgerFactory) -> None:
    after, seen_before = reopened_after_history(open_ledger)
    tom, maya = seen_before["members"]["tom"], seen_before["members"]["maya"]

    view = after.post_hold("tom", "h-open")

    assert view.held_minutes == tom.held_minutes - 40
    assert view.balance_minutes == tom.balance_minutes - 40
    assert after.get_member("maya").balance_minutes == maya.balance_minutes + 40
    assert after.statement("tom").entries[-1].entry_id == "h-open"
    assert after.summary().total_posted_minutes == 0


@pytest.mark.parametrize(
    ("end", "hold_id"),
    [
        ("post_hold", "h-posted"),
        ("post_hold", "h-voided"),
        ("void_hold", "h-posted"),
        ("void_hold", "h-voided"),
    ],
)
def test_hold_ended_before_a_restart_cannot_be_ended_again(
    open_ledger: LedgerFactory, end: str, hold_id: str
) -> None:
    after, seen_before = reopened_after_history(open_ledger)

    with pytest.raises(UnknownHold):
        getattr(after, end)("maya", hold_id)

    assert read_everything(after) == seen_before


def test_reopening_the_ledger_does_not_open_the_system_accounts_again(
    open_ledger: LedgerFactory,
) -> None:
    first = open_ledger()
    first.open_member("maya", "Maya Okafor", "person")
    first.close()
    open_ledger().close()
    # Two "processes" starting on the same store, both finding the accounts already there.
    open_ledger()
    open_ledger()

    ledger = open_ledger()

    assert ledger.summary().members == 1
    for member_id in SYSTEM_ACCOUNTS:
        events = list(ledger.events.get(account_id(member_id)))
        assert [type(e) for e in events] == [Account.Opened], member_id
        assert ledger.get_member(member_id).kind == "system"
    opened = ledger.recorder.select_notifications(
        start=1, limit=100, topics=[get_topic(Account.Opened)]
    )
    assert len(opened) == len(SYSTEM_ACCOUNTS) + 1


# SQLite only: the store is a file that must outlive every Ledger that opened it.


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'bank.db'}"


def open_sqlite(url: str) -> closing[Ledger]:
    return closing(Ledger(BANK, parse_store_url(url)))


def write_long_history(url: str, exchanges: int) -> list[int]:
    """An early hold, then many exchanges from maya to tom; returns the exchanges' amounts."""
    amounts = [1 + n % 7 for n in range(exchanges)]
    with open_sqlite(url) as ledger:
        ledger.open_member(
            "maya", "Maya Okafor", "person", overdraft_limit_minutes=sum(amounts) + 15
        )
        ledger.open_member("tom", "Tom Reyes", "person")
        ledger.place_hold("maya", "early", 15, "tom", "placed before any snapshot")
        for n, minutes in enumerate(amounts):
            ledger.exchange("maya", "tom", minutes, f"visit {n}")
    return amounts


def test_sqlite_file_keeps_a_long_history_that_reads_back_through_snapshots(
    sqlite_url: str,
) -> None:
    assert LONG_HISTORY > 2 * SNAPSHOT_INTERVAL
    amounts = write_long_history(sqlite_url, LONG_HISTORY)

    assert Path(parse_store_url(sqlite_url).env["SQLITE_DBNAME"]).is_file()
    with open_sqlite(sqlite_url) as ledger:
        # The account is rebuilt from a snapshot plus later events, not only from events.
        assert ledger.snapshots is not None
        assert list(ledger.snapshots.get(account_id("maya")))
        statement = ledger.statement("maya")
        assert len(statement.entries) == LONG_HISTORY
        assert ledger.get_member("maya").balance_minutes == statement.balance_minutes
        assert statement.balance_minutes == -sum(amounts)
        assert ledger.get_member("tom").balance_minutes == sum(amounts)


def test_sqlite_hold_placed_before_a_snapshot_can_be_posted_after_reopening(
    sqlite_url: str,
) -> None:
    amounts = write_long_history(sqlite_url, SNAPSHOT_INTERVAL + 50)

    with open_sqlite(sqlite_url) as ledger:
        assert ledger.snapshots is not None
        assert list(ledger.snapshots.get(account_id("maya")))
        view = ledger.get_member("maya")
        assert view.held_minutes == 15
        assert view.available_minutes == -sum(amounts) - 15
        posted = ledger.post_hold("maya", "early")

    assert posted.held_minutes == 0
    assert posted.balance_minutes == -sum(amounts) - 15
    with open_sqlite(sqlite_url) as ledger:
        assert ledger.get_member("tom").balance_minutes == sum(amounts) + 15


def test_the_default_overdraft_is_recorded_at_start_and_again_only_when_it_changes(
    open_ledger: LedgerFactory,
) -> None:
    def policy_events(ledger: Ledger) -> list[int]:
        events = ledger.events.get(BankPolicy.create_id())
        return [e.default_overdraft_minutes for e in events]  # type: ignore[attr-defined]

    first = open_ledger(default_overdraft_minutes=600)
    assert policy_events(first) == [600]
    assert policy_events(open_ledger(default_overdraft_minutes=600)) == [600]
    lowered = open_ledger(default_overdraft_minutes=300)
    assert policy_events(lowered) == [600, 300]
