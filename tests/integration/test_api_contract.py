"""The ledger's HTTP contract (routes, bodies, statuses, problem codes) through the real app."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from services.common.http import MAX_BODY_BYTES
from tests.helpers import BANK_ID, PROBLEM_KEYS, assert_problem, ledger_state

Headers = dict[str, str]

MEMBER_KEYS = {
    "member_id",
    "name",
    "kind",
    "balance_minutes",
    "held_minutes",
    "available_minutes",
    "overdraft_limit_minutes",
    "status",
}
EXCHANGE_KEYS = {"exchange_id", "payer", "payee", "minutes", "memo", "recorded_at"}


def new_member(client: TestClient, operator: Headers, member_id: str, **fields: Any) -> Any:
    body = {"member_id": member_id, "name": member_id.title(), "kind": "person", **fields}
    response = client.post("/v1/members", json=body, headers=operator)
    assert response.status_code == 201, response.text
    return response.json()


def pay(
    client: TestClient,
    operator: Headers,
    payer: str,
    payee: str,
    minutes: Any,
    memo: str = "help",
) -> httpx.Response:
    body = {"payer": payer, "payee": payee, "minutes": minutes, "memo": memo}
    return client.post("/v1/exchanges", json=body, headers=operator)


def paid(client: TestClient, operator: Headers, payer: str, payee: str, minutes: int) -> Any:
    response = pay(client, operator, payer, payee, minutes)
    assert response.status_code == 201, response.text
    return response.json()


def balance(client: TestClient, operator: Headers, member_id: str) -> int:
    response = client.get(f"/v1/members/{member_id}", headers=operator)
    assert response.status_code == 200, response.text
    minutes: int = response.json()["balance_minutes"]
    return minutes


@pytest.fixture
def ann_and_bob(client: TestClient, operator: Headers) -> TestClient:
    """A client whose bank has two people with the default overdraft limit."""
    new_member(client, operator, "ann")
    new_member(client, operator, "bob")
    return client


# Health and the schema.


def test_healthz_answers_ok_with_the_bank_id_without_a_token(client: TestClient) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "bank": BANK_ID}


def test_openapi_schema_lists_every_route_with_its_method(client: TestClient) -> None:
    response = client.get("/openapi.json")

    assert response.status_code == 200
    paths = response.json()["paths"]
    expected = {
        "/healthz": "get",
        "/v1/members": "post",
        "/v1/members/{member_id}": "get",
        "/v1/members/{member_id}/statement": "get",
        "/v1/exchanges": "post",
        "/v1/bank": "get",
    }
    for path, method in expected.items():
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing from the schema"


# Members.


def test_new_member_is_201_with_zero_balances_and_the_default_overdraft_of_600(
    client: TestClient, operator: Headers
) -> None:
    body = {"member_id": "maya", "name": "Maya Okafor", "kind": "person"}

    response = client.post("/v1/members", json=body, headers=operator)

    assert response.status_code == 201
    assert response.json() == {
        "member_id": "maya",
        "name": "Maya Okafor",
        "kind": "person",
        "balance_minutes": 0,
        "held_minutes": 0,
        "available_minutes": 0,
        "overdraft_limit_minutes": 600,
        "status": "active",
    }


@pytest.mark.parametrize("limit", [0, 1200])
def test_new_member_shows_its_own_overdraft_limit_when_given(
    client: TestClient, operator: Headers, limit: int
) -> None:
    created = new_member(
        client, operator, "lewisham-food", kind="organisation", overdraft_limit_minutes=limit
    )

    assert created["kind"] == "organisation"
    assert created["overdraft_limit_minutes"] == limit
    fetched = client.get("/v1/members/lewisham-food", headers=operator).json()
    assert fetched["overdraft_limit_minutes"] == limit


def test_opening_an_existing_member_again_is_409_member_exists_and_keeps_the_first(
    client: TestClient, operator: Headers
) -> None:
    new_member(client, operator, "ann", name="Ann First")

    response = client.post(
        "/v1/members",
        json={"member_id": "ann", "name": "Ann Second", "kind": "organisation"},
        headers=operator,
    )

    assert_problem(response, 409, "member_exists")
    fetched = client.get("/v1/members/ann", headers=operator).json()
    assert (fetched["name"], fetched["kind"]) == ("Ann First", "person")


@pytest.mark.parametrize("system_id", ["federation", "settlement"])
def test_opening_a_member_with_a_system_account_id_is_409_member_exists(
    client: TestClient, operator: Headers, system_id: str
) -> None:
    response = client.post(
        "/v1/members",
        json={"member_id": system_id, "name": "Impostor", "kind": "person"},
        headers=operator,
    )

    assert_problem(response, 409, "member_exists")


@pytest.mark.parametrize("system_id", ["federation", "settlement"])
def test_opening_a_member_with_a_system_account_id_is_refused_and_leaves_it_a_system_account(
    client: TestClient, operator: Headers, system_id: str
) -> None:
    response = client.post(
        "/v1/members",
        json={"member_id": system_id, "name": "Impostor", "kind": "person"},
        headers=operator,
    )

    assert response.status_code in (409, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"
    fetched = client.get(f"/v1/members/{system_id}", headers=operator).json()
    assert (fetched["kind"], fetched["overdraft_limit_minutes"]) == ("system", None)
    assert client.get("/v1/bank", headers=operator).json()["members"] == 0


VALID_MEMBER = {"member_id": "maya", "name": "Maya", "kind": "person"}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({**VALID_MEMBER, "kind": "alien"}, id="unknown-kind"),
        pytest.param({**VALID_MEMBER, "kind": "system"}, id="system-kind"),
        pytest.param({"member_id": "maya", "kind": "person"}, id="missing-name"),
        pytest.param({"name": "Maya", "kind": "person"}, id="missing-member-id"),
        pytest.param({"member_id": "maya", "name": "Maya"}, id="missing-kind"),
        pytest.param({**VALID_MEMBER, "role": "admin"}, id="unknown-field"),
        pytest.param({**VALID_MEMBER, "overdraft_limit_minutes": "5"}, id="limit-string"),
        pytest.param({**VALID_MEMBER, "overdraft_limit_minutes": 5.0}, id="limit-float"),
        pytest.param({**VALID_MEMBER, "overdraft_limit_minutes": True}, id="limit-bool"),
        pytest.param({**VALID_MEMBER, "overdraft_limit_minutes": -1}, id="limit-negative"),
        pytest.param({**VALID_MEMBER, "name": 5}, id="name-number"),
        pytest.param({**VALID_MEMBER, "member_id": 7}, id="member-id-number"),
        pytest.param({**VALID_MEMBER, "member_id": "has space"}, id="member-id-space"),
        pytest.param({**VALID_MEMBER, "name": "   "}, id="name-blank"),
        pytest.param([VALID_MEMBER], id="array-body"),
    ],
)
def test_invalid_new_member_is_422_invalid_request_and_opens_nothing(
    client: TestClient, operator: Headers, body: Any
) -> None:
    response = client.post("/v1/members", json=body, headers=operator)

    assert_problem(response, 422, "invalid_request")
    assert client.get("/v1/bank", headers=operator).json()["members"] == 0


def test_get_member_shows_balances_after_exchanges(
    ann_and_bob: TestClient, operator: Headers
) -> None:
    paid(ann_and_bob, operator, "ann", "bob", 90)

    response = ann_and_bob.get("/v1/members/ann", headers=operator)

    assert response.status_code == 200
    assert response.json() == {
        "member_id": "ann",
        "name": "Ann",
        "kind": "person",
        "balance_minutes": -90,
        "held_minutes": 0,
        "available_minutes": -90,
        "overdraft_limit_minutes": 600,
        "status": "active",
    }


@pytest.mark.parametrize("system_id", ["federation", "settlement"])
def test_system_accounts_exist_from_start_up_with_no_overdraft_limit(
    client: TestClient, operator: Headers, system_id: str
) -> None:
    response = client.get(f"/v1/members/{system_id}", headers=operator)

    assert response.status_code == 200
    body = response.json()
    assert body.keys() == MEMBER_KEYS
    assert (body["member_id"], body["kind"], body["overdraft_limit_minutes"]) == (
        system_id,
        "system",
        None,
    )


@pytest.mark.parametrize("path", ["/v1/members/nobody", "/v1/members/nobody/statement"])
def test_reading_an_unknown_member_is_404_unknown_member(
    client: TestClient, operator: Headers, path: str
) -> None:
    assert_problem(client.get(path, headers=operator), 404, "unknown_member")


# Statements.


def test_statement_lists_signed_entries_with_counterparty_and_memo_newest_last(
    client: TestClient, operator: Headers
) -> None:
    for member_id in ("ann", "bob", "cat"):
        new_member(client, operator, member_id)
    ids = [
        pay(client, operator, *args).json()["exchange_id"]
        for args in (
            ("ann", "bob", 60, "gardening"),
            ("cat", "ann", 45, "lift to the hospital"),
            ("ann", "cat", 30, "ironing"),
        )
    ]

    response = client.get("/v1/members/ann/statement", headers=operator)

    assert response.status_code == 200
    statement = response.json()
    assert statement.keys() == {
        "member_id",
        "balance_minutes",
        "entries",
        "opening_balance_minutes",
        "next_cursor",
    }
    assert statement["member_id"] == "ann"
    entries = statement["entries"]
    assert [{k: v for k, v in e.items() if k != "at"} for e in entries] == [
        {"minutes": -60, "counterparty": "bob", "memo": "gardening", "kind": "exchange",
         "entry_id": ids[0]},
        {"minutes": 45, "counterparty": "cat", "memo": "lift to the hospital", "kind": "exchange",
         "entry_id": ids[1]},
        {"minutes": -30, "counterparty": "cat", "memo": "ironing", "kind": "exchange",
         "entry_id": ids[2]},
    ]  # fmt: skip
    times = [datetime.fromisoformat(e["at"]) for e in entries]
    assert all(t.tzinfo is not None for t in times)
    assert times == sorted(times)


def test_statement_entries_sum_to_its_balance_and_the_members_balance(
    client: TestClient, operator: Headers
) -> None:
    for member_id in ("ann", "bob", "cat"):
        new_member(client, operator, member_id)
    for payer, payee, minutes in [("ann", "bob", 60), ("bob", "ann", 15), ("cat", "ann", 120)]:
        paid(client, operator, payer, payee, minutes)

    for member_id in ("ann", "bob", "cat"):
        statement = client.get(f"/v1/members/{member_id}/statement", headers=operator).json()
        total = sum(e["minutes"] for e in statement["entries"])
        assert statement["balance_minutes"] == total
        assert balance(client, operator, member_id) == total
    assert balance(client, operator, "ann") == -60 + 15 + 120


def test_statement_of_a_new_member_is_empty_at_zero(client: TestClient, operator: Headers) -> None:
    new_member(client, operator, "ann")

    response = client.get("/v1/members/ann/statement", headers=operator)

    assert response.json() == {
        "member_id": "ann",
        "balance_minutes": 0,
        "entries": [],
        "opening_balance_minutes": 0,
        "next_cursor": None,
    }


# Exchanges.


def test_exchange_is_201_with_exactly_the_receipt_fields(
    ann_and_bob: TestClient, operator: Headers
) -> None:
    response = pay(ann_and_bob, operator, "ann", "bob", 90, memo="Lift to the hospital")

    assert response.status_code == 201
    receipt = response.json()
    assert receipt.keys() == EXCHANGE_KEYS
    assert (receipt["payer"], receipt["payee"], receipt["minutes"], receipt["memo"]) == (
        "ann",
        "bob",
        90,
        "Lift to the hospital",
    )
    UUID(receipt["exchange_id"])
    assert datetime.fromisoformat(receipt["recorded_at"]).tzinfo is not None


def test_each_exchange_gets_its_own_id(ann_and_bob: TestClient, operator: Headers) -> None:
    first = paid(ann_and_bob, operator, "ann", "bob", 30)
    second = paid(ann_and_bob, operator, "ann", "bob", 30)

    assert first["exchange_id"] != second["exchange_id"]


def test_exchange_moves_minutes_from_payer_to_payee(
    ann_and_bob: TestClient, operator: Headers
) -> None:
    paid(ann_and_bob, operator, "ann", "bob", 90)
    paid(ann_and_bob, operator, "bob", "ann", 30)

    assert balance(ann_and_bob, operator, "ann") == -60
    assert balance(ann_and_bob, operator, "bob") == 60


@pytest.mark.parametrize(("payer", "payee"), [("nobody", "bob"), ("ann", "nobody")])
def test_exchange_with_an_unknown_member_is_404_unknown_member_and_writes_nothing(
    ann_and_bob: TestClient, operator: Headers, payer: str, payee: str
) -> None:
    before = ledger_state(ann_and_bob, operator, "ann", "bob")

    response = pay(ann_and_bob, operator, payer, payee, 30)

    body = assert_problem(response, 404, "unknown_member")
    assert "nobody" in body["detail"]
    assert ledger_state(ann_and_bob, operator, "ann", "bob") == before


def test_exchange_up_to_the_default_overdraft_of_600_is_accepted(
    ann_and_bob: TestClient, operator: Headers
) -> None:
    paid(ann_and_bob, operator, "ann", "bob", 600)

    assert balance(ann_and_bob, operator, "ann") == -600


def test_exchange_over_the_overdraft_limit_is_409_and_writes_nothing(
    ann_and_bob: TestClient, operator: Headers
) -> None:
    paid(ann_and_bob, operator, "ann", "bob", 500)
    before = ledger_state(ann_and_bob, operator, "ann", "bob")

    response = pay(ann_and_bob, operator, "ann", "bob", 101)

    assert_problem(response, 409, "overdraft_limit_exceeded")
    assert ledger_state(ann_and_bob, operator, "ann", "bob") == before


def test_member_with_a_zero_overdraft_limit_cannot_spend_below_zero(
    client: TestClient, operator: Headers
) -> None:
    new_member(client, operator, "ann", overdraft_limit_minutes=0)
    new_member(client, operator, "bob")
    before = ledger_state(client, operator, "ann", "bob")

    assert_problem(pay(client, operator, "ann", "bob", 1), 409, "overdraft_limit_exceeded")
    assert ledger_state(client, operator, "ann", "bob") == before


def test_exchange_of_the_6000_minute_maximum_is_accepted(
    client: TestClient, operator: Headers
) -> None:
    new_member(client, operator, "ann", overdraft_limit_minutes=10_000)
    new_member(client, operator, "bob")

    paid(client, operator, "ann", "bob", 6000)

    assert balance(client, operator, "bob") == 6000


VALID_EXCHANGE = {"payer": "ann", "payee": "bob", "minutes": 30, "memo": "help"}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({**VALID_EXCHANGE, "minutes": 0}, id="zero"),
        pytest.param({**VALID_EXCHANGE, "minutes": -30}, id="negative"),
        pytest.param({**VALID_EXCHANGE, "minutes": 6001}, id="over-maximum"),
        pytest.param({**VALID_EXCHANGE, "payee": "ann"}, id="payer-is-payee"),
        pytest.param({**VALID_EXCHANGE, "payer": "federation"}, id="system-payer"),
        pytest.param({**VALID_EXCHANGE, "payee": "settlement"}, id="system-payee"),
        pytest.param({**VALID_EXCHANGE, "currency": "hours"}, id="unknown-field"),
        pytest.param({**VALID_EXCHANGE, "minutes": "5"}, id="minutes-string"),
        pytest.param({**VALID_EXCHANGE, "minutes": 5.0}, id="minutes-float"),
        pytest.param({**VALID_EXCHANGE, "minutes": 1.5}, id="minutes-fraction"),
        pytest.param({**VALID_EXCHANGE, "minutes": True}, id="minutes-bool"),
        pytest.param({**VALID_EXCHANGE, "minutes": None}, id="minutes-null"),
        pytest.param({**VALID_EXCHANGE, "payer": 5}, id="payer-number"),
        pytest.param({**VALID_EXCHANGE, "memo": None}, id="memo-null"),
        pytest.param({k: v for k, v in VALID_EXCHANGE.items() if k != "minutes"}, id="no-minutes"),
        pytest.param({k: v for k, v in VALID_EXCHANGE.items() if k != "memo"}, id="no-memo"),
    ],
)
def test_invalid_exchange_is_422_invalid_request_and_writes_nothing(
    client: TestClient, operator: Headers, body: dict[str, Any]
) -> None:
    # Enough overdraft that an amount over the maximum is refused for the maximum alone.
    new_member(client, operator, "ann", overdraft_limit_minutes=10_000)
    new_member(client, operator, "bob")
    before = ledger_state(client, operator, "ann", "bob", "federation", "settlement")

    response = client.post("/v1/exchanges", json=body, headers=operator)

    assert_problem(response, 422, "invalid_request")
    assert ledger_state(client, operator, "ann", "bob", "federation", "settlement") == before


def test_a_configured_lower_maximum_per_exchange_is_enforced(
    open_client: Callable[..., TestClient], operator: Headers
) -> None:
    client = open_client(max_exchange_minutes=120)
    new_member(client, operator, "ann")
    new_member(client, operator, "bob")

    paid(client, operator, "ann", "bob", 120)
    before = ledger_state(client, operator, "ann", "bob")
    response = pay(client, operator, "ann", "bob", 121)

    assert_problem(response, 422, "invalid_request")
    assert ledger_state(client, operator, "ann", "bob") == before


# The bank.


def test_bank_counts_members_but_not_system_accounts(client: TestClient, operator: Headers) -> None:
    assert client.get("/v1/bank", headers=operator).json()["members"] == 0
    for member_id in ("ann", "bob", "cat"):
        new_member(client, operator, member_id)

    response = client.get("/v1/bank", headers=operator)

    assert response.status_code == 200
    assert response.json() == {"bank": BANK_ID, "members": 3, "total_posted_minutes": 0}


def test_bank_total_posted_minutes_stays_zero_after_a_mix_of_exchanges(
    client: TestClient, operator: Headers
) -> None:
    for member_id in ("ann", "bob", "cat"):
        new_member(client, operator, member_id)
    for payer, payee, minutes in [("ann", "bob", 60), ("bob", "cat", 200), ("cat", "ann", 15)]:
        paid(client, operator, payer, payee, minutes)
    # A refused exchange must not leave half a posting behind either.
    assert pay(client, operator, "ann", "cat", 6000).status_code == 409

    bank = client.get("/v1/bank", headers=operator).json()

    assert bank["total_posted_minutes"] == 0
    balances = [balance(client, operator, m) for m in ("ann", "bob", "cat")]
    assert balances == [-45, -140, 185]


# Errors and the HTTP edges.


def test_unknown_route_is_a_404_problem(client: TestClient, operator: Headers) -> None:
    assert_problem(client.get("/v1/nowhere", headers=operator), 404, "not_found")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        pytest.param(b"member_id=maya&name=Maya&kind=person", "application/x-www-form-urlencoded"),
        pytest.param(b'{"member_id": "maya", "name": "Maya", "kind": "person"}', "text/plain"),
        pytest.param(b'{"member_id": "maya", "name": "Maya", "kind": "person"}', None),
    ],
    ids=["form", "text-plain", "no-content-type"],
)
def test_body_that_is_not_declared_json_is_415_and_opens_nothing(
    client: TestClient, operator: Headers, content: bytes, content_type: str | None
) -> None:
    headers = dict(operator)
    if content_type is not None:
        headers["Content-Type"] = content_type

    response = client.post("/v1/members", content=content, headers=headers)

    assert_problem(response, 415, "unsupported_media_type")
    assert_problem(client.get("/v1/members/maya", headers=operator), 404, "unknown_member")


def test_json_with_a_charset_parameter_is_accepted(client: TestClient, operator: Headers) -> None:
    response = client.post(
        "/v1/members",
        content=b'{"member_id": "maya", "name": "Maya", "kind": "person"}',
        headers={**operator, "Content-Type": "application/json; charset=utf-8"},
    )

    assert response.status_code == 201, response.text


@pytest.mark.parametrize("path", ["/v1/members", "/v1/exchanges"])
def test_invalid_json_is_422_invalid_request(
    client: TestClient, operator: Headers, path: str
) -> None:
    response = client.post(
        path, content=b'{"payer": "ann",', headers={**operator, "Content-Type": "application/json"}
    )

    assert_problem(response, 422, "invalid_request")


def padded_member_body(member_id: str, size: int) -> bytes:
    """A valid new-member body padded with JSON whitespace to exactly ``size`` bytes."""
    core = f'{{"member_id": "{member_id}", "name": "Padded", "kind": "person"}}'.encode()
    return core + b" " * (size - len(core))


def test_body_of_exactly_64_kib_is_accepted(client: TestClient, operator: Headers) -> None:
    body = padded_member_body("edge", MAX_BODY_BYTES)
    assert len(body) == 64 * 1024

    response = client.post(
        "/v1/members", content=body, headers={**operator, "Content-Type": "application/json"}
    )

    assert response.status_code == 201, response.text


def test_body_over_64_kib_is_413_payload_too_large_and_opens_nothing(
    client: TestClient, operator: Headers
) -> None:
    body = padded_member_body("big", 64 * 1024 + 1)

    response = client.post(
        "/v1/members", content=body, headers={**operator, "Content-Type": "application/json"}
    )

    assert_problem(response, 413, "payload_too_large")
    assert_problem(client.get("/v1/members/big", headers=operator), 404, "unknown_member")


def test_chunked_body_over_64_kib_is_413_payload_too_large_and_opens_nothing(
    client: TestClient, operator: Headers
) -> None:
    body = padded_member_body("big", 64 * 1024 + 1)

    # An iterator makes httpx send Transfer-Encoding: chunked with no Content-Length.
    response = client.post(
        "/v1/members",
        content=iter([body]),
        headers={**operator, "Content-Type": "application/json"},
    )

    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert_problem(response, 413, "payload_too_large")
    assert_problem(client.get("/v1/members/big", headers=operator), 404, "unknown_member")


ERROR_REQUESTS: dict[str, Callable[[TestClient, Headers, Headers], httpx.Response]] = {
    "401": lambda c, op, au: c.get("/v1/bank"),
    "403": lambda c, op, au: c.post("/v1/members", json=VALID_MEMBER, headers=au),
    "404-route": lambda c, op, au: c.get("/nowhere", headers=op),
    "404-member": lambda c, op, au: c.get("/v1/members/nobody", headers=op),
    "405": lambda c, op, au: c.delete("/v1/bank", headers=op),
    "409-exists": lambda c, op, au: c.post(
        "/v1/members", json={**VALID_MEMBER, "member_id": "ann"}, headers=op
    ),
    "409-overdraft": lambda c, op, au: pay(c, op, "ann", "bob", 601),
    "413": lambda c, op, au: c.post(
        "/v1/members",
        content=b" " * (MAX_BODY_BYTES + 1),
        headers={**op, "Content-Type": "application/json"},
    ),
    "415": lambda c, op, au: c.post(
        "/v1/members", content=b"x", headers={**op, "Content-Type": "text/plain"}
    ),
    "422-validation": lambda c, op, au: pay(c, op, "ann", "bob", "5"),
    "422-rule": lambda c, op, au: pay(c, op, "ann", "ann", 5),
}


@pytest.mark.parametrize("case", list(ERROR_REQUESTS))
def test_every_error_is_problem_json_with_type_title_status_code_and_detail(
    ann_and_bob: TestClient, operator: Headers, auditor: Headers, case: str
) -> None:
    response = ERROR_REQUESTS[case](ann_and_bob, operator, auditor)

    assert response.status_code == int(case[:3])
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == response.status_code
    assert all(isinstance(body[k], str) and body[k] for k in ("type", "title", "code", "detail"))
