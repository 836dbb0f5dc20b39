"""GET /v1/members: the bank's members in id order, a page at a time, searched by id or name,
through the real app (and a second ledger on the same store)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.ledger.application import Ledger
from services.ledger.directory_index import MemberDirectory
from services.ledger.domain import Account
from services.ledger.domain_terms import SYSTEM_ACCOUNTS
from tests.helpers import assert_problem

Headers = dict[str, str]


def open_member(client: TestClient, operator: Headers, member_id: str, name: str = "") -> None:
    body = {"member_id": member_id, "name": name or member_id.title(), "kind": "person"}
    response = client.post("/v1/members", json=body, headers=operator)
    assert response.status_code == 201, response.text


def page(client: TestClient, headers: Headers, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/members", params=params, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body.keys() == {"members", "next_cursor"}
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [m["member_id"] for m in body["members"]]


def test_paging_through_120_members_returns_each_once_in_id_order(
    client: TestClient, operator: Headers
) -> None:
    # Opened out of id order: the listing sorts them.
    opened = [f"member-{(n * 37) % 120:03d}" for n in range(120)]
    for member_id in opened:
        open_member(client, operator, member_id)

    pages = [page(client, operator, limit=50)]
    while pages[-1]["next_cursor"] is not None:
        pages.append(page(client, operator, limit=50, cursor=pages[-1]["next_cursor"]))

    assert [len(p["members"]) for p in pages] == [50, 50, 20]
    assert [m for p in pages for m in ids(p)] == sorted(opened)
    assert pages[-1]["next_cursor"] is None


def test_the_default_page_is_50_and_a_full_last_page_has_no_cursor(
    client: TestClient, operator: Headers
) -> None:
    for n in range(60):
        open_member(client, operator, f"m{n:02d}")

    first = page(client, operator)
    last = page(client, operator, cursor=first["next_cursor"])
    exact = page(client, operator, limit=10, cursor=first["next_cursor"])

    assert len(first["members"]) == 50
    assert ids(last) == [f"m{n:02d}" for n in range(50, 60)]
    assert last["next_cursor"] is None
    assert exact["next_cursor"] is None


def test_each_listed_member_is_the_view_get_member_answers(
    client: TestClient, operator: Headers
) -> None:
    open_member(client, operator, "arthur", "Arthur Kemp")
    open_member(client, operator, "maya", "Maya Okafor")
    exchange = {"payer": "arthur", "payee": "maya", "minutes": 90, "memo": "Lift"}
    assert client.post("/v1/exchanges", json=exchange, headers=operator).status_code == 201

    listed = page(client, operator)["members"]

    assert listed == [
        client.get(f"/v1/members/{member_id}", headers=operator).json()
        for member_id in ("arthur", "maya")
    ]
    assert [m["balance_minutes"] for m in listed] == [-90, 90]


def test_search_matches_a_part_of_the_id_or_the_name_in_any_case(
    client: TestClient, operator: Headers
) -> None:
    open_member(client, operator, "maya", "Maya Okafor")
    open_member(client, operator, "okafor-j", "June Smith")
    open_member(client, operator, "arthur", "Arthur Kemp")

    assert ids(page(client, operator, q="OKAFOR")) == ["maya", "okafor-j"]
    assert ids(page(client, operator, q="kEmP")) == ["arthur"]
    assert ids(page(client, operator, q="ART")) == ["arthur"]
    assert ids(page(client, operator, q="j")) == ["okafor-j"]
    nothing = page(client, operator, q="nobody")
    assert nothing == {"members": [], "next_cursor": None}


def test_search_pages_over_the_matches_only(client: TestClient, operator: Headers) -> None:
    for n in range(6):
        open_member(client, operator, f"a{n}", "Gardener" if n % 2 else "Driver")

    first = page(client, operator, q="garden", limit=2)
    second = page(client, operator, q="garden", limit=2, cursor=first["next_cursor"])

    assert (ids(first), ids(second)) == (["a1", "a3"], ["a5"])
    assert second["next_cursor"] is None


def test_system_accounts_are_listed_only_when_asked(client: TestClient, operator: Headers) -> None:
    open_member(client, operator, "maya")

    assert ids(page(client, operator)) == ["maya"]
    assert ids(page(client, operator, include_system="false")) == ["maya"]
    everyone = page(client, operator, include_system="true")
    assert ids(everyone) == sorted([*SYSTEM_ACCOUNTS, "maya"])
    assert {m["kind"] for m in everyone["members"] if m["member_id"] != "maya"} == {"system"}
    assert ids(page(client, operator, q="FED", include_system="true")) == ["federation"]
    assert ids(page(client, operator, q="fed")) == []


def test_an_auditor_may_list_and_no_token_is_refused(
    client: TestClient, operator: Headers, auditor: Headers
) -> None:
    open_member(client, operator, "maya")

    assert ids(page(client, auditor)) == ["maya"]
    assert_problem(client.get("/v1/members"), 401, "unauthorized")
    assert_problem(
        client.get("/v1/members", headers={"Authorization": "Bearer x"}), 401, "unauthorized"
    )


def encoded(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor!",
        "%%%",
        "é",
        encoded("two words"),  # base64, but of no member id
        base64.b64encode(b"\xff\xfe").decode(),  # not UTF-8
        "",
    ],
)
def test_a_cursor_this_service_did_not_give_is_an_invalid_request(
    client: TestClient, operator: Headers, cursor: str
) -> None:
    body = assert_problem(
        client.get("/v1/members", params={"cursor": cursor}, headers=operator),
        422,
        "invalid_request",
    )
    assert "cursor" in body["detail"]


def test_a_cursor_is_the_last_id_of_its_page_base64url_encoded(
    client: TestClient, operator: Headers
) -> None:
    for member_id in ("ann", "bob", "cat"):
        open_member(client, operator, member_id)

    first = page(client, operator, limit=2)
    # Padded or not, the same cursor.
    padded = page(client, operator, cursor=encoded("bob"))

    assert first["next_cursor"] == encoded("bob").rstrip("=")
    assert ids(padded) == ["cat"]


@pytest.mark.parametrize("limit", ["0", "201", "-1", "ten", "1.5"])
def test_a_limit_outside_1_to_200_is_an_invalid_request(
    client: TestClient, operator: Headers, limit: str
) -> None:
    response = client.get("/v1/members", params={"limit": limit}, headers=operator)

    body = assert_problem(response, 422, "invalid_request")
    assert body["errors"][0]["location"] == ["query", "limit"]


def test_limits_of_1_and_200_are_allowed(client: TestClient, operator: Headers) -> None:
    open_member(client, operator, "ann")
    open_member(client, operator, "bob")

    assert ids(page(client, operator, limit=1)) == ["ann"]
    assert ids(page(client, operator, limit=200)) == ["ann", "bob"]


def test_a_member_opened_after_the_first_page_appears_on_a_later_page(
    client: TestClient, operator: Headers
) -> None:
    for member_id in ("m1", "m2", "m3", "m4"):
        open_member(client, operator, member_id)

    first = page(client, operator, limit=2)
    open_member(client, operator, "m2b")
    open_member(client, operator, "m0")  # before the cursor: on a first page, not a later one
    second = page(client, operator, limit=2, cursor=first["next_cursor"])
    third = page(client, operator, limit=2, cursor=second["next_cursor"])

    assert [ids(first), ids(second), ids(third)] == [["m1", "m2"], ["m2b", "m3"], ["m4"]]
    assert ids(page(client, operator, limit=2)) == ["m0", "m1"]


def test_members_opened_by_another_process_are_listed(
    open_ledger: Callable[..., Ledger],
) -> None:
    reading, writing = open_ledger(), open_ledger()
    assert reading.members().members == []

    writing.open_member("maya", "Maya Okafor", "person")
    writing.open_member("arthur", "Arthur Kemp", "person")

    listed = reading.members(query="okafor").members
    assert [m.member_id for m in listed] == ["maya"]
    assert listed[0] == writing.get_member("maya")
    assert [m.member_id for m in reading.members().members] == ["arthur", "maya"]


def test_the_directory_searches_a_members_new_name_after_a_rename() -> None:
    maya = Account.open("maya", "Maya Okafor", "person")
    events = list(enumerate(maya.collect_events(), start=1))
    directory = MemberDirectory()

    def follow(start: int, topics: Sequence[str]) -> Iterator[tuple[int, Any]]:
        return iter(events[start - 1 :])

    assert directory.page(follow, "okafor") == (["maya"], None)
    directory.rename(maya.id, "Maya Adeyemi")
    assert directory.page(follow, "okafor") == ([], None)
    assert directory.page(follow, "ADEYEMI") == (["maya"], None)
