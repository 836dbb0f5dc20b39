"""Statements by date range, a page at a time, and as CSV: the same entries, the balances
agreeing with the books."""

from __future__ import annotations

import csv
import io
import itertools
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers import assert_problem

Headers = dict[str, str]
PATH = "/v1/members/ann/statement"


@pytest.fixture
def bank(client: TestClient, operator: Headers) -> TestClient:
    for member_id in ("ann", "bob"):
        member = {"member_id": member_id, "name": member_id.title(), "kind": "person"}
        assert client.post("/v1/members", json=member, headers=operator).status_code == 201
    for n, (payer, payee) in enumerate([("bob", "ann")] * 4 + [("ann", "bob")] * 3):
        body = {"payer": payer, "payee": payee, "minutes": 10 + n, "memo": f"help {n}"}
        assert client.post("/v1/exchanges", json=body, headers=operator).status_code == 201
    return client


def get(bank: TestClient, headers: Headers, path: str = PATH, **params: Any) -> Any:
    response = bank.get(path, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json() if path == PATH else response.text


def test_with_no_window_the_statement_is_every_entry_as_before(
    bank: TestClient, operator: Headers
) -> None:
    whole = get(bank, operator)
    assert len(whole["entries"]) == 7
    assert whole["balance_minutes"] == sum(e["minutes"] for e in whole["entries"])
    assert (whole["opening_balance_minutes"], whole["next_cursor"]) == (0, None)


def test_a_date_range_lists_the_entries_in_it_with_the_balance_before_them(
    bank: TestClient, operator: Headers
) -> None:
    entries = get(bank, operator)["entries"]
    ranged = get(bank, operator, **{"from": entries[2]["at"], "to": entries[5]["at"]})
    assert ranged["entries"] == entries[2:5]
    assert ranged["opening_balance_minutes"] == sum(e["minutes"] for e in entries[:2])
    assert ranged["balance_minutes"] == sum(e["minutes"] for e in entries)


def test_pages_follow_each_other_to_the_end_and_their_balances_chain(
    bank: TestClient, operator: Headers, auditor: Headers
) -> None:
    whole = get(bank, operator)["entries"]
    pages, cursor = [], None
    for _ in range(10):
        page = get(bank, auditor, limit=3, **({"cursor": cursor} if cursor else {}))
        pages.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p["entries"]) for p in pages] == [3, 3, 1]
    assert [e for p in pages for e in p["entries"]] == whole
    for before, after in itertools.pairwise(pages):
        moved = sum(e["minutes"] for e in before["entries"])
        assert after["opening_balance_minutes"] == before["opening_balance_minutes"] + moved


def test_the_csv_export_matches_the_statement_row_for_row(
    bank: TestClient, operator: Headers
) -> None:
    entries = get(bank, operator)["entries"]
    response = bank.get(f"{PATH}.csv", params={"from": entries[1]["at"]}, headers=operator)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "ann-statement.csv" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["entry_id"] for r in rows] == [e["entry_id"] for e in entries[1:]]
    assert [int(r["minutes"]) for r in rows] == [e["minutes"] for e in entries[1:]]
    assert [r["memo"] for r in rows] == [e["memo"] for e in entries[1:]]
    running = entries[0]["minutes"]
    for row, entry in zip(rows, entries[1:], strict=True):
        running += entry["minutes"]
        assert int(row["balance_after"]) == running
    assert int(rows[-1]["balance_after"]) == get(bank, operator)["balance_minutes"]


@pytest.mark.parametrize(
    "params",
    [
        {"from": "2026-12-01T10:00:00"},
        {"from": "yesterday"},
        {"limit": 0},
        {"limit": 1001},
        {"cursor": "abc"},
        {"colour": "blue"},
    ],
)
def test_a_bad_window_is_refused(
    bank: TestClient, operator: Headers, params: dict[str, Any]
) -> None:
    for path in (PATH, f"{PATH}.csv"):
        assert_problem(bank.get(path, params=params, headers=operator), 422, "invalid_request")


def test_an_unknown_members_statement_is_404_in_either_form(
    bank: TestClient, operator: Headers
) -> None:
    for path in ("/v1/members/nobody/statement", "/v1/members/nobody/statement.csv"):
        assert_problem(bank.get(path, headers=operator), 404, "unknown_member")
