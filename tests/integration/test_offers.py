"""The board of offers and requests over the real app and store (SQLite and PostgreSQL):
posting, listing and paging, changing and withdrawing, who may post, exchanges recorded
against an offer atomically, the category report, and bad input as problems."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from fastapi.testclient import TestClient

from services.ledger.api_offers import Category
from services.ledger.domain_offers import CATEGORIES
from services.ledger.domain_terms import account_id
from tests.helpers import assert_problem

Headers = dict[str, str]


def open_member(client: TestClient, operator: Headers, member_id: str, **extra: Any) -> None:
    body = {"member_id": member_id, "name": member_id.title(), "kind": "person", **extra}
    response = client.post("/v1/members", json=body, headers=operator)
    assert response.status_code == 201, response.text


def post(client: TestClient, operator: Headers, **fields: Any) -> dict[str, Any]:
    body = {"kind": "offer", "category": "lifts", "minutes": 60, **fields}
    response = client.post("/v1/offers", json=body, headers=operator)
    assert response.status_code == 201, response.text
    offer: dict[str, Any] = response.json()
    return offer


def titles(page: dict[str, Any]) -> list[str]:
    return [o["title"] for o in page["offers"]]


@pytest.fixture
def board(client: TestClient, operator: Headers) -> TestClient:
    for member in ("maya", "arthur", "priya"):
        open_member(client, operator, member)
    return client


def test_api_categories_are_the_domains() -> None:
    assert set(get_args(Category)) == set(CATEGORIES)


def test_post_and_get_an_offer(board: TestClient, operator: Headers) -> None:
    offer = post(
        board, operator, member_id="maya", title="Lifts to the GP", where="Catford", minutes=90
    )
    assert offer["kind"] == "offer"
    assert offer["category"] == "lifts"
    assert offer["category_label"] == "Lifts"
    assert offer["minutes"] == 90
    assert offer["where"] == "Catford"
    assert offer["status"] == "open"
    assert offer["shared_with_federation"] is False
    assert offer["recorded"] == []
    got = board.get(f"/v1/offers/{offer['offer_id']}", headers=operator)
    assert got.status_code == 200
    assert got.json() == offer


def test_an_organisation_lists_a_course(board: TestClient, operator: Headers) -> None:
    body = {"member_id": "college", "name": "Goldsmiths Adult Ed", "kind": "organisation"}
    assert board.post("/v1/members", json=body, headers=operator).status_code == 201
    course = post(
        board,
        operator,
        member_id="college",
        title="Intro to bookkeeping (10 weeks)",
        category="courses",
        minutes=20 * 60,
        where="New Cross campus",
    )
    assert course["member_id"] == "college"
    assert course["minutes"] == 1200
    page = board.get("/v1/offers?category=courses", headers=operator).json()
    assert titles(page) == ["Intro to bookkeeping (10 weeks)"]


def test_only_an_active_member_may_post(board: TestClient, operator: Headers) -> None:
    assert board.post("/v1/members/arthur/suspend", headers=operator).status_code == 200
    body = {"member_id": "arthur", "kind": "request", "title": "x", "category": "diy"}
    refused = board.post("/v1/offers", json={**body, "minutes": 30}, headers=operator)
    assert_problem(refused, 409, "member_inactive")
    unknown = board.post(
        "/v1/offers", json={**body, "member_id": "nobody", "minutes": 30}, headers=operator
    )
    assert_problem(unknown, 404, "unknown_member")
    system = board.post(
        "/v1/offers", json={**body, "member_id": "federation", "minutes": 30}, headers=operator
    )
    assert_problem(system, 404, "unknown_member")
    all_offers = board.get("/v1/offers?status=all", headers=operator).json()
    assert all_offers["offers"] == []


def test_filters_search_and_pages(board: TestClient, operator: Headers) -> None:
    post(board, operator, member_id="maya", title="Lifts to hospital", category="lifts")
    post(board, operator, member_id="arthur", kind="request", title="Fix a shelf", category="diy")
    post(board, operator, member_id="priya", title="GCSE maths", category="tutoring")
    post(board, operator, member_id="maya", title="Shelf putting up", category="diy")
    post(board, operator, member_id="arthur", kind="request", title="Lift to Lidl", where="Hither")

    def get(query: str) -> dict[str, Any]:
        response = board.get(f"/v1/offers{query}", headers=operator)
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        return page

    newest_first = ["Lift to Lidl", "Shelf putting up", "GCSE maths", "Fix a shelf"]
    assert titles(get("")) == [*newest_first, "Lifts to hospital"]
    assert titles(get("?category=diy")) == ["Shelf putting up", "Fix a shelf"]
    assert titles(get("?kind=request")) == ["Lift to Lidl", "Fix a shelf"]
    assert titles(get("?member=maya")) == ["Shelf putting up", "Lifts to hospital"]
    assert titles(get("?q=SHELF")) == ["Shelf putting up", "Fix a shelf"]
    assert titles(get("?q=hither")) == ["Lift to Lidl"]  # where is searched too
    assert titles(get("?kind=offer&category=diy&member=maya")) == ["Shelf putting up"]
    pages, cursor, seen = 0, None, []
    while True:
        page = get("?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        seen += titles(page)
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [*newest_first, "Lifts to hospital"]


def test_change_and_withdraw(board: TestClient, operator: Headers) -> None:
    offer = post(board, operator, member_id="maya", title="Gardening help", category="other")
    path = f"/v1/offers/{offer['offer_id']}"
    changed = board.patch(path, json={"category": "gardening", "minutes": 120}, headers=operator)
    assert changed.status_code == 200, changed.text
    assert changed.json()["category"] == "gardening"
    assert changed.json()["minutes"] == 120
    assert changed.json()["title"] == "Gardening help"
    assert titles(board.get("/v1/offers?category=gardening", headers=operator).json()) == [
        "Gardening help"
    ]
    assert board.get("/v1/offers?category=other", headers=operator).json()["offers"] == []
    withdrawn = board.post(f"{path}/withdraw", headers=operator)
    assert withdrawn.status_code == 200
    assert withdrawn.json()["status"] == "withdrawn"
    assert board.get("/v1/offers", headers=operator).json()["offers"] == []
    listed = board.get("/v1/offers?status=withdrawn", headers=operator).json()
    assert titles(listed) == ["Gardening help"]
    assert_problem(board.post(f"{path}/withdraw", headers=operator), 409, "offer_withdrawn")
    assert_problem(board.patch(path, json={"minutes": 5}, headers=operator), 409, "offer_withdrawn")
    exchange = {"payer": "arthur", "minutes": 60}
    refused = board.post(f"{path}/exchanges", json=exchange, headers=operator)
    assert_problem(refused, 409, "offer_withdrawn")
    assert board.get("/v1/members/arthur", headers=operator).json()["balance_minutes"] == 0


def test_an_exchange_recorded_against_an_offer(board: TestClient, operator: Headers) -> None:
    offer = post(board, operator, member_id="maya", title="Lift to the hospital", minutes=90)
    path = f"/v1/offers/{offer['offer_id']}/exchanges"
    response = board.post(path, json={"payer": "arthur", "minutes": 90}, headers=operator)
    assert response.status_code == 201, response.text
    exchange = response.json()["exchange"]
    assert (exchange["payer"], exchange["payee"], exchange["minutes"]) == ("arthur", "maya", 90)
    assert exchange["memo"] == "Lift to the hospital"  # the offer's title by default
    assert board.get("/v1/members/maya", headers=operator).json()["balance_minutes"] == 90
    assert board.get("/v1/members/arthur", headers=operator).json()["balance_minutes"] == -90
    recorded = board.get(f"/v1/offers/{offer['offer_id']}", headers=operator).json()["recorded"]
    assert recorded == [
        {
            "entry": "exchange",
            "entry_id": exchange["exchange_id"],
            "minutes": 90,
            "payer": "arthur",
            "payee": "maya",
        }
    ]
    # A request's member pays whoever helped.
    request = post(board, operator, member_id="arthur", kind="request", title="Shelf", minutes=30)
    paid = board.post(
        f"/v1/offers/{request['offer_id']}/exchanges",
        json={"payee": "priya", "minutes": 30, "memo": "Put up a shelf"},
        headers=operator,
    )
    assert paid.status_code == 201, paid.text
    assert (paid.json()["exchange"]["payer"], paid.json()["exchange"]["payee"]) == (
        "arthur",
        "priya",
    )


def test_a_refused_exchange_leaves_the_offer_unchanged(
    board: TestClient, operator: Headers
) -> None:
    offer = post(board, operator, member_id="maya", title="Befriending visits", minutes=60)
    path = f"/v1/offers/{offer['offer_id']}"
    before = board.get(path, headers=operator).json()
    # Arthur's overdraft limit is the bank's default (600 minutes): 601 is refused.
    refused = board.post(
        f"{path}/exchanges",
        json={"payer": "arthur", "minutes": 601},
        headers=operator,
    )
    assert_problem(refused, 409, "overdraft_limit_exceeded")
    assert board.get(path, headers=operator).json() == before
    wrong_payee = board.post(
        f"{path}/exchanges",
        json={"payer": "arthur", "payee": "priya", "minutes": 5},
        headers=operator,
    )
    assert_problem(wrong_payee, 422, "invalid_request")
    assert board.get(path, headers=operator).json() == before
    assert board.get("/v1/members/maya", headers=operator).json()["balance_minutes"] == 0
    assert board.get("/v1/members/arthur", headers=operator).json()["balance_minutes"] == 0


def test_an_exchange_against_an_offer_is_idempotent(board: TestClient, operator: Headers) -> None:
    offer = post(board, operator, member_id="maya", title="Lift", minutes=60)
    path = f"/v1/offers/{offer['offer_id']}/exchanges"
    headers = {**operator, "Idempotency-Key": "lift-1"}
    first = board.post(path, json={"payer": "arthur", "minutes": 60}, headers=headers)
    again = board.post(path, json={"payer": "arthur", "minutes": 60}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert board.get("/v1/members/maya", headers=operator).json()["balance_minutes"] == 60
    recorded = board.get(f"/v1/offers/{offer['offer_id']}", headers=operator).json()["recorded"]
    assert len(recorded) == 1


def test_a_transfer_against_a_local_offer_is_refused_without_a_partner(
    board: TestClient, operator: Headers
) -> None:
    offer = post(board, operator, member_id="maya", title="Lift", minutes=60)
    request = post(board, operator, member_id="arthur", kind="request", title="Course", minutes=60)
    # An offer's member is paid: a transfer out against it makes no sense.
    refused = board.post(
        f"/v1/offers/{offer['offer_id']}/transfers",
        json={"to_bank": "college", "payee": "bob", "minutes": 60},
        headers=operator,
    )
    assert_problem(refused, 422, "invalid_request")
    # No such bank in the (empty) directory: refused, and the request records nothing.
    unknown = board.post(
        f"/v1/offers/{request['offer_id']}/transfers",
        json={"to_bank": "college", "payee": "bob", "minutes": 60},
        headers=operator,
    )
    assert_problem(unknown, 404, "unknown_bank")
    got = board.get(f"/v1/offers/{request['offer_id']}", headers=operator).json()
    assert got["recorded"] == []
    assert board.get("/v1/members/arthur", headers=operator).json()["held_minutes"] == 0


def test_category_report_numbers(board: TestClient, operator: Headers) -> None:
    lift = post(board, operator, member_id="maya", title="Lifts", category="lifts")
    diy = post(board, operator, member_id="priya", title="Repairs", category="diy")
    post(board, operator, member_id="arthur", kind="request", title="Shelf", category="diy")
    post(board, operator, member_id="arthur", kind="request", title="Tutor", category="tutoring")
    gone = post(board, operator, member_id="maya", title="Old", category="tutoring")
    board.post(f"/v1/offers/{gone['offer_id']}/withdraw", headers=operator)
    months = set()
    for offer, minutes in ((lift, 90), (lift, 30), (diy, 45)):
        response = board.post(
            f"/v1/offers/{offer['offer_id']}/exchanges",
            json={"payer": "arthur", "minutes": minutes},
            headers=operator,
        )
        assert response.status_code == 201, response.text
        months.add(response.json()["exchange"]["recorded_at"][:7])
    # An exchange not made against any offer does not count.
    plain = {"payer": "arthur", "payee": "priya", "minutes": 10, "memo": ""}
    assert board.post("/v1/exchanges", json=plain, headers=operator).status_code == 201
    report = board.get("/v1/reports/categories", headers=operator)
    assert report.status_code == 200, report.text
    body = report.json()
    categories = body["categories"]
    assert [c["category"] for c in categories[:3]] == ["lifts", "diy", "tutoring"]
    assert {c["category"] for c in categories} == set(CATEGORIES)
    by_slug = {c["category"]: c for c in categories}
    assert by_slug["lifts"] == {
        "category": "lifts",
        "label": "Lifts",
        "exchanges": 2,
        "minutes": 120,
        "open_offers": 1,
        "open_requests": 0,
    }
    assert (by_slug["diy"]["exchanges"], by_slug["diy"]["minutes"]) == (1, 45)
    assert (by_slug["diy"]["open_offers"], by_slug["diy"]["open_requests"]) == (1, 1)
    assert (by_slug["tutoring"]["open_offers"], by_slug["tutoring"]["open_requests"]) == (0, 1)
    assert by_slug["courses"]["minutes"] == by_slug["courses"]["open_offers"] == 0
    (month,) = months  # the test runs within one month, barring midnight on the 1st
    assert body["months"] == [
        {"month": month, "category": "diy", "exchanges": 1, "minutes": 45},
        {"month": month, "category": "lifts", "exchanges": 2, "minutes": 120},
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"minutes": 0}, "minutes"),
        ({"minutes": "60"}, "minutes"),
        ({"minutes": 60.0}, "minutes"),
        ({"minutes": 1_000 * 60 + 1}, "minutes"),
        ({"category": "knitting"}, "category"),
        ({"kind": "gift"}, "kind"),
        ({"title": ""}, "title"),
        ({"title": "x" * 201}, "title"),
        ({"where": "x" * 201}, "where"),
        ({"shared_with_federation": "yes"}, "shared_with_federation"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_offers_are_problems(
    board: TestClient, operator: Headers, body: dict[str, Any], field: str
) -> None:
    good = {"member_id": "maya", "kind": "offer", "title": "t", "category": "lifts", "minutes": 60}
    response = board.post("/v1/offers", json={**good, **body}, headers=operator)
    problem = assert_problem(response, 422, "invalid_request")
    assert problem["errors"][0]["location"][-1] == field
    assert board.get("/v1/offers?status=all", headers=operator).json()["offers"] == []


def test_bad_queries_and_ids_are_problems(board: TestClient, operator: Headers) -> None:
    assert_problem(board.get("/v1/offers?limit=0", headers=operator), 422, "invalid_request")
    assert_problem(board.get("/v1/offers?cursor=zzz", headers=operator), 422, "invalid_request")
    assert_problem(board.get("/v1/offers?kind=gift", headers=operator), 422, "invalid_request")
    bad_category = board.get("/v1/federation/offers?category=x", headers=operator)
    assert_problem(bad_category, 422, "invalid_request")
    assert_problem(board.get("/v1/offers/not-an-id", headers=operator), 404, "unknown_offer")
    missing = "/v1/offers/00000000-0000-4000-8000-000000000000"
    assert_problem(board.get(missing, headers=operator), 404, "unknown_offer")
    assert_problem(
        board.patch(missing, json={"minutes": 5}, headers=operator), 404, "unknown_offer"
    )
    # Another aggregate's id (a member's account) is no offer.
    account = f"/v1/offers/{account_id('maya')}"
    assert_problem(board.get(account, headers=operator), 404, "unknown_offer")
    empty = board.patch(
        f"/v1/offers/{post(board, operator, member_id='maya', title='t')['offer_id']}",
        json={"minutes": -1},
        headers=operator,
    )
    assert_problem(empty, 422, "invalid_request")


def test_tokens_are_required(board: TestClient, operator: Headers, auditor: Headers) -> None:
    offer = post(board, operator, member_id="maya", title="Lift")
    path = f"/v1/offers/{offer['offer_id']}"
    for method, url in (
        ("GET", "/v1/offers"),
        ("GET", path),
        ("GET", "/v1/federation/offers"),
        ("GET", "/v1/reports/categories"),
        ("POST", "/v1/offers"),
        ("PATCH", path),
        ("POST", f"{path}/withdraw"),
        ("POST", f"{path}/exchanges"),
        ("POST", f"{path}/transfers"),
    ):
        assert_problem(board.request(method, url, json={}), 401, "unauthorized")
    # An auditor reads, and may not write.
    assert board.get(path, headers=auditor).status_code == 200
    assert_problem(board.post(f"{path}/withdraw", headers=auditor), 403, "forbidden")
    body = {"member_id": "maya", "kind": "offer", "title": "t", "category": "lifts", "minutes": 5}
    assert_problem(board.post("/v1/offers", json=body, headers=auditor), 403, "forbidden")
