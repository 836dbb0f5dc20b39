"""A bank's reports (/v1/reports): activity per calendar month in UTC, quiet months as zeros,
members by status with their balances (a closed member's included), the impact report as
JSON and as CSV, and cross-bank figures from a real two-bank federation over NATS."""

from __future__ import annotations

import csv
import dataclasses
import io
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import pytest
from eventsourcing.domain import Aggregate
from fastapi.testclient import TestClient

from services.ledger.application import Ledger
from services.ledger.domain import Account
from services.ledger.domain_terms import EntryKind
from services.ledger.reports import IMPACT_COLUMNS, Window, hours_text, monthly_report
from shared.bus import Bus
from tests.helpers import assert_problem
from tests.integration.service_federation import OPERATOR, served_federation, wait_until

Headers = dict[str, str]
ZERO_STATUS = {"members": 0, "balance_minutes": 0}


def this_month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


def open_members(client: TestClient, operator: Headers, *member_ids: str) -> None:
    for member_id in member_ids:
        new = {"member_id": member_id, "name": member_id.title(), "kind": "person"}
        response = client.post("/v1/members", json=new, headers=operator)
        assert response.status_code == 201, response.text


def pay(client: TestClient, operator: Headers, payer: str, payee: str, minutes: int) -> int:
    body = {"payer": payer, "payee": payee, "minutes": minutes, "memo": ""}
    return client.post("/v1/exchanges", json=body, headers=operator).status_code


def report(client: TestClient, headers: Headers, name: str, start: str, end: str) -> Any:
    response = client.get(f"/v1/reports/{name}", params={"from": start, "to": end}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def month_row(month: str, exchanges: int, minutes: int, active: int, new: int) -> dict[str, Any]:
    return {
        "month": month,
        "exchanges": exchanges,
        "exchanged_minutes": minutes,
        "active_members": active,
        "new_members": new,
    }


def impact_row(month: str, *figures: int) -> dict[str, Any]:
    """A row from its figures in column order (hours left out: derived from the minutes)."""
    exchanges, minutes, active, new, out, out_minutes, in_, in_minutes = figures
    return {
        "month": month,
        "exchanges": exchanges,
        "exchanged_minutes": minutes,
        "hours": hours_text(minutes),
        "active_members": active,
        "new_members": new,
        "transfers_out": out,
        "transfers_out_minutes": out_minutes,
        "transfers_in": in_,
        "transfers_in_minutes": in_minutes,
    }


# History recorded with dates of its own: accounts changed by their own rules, their events
# stored as they would have been on those dates (as a bank bringing its earlier books).


def record_at(ledger: Ledger, at: datetime, *aggregates: Aggregate) -> None:
    events = [
        dataclasses.replace(cast(Aggregate.Event, e), timestamp=at)
        for a in aggregates
        for e in a.collect_events()
    ]
    ledger.record_events(events)


def exchange(payer: Account, payee: Account, minutes: int) -> tuple[Account, Account]:
    entry = f"{payer.member_id}-{payee.member_id}-{minutes}"
    payer.debit(entry, minutes, payee.member_id, "", EntryKind.EXCHANGE, 600)
    payee.credit(entry, minutes, payer.member_id, "", EntryKind.EXCHANGE)
    return payer, payee


def test_months_are_calendar_months_in_utc_and_quiet_ones_are_zeros(
    client: TestClient, auditor: Headers
) -> None:
    ledger: Ledger = client.app.state.application  # type: ignore[attr-defined]
    ann, bob = Account.open("ann", "Ann", "person"), Account.open("bob", "Bob", "person")
    record_at(ledger, datetime(2026, 1, 15, 12, tzinfo=UTC), ann, bob)
    # Still 31 January where it was recorded, already February in UTC.
    record_at(
        ledger,
        datetime(2026, 1, 31, 23, 30, tzinfo=timezone(-timedelta(hours=1))),
        *exchange(ann, bob, 90),
    )
    cat = Account.open("cat", "Cat", "person")
    record_at(ledger, datetime(2026, 4, 1, 0, 0, tzinfo=UTC), cat)
    record_at(ledger, datetime(2026, 4, 30, 23, 59, 59, tzinfo=UTC), *exchange(bob, cat, 45))
    record_at(ledger, datetime(2026, 4, 10, tzinfo=UTC), *exchange(ann, cat, 20))
    # Next month in UTC: outside a window that ends in April.
    record_at(
        ledger,
        datetime(2026, 4, 30, 23, 30, tzinfo=timezone(timedelta(hours=-1))),
        *exchange(cat, ann, 5),
    )

    monthly = report(client, auditor, "monthly", "2025-12", "2026-04")
    assert (monthly["first_month"], monthly["last_month"]) == ("2025-12", "2026-04")
    assert monthly["months"] == [
        month_row("2025-12", 0, 0, 0, 0),
        month_row("2026-01", 0, 0, 0, 2),
        month_row("2026-02", 1, 90, 2, 0),
        month_row("2026-03", 0, 0, 0, 0),
        month_row("2026-04", 2, 65, 3, 1),
    ]
    impact = report(client, auditor, "impact", "2026-02", "2026-05")
    assert impact["months"] == [
        impact_row("2026-02", 1, 90, 2, 0, 0, 0, 0, 0),
        impact_row("2026-03", 0, 0, 0, 0, 0, 0, 0, 0),
        impact_row("2026-04", 2, 65, 3, 1, 0, 0, 0, 0),
        impact_row("2026-05", 1, 5, 2, 0, 0, 0, 0, 0),
    ]
    # Each person counted once over the window, however many months they were active.
    assert impact["total"] == impact_row("total", 4, 160, 3, 1, 0, 0, 0, 0)
    assert impact["total"]["hours"] == "2.67"
    one = report(client, auditor, "impact", "2026-02", "2026-02")
    assert one["months"] == impact["months"][:1]
    assert one["total"] == {**impact["months"][0], "month": "total"}


def test_members_by_status_sum_balances_now_and_a_closed_members_balance_stays(
    client: TestClient, operator: Headers, auditor: Headers
) -> None:
    month = this_month()
    open_members(client, operator, "ann", "bob", "cat", "dan", "eve")
    assert pay(client, operator, "ann", "bob", 90) == 201
    assert pay(client, operator, "bob", "cat", 30) == 201
    assert pay(client, operator, "ann", "cat", 15) == 201
    assert pay(client, operator, "cat", "dan", 20) == 201
    assert pay(client, operator, "ann", "bob", 6000) == 409  # refused: counts nowhere
    for member, act in (("cat", "suspend"), ("dan", "close")):
        response = client.post(f"/v1/members/{member}/{act}", headers=operator)
        assert response.status_code == 200, response.text

    monthly = report(client, auditor, "monthly", month, month)

    # The bank's own accounts, opened this month too, are no members: five new, not seven.
    assert monthly["months"] == [month_row(month, 4, 155, 4, 5)]
    assert monthly["members_by_status"] == {
        "active": {"members": 3, "balance_minutes": -105 + 60 + 0},
        "suspended": {"members": 1, "balance_minutes": 25},
        "closed": {"members": 1, "balance_minutes": 20},
    }

    # Read on from where the last report ended: a reinstated member and a new exchange.
    assert client.post("/v1/members/cat/reinstate", headers=operator).status_code == 200
    assert pay(client, operator, "eve", "ann", 10) == 201
    monthly = report(client, auditor, "monthly", month, month)
    assert monthly["months"] == [month_row(month, 5, 165, 5, 5)]
    assert monthly["members_by_status"] == {
        "active": {"members": 4, "balance_minutes": -95 + 60 + 25 - 10},
        "suspended": ZERO_STATUS,
        "closed": {"members": 1, "balance_minutes": 20},
    }


def test_a_restarted_service_reports_the_same_figures_from_the_log(
    open_client: Any, operator: Headers, auditor: Headers
) -> None:
    month = this_month()
    first = open_client()
    open_members(first, operator, "ann", "bob")
    assert pay(first, operator, "ann", "bob", 45) == 201
    assert first.post("/v1/members/bob/close", headers=operator).status_code == 200
    before = (
        report(first, auditor, "impact", month, month),
        report(first, auditor, "monthly", month, month),
    )

    again = open_client()

    after = (
        report(again, auditor, "impact", month, month),
        report(again, auditor, "monthly", month, month),
    )
    assert after == before
    assert before[1]["members_by_status"]["closed"] == {"members": 1, "balance_minutes": 45}


def test_reports_read_while_exchanges_are_recorded_count_each_exchange_once(
    client: TestClient, operator: Headers
) -> None:
    ledger: Ledger = client.app.state.application  # type: ignore[attr-defined]
    open_members(client, operator, "ann", "bob")
    window = Window.between(this_month(), this_month())
    done = threading.Event()
    failures: list[BaseException] = []

    def read() -> None:
        try:
            while not done.is_set():
                monthly_report(ledger, window)
        except BaseException as e:
            failures.append(e)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    try:
        for _ in range(60):
            ledger.exchange("ann", "bob", 1, "")
    finally:
        done.set()
        for reader in readers:
            reader.join()

    assert not failures
    figures = monthly_report(ledger, window)
    assert figures.months[0].exchanges == 60
    assert figures.months[0].exchanged_minutes == 60
    assert figures.members_by_status.active.balance_minutes == 0


def test_the_impact_csv_has_stable_columns_and_the_json_reports_figures(
    client: TestClient, operator: Headers, auditor: Headers
) -> None:
    month = this_month()
    open_members(client, operator, "ann", "bob", "cat")
    assert pay(client, operator, "ann", "bob", 61) == 201
    assert pay(client, operator, "bob", "cat", 29) == 201
    start = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).strftime("%Y-%m")

    impact = report(client, auditor, "impact", start, month)
    response = client.get(
        "/v1/reports/impact.csv", params={"from": start, "to": month}, headers=auditor
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    disposition = response.headers["content-disposition"]
    assert disposition == f'attachment; filename="rushey-green-impact-{start}-{month}.csv"'
    assert response.text.splitlines()[0] == (
        "month,exchanges,exchanged_minutes,hours,active_members,new_members,"
        "transfers_out,transfers_out_minutes,transfers_in,transfers_in_minutes"
    )
    assert list(IMPACT_COLUMNS) == response.text.splitlines()[0].split(",")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    as_json = [*impact["months"], impact["total"]]
    assert rows == [{k: str(v) for k, v in row.items()} for row in as_json]
    assert impact["months"] == [
        impact_row(start, 0, 0, 0, 0, 0, 0, 0, 0),
        impact_row(month, 2, 90, 3, 3, 0, 0, 0, 0),
    ]
    assert impact["total"] == impact_row("total", 2, 90, 3, 3, 0, 0, 0, 0)
    assert rows[-1]["hours"] == "1.50"


HOURS = {0: "0.00", 1: "0.02", 20: "0.33", 40: "0.67", 59: "0.98", 90: "1.50", -90: "-1.50"}


@pytest.mark.parametrize(("minutes", "hours"), [*HOURS.items(), (6001, "100.02")])
def test_hours_are_two_decimals_rounded_half_up_without_floats(minutes: int, hours: str) -> None:
    assert hours_text(minutes) == hours


@pytest.mark.parametrize("name", ["monthly", "impact", "impact.csv"])
@pytest.mark.parametrize(
    "params",
    [
        {"from": "2026-13", "to": "2026-12"},
        {"from": "2026-1", "to": "2026-12"},
        {"from": "2026-01-01", "to": "2026-12"},
        {"from": "2026-05", "to": "2026-04"},  # backwards
        {"from": "2016-01", "to": "2026-01"},  # 121 months
        {"from": "2026-01"},
        {},
        {"from": "2026-01", "to": "2026-02", "bank": "other"},
    ],
)
def test_a_bad_window_is_a_422_problem(
    client: TestClient, auditor: Headers, name: str, params: dict[str, str]
) -> None:
    response = client.get(f"/v1/reports/{name}", params=params, headers=auditor)
    assert_problem(response, 422, "invalid_request")


def test_the_longest_window_is_ten_years(client: TestClient, auditor: Headers) -> None:
    assert len(report(client, auditor, "monthly", "2016-02", "2026-01")["months"]) == 120


@pytest.mark.parametrize("name", ["monthly", "impact", "impact.csv"])
def test_reports_need_a_token(client: TestClient, name: str) -> None:
    params = {"from": "2026-01", "to": "2026-02"}
    assert_problem(client.get(f"/v1/reports/{name}", params=params), 401, "unauthorized")
    bad = {"Authorization": "Bearer nope-" + "n" * 24}
    assert_problem(
        client.get(f"/v1/reports/{name}", params=params, headers=bad), 401, "unauthorized"
    )


def session(
    client: TestClient, headers: Headers, invitation: str, login: str, **body: str
) -> Headers:
    """A person's session: invited (by ``invitation``), the passphrase set, logged in."""
    invited = client.post(invitation, json=body or None, headers=headers)
    assert invited.status_code == 201, invited.text
    secret = {"login": login, "passphrase": "correct horse battery"}
    accepted = client.post(
        "/v1/invitations/accept", json={**secret, "code": invited.json()["code"]}
    )
    assert accepted.status_code == 201, accepted.text
    logged_in = client.post("/v1/sessions", json=secret)
    assert logged_in.status_code == 201, logged_in.text
    return {"Authorization": f"Bearer {logged_in.json()['token']}"}


def test_a_coordinator_reads_the_reports_and_a_member_may_not(
    client: TestClient, operator: Headers
) -> None:
    open_members(client, operator, "ann")
    coordinator = session(
        client, operator, "/v1/coordinators", "sam", coordinator_id="sam", name="Sam Reid"
    )
    member = session(client, operator, "/v1/members/ann/invitation", "ann")
    params = {"from": "2026-01", "to": "2026-02"}

    for name in ("monthly", "impact", "impact.csv"):
        url = f"/v1/reports/{name}"
        assert client.get(url, params=params, headers=coordinator).status_code == 200
        assert_problem(client.get(url, params=params, headers=member), 403, "forbidden")


# Across banks: a real clearing house and two banks served by their apps over a real NATS.


@pytest.mark.timeout(120)
def test_committed_transfers_count_at_both_banks_and_aborted_ones_nowhere(
    tmp_path: Path, nats_url: str, bus: Bus
) -> None:
    month = this_month()
    with served_federation(tmp_path, nats_url, bus) as federation:
        gp, college = federation.clients["gp"], federation.clients["college"]
        open_members(gp, OPERATOR, "ann")
        assert pay(gp, OPERATOR, "maya", "ann", 15) == 201
        sent = [
            federation.transfer("gp", "maya", "college", "bob", 30),
            federation.transfer("gp", "maya", "college", "nobody", 5),
            federation.transfer("college", "bob", "gp", "ann", 20),
            federation.transfer("gp", "maya", "college", "bob", 12),
        ]
        expected = ["committed", "aborted", "committed", "committed"]
        payers = ["gp", "gp", "college", "gp"]
        wait_until(
            lambda: (
                [federation.status(b, t) for b, t in zip(payers, sent, strict=True)] == expected
                and federation.status("college", sent[0]) == "committed"
                and federation.status("gp", sent[2]) == "committed"
                and federation.status("college", sent[3]) == "committed"
            ),
            what="every transfer decided at both banks",
        )

        at_gp = report(gp, OPERATOR, "impact", month, month)
        at_college = report(college, OPERATOR, "impact", month, month)
        gp_monthly = report(gp, OPERATOR, "monthly", month, month)
        college_monthly = report(college, OPERATOR, "monthly", month, month)

    # gp: maya paid ann here, and paid bob twice there; ann was paid from college.
    assert at_gp["months"] == [impact_row(month, 1, 15, 2, 2, 2, 42, 1, 20)]
    assert at_college["months"] == [impact_row(month, 0, 0, 1, 1, 1, 20, 2, 42)]
    assert gp_monthly["months"] == [month_row(month, 1, 15, 2, 2)]
    assert college_monthly["months"] == [month_row(month, 0, 0, 1, 1)]
    # Members' balances: what crossed banks stays on the federation account, not counted.
    assert gp_monthly["members_by_status"]["active"] == {
        "members": 2,
        "balance_minutes": (-15 - 42) + (15 + 20),
    }
    assert college_monthly["members_by_status"]["active"] == {
        "members": 1,
        "balance_minutes": 42 - 20,
    }
