"""The batch routes, POST /v1/exchanges/batch and POST /v1/transfers/batch, through the real
app: each item is checked, decided and answered on its own, exactly as alone; not
all-or-nothing; each item may carry its own idempotency key."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.common.http import MAX_BODY_BYTES
from services.ledger.application import Ledger
from services.ledger.service import create_app
from shared.protocol import CLEARING, BankEntry, DirectoryChanged, Envelope
from tests.helpers import BANK_ID, PROBLEM_KEYS, assert_problem, ledger_state, make_settings

Headers = dict[str, str]
MEMBERS = ("ann", "bob", "cy")


def open_members(client: TestClient, operator: Headers, *member_ids: str) -> None:
    for member_id in member_ids:
        body = {"member_id": member_id, "name": member_id.title(), "kind": "person"}
        assert client.post("/v1/members", json=body, headers=operator).status_code == 201


def exchange(payer: str, payee: str, minutes: Any, memo: str = "help", **extra: Any) -> Any:
    return {"payer": payer, "payee": payee, "minutes": minutes, "memo": memo, **extra}


def post_batch(client: TestClient, operator: Headers, items: list[Any]) -> list[dict[str, Any]]:
    response = client.post("/v1/exchanges/batch", json={"items": items}, headers=operator)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    assert len(results) == len(items)
    return results


@pytest.fixture
def bank(client: TestClient, operator: Headers) -> TestClient:
    open_members(client, operator, *MEMBERS)
    return client


def test_a_batch_mixing_accepted_refused_invalid_and_replayed_items_answers_each_on_its_own(
    bank: TestClient, operator: Headers
) -> None:
    first = bank.post(
        "/v1/exchanges",
        json=exchange("ann", "bob", 30, "earlier"),
        headers={**operator, "Idempotency-Key": "earlier-1"},
    ).json()
    items = [
        exchange("ann", "bob", 60, "accepted"),
        exchange("ann", "bob", 600, "over ann's limit"),
        exchange("ann", "bob", "5", "minutes as text"),
        exchange("ann", "nobody", 5, "unknown payee"),
        exchange("ann", "bob", 30, "earlier", idempotency_key="earlier-1"),
        exchange("bob", "cy", 20, "keyed", idempotency_key="k-2"),
        exchange("bob", "cy", 20, "keyed", idempotency_key="k-2"),
        exchange("bob", "cy", 21, "keyed", idempotency_key="k-2"),
        {"payer": "ann", "payee": "bob", "minutes": 1, "memo": "x", "tip": 2},
        exchange("cy", "ann", 15, "accepted after the refusals"),
    ]
    results = post_batch(bank, operator, items)

    assert [r["status"] for r in results] == [201, 409, 422, 404, 201, 201, 201, 409, 422, 201]
    assert results[0]["exchange"]["memo"] == "accepted"
    assert results[1]["problem"]["code"] == "overdraft_limit_exceeded"
    assert results[2]["problem"]["code"] == "invalid_request"
    assert results[2]["problem"]["detail"].startswith("minutes:")
    assert results[3]["problem"]["code"] == "unknown_member"
    assert results[4]["replayed"] is True
    assert results[4]["exchange"] == first
    assert (results[5]["replayed"], results[6]["replayed"]) == (False, True)
    assert results[6]["exchange"] == results[5]["exchange"]
    assert results[7]["problem"]["code"] == "idempotency_conflict"
    assert results[8]["problem"]["code"] == "invalid_request"
    for result in results:
        if result["status"] >= 400:
            assert result["problem"].keys() >= PROBLEM_KEYS
            assert result["problem"]["status"] == result["status"]
            assert "exchange" not in result or result["exchange"] is None
    state = ledger_state(bank, operator, *MEMBERS)
    assert state["ann"][0]["balance_minutes"] == -30 - 60 + 15
    assert state["bob"][0]["balance_minutes"] == 30 + 60 - 20
    assert state["cy"][0]["balance_minutes"] == 20 - 15
    assert state["bank"]["total_posted_minutes"] == 0


def test_a_batch_answers_as_the_same_requests_one_at_a_time_would(
    open_client: Callable[..., TestClient], operator: Headers, tmp_path: Any
) -> None:
    rng = random.Random(11)
    pairs = [rng.sample(MEMBERS, 2) for _ in range(80)]
    items = [
        exchange(payer, payee, rng.choice([10, 120, 240, 400]), f"n{n}")
        for n, (payer, payee) in enumerate(pairs)
    ]
    batched = open_client()
    open_members(batched, operator, *MEMBERS)
    results = post_batch(batched, operator, items)
    settings = make_settings(f"sqlite:///{tmp_path}/one-by-one.db")
    with TestClient(create_app(settings)) as one_by_one:
        open_members(one_by_one, operator, *MEMBERS)
        singles = [one_by_one.post("/v1/exchanges", json=i, headers=operator) for i in items]
        alone = [
            one_by_one.get(f"/v1/members/{m}", headers=operator).json()["balance_minutes"]
            for m in MEMBERS
        ]

    assert [r["status"] for r in results] == [s.status_code for s in singles]
    assert {r["status"] for r in results} == {201, 409}, "the limits were meant to refuse some"
    together = [
        batched.get(f"/v1/members/{m}", headers=operator).json()["balance_minutes"] for m in MEMBERS
    ]
    assert together == alone


def test_a_batch_that_is_not_a_list_of_1_to_1000_items_is_refused_whole(
    bank: TestClient, operator: Headers
) -> None:
    before = ledger_state(bank, operator, *MEMBERS)
    bodies: list[dict[str, Any]] = [
        {"items": []},
        {"items": [exchange("ann", "bob", 1)] * 1001},
        {"item": []},
    ]
    for body in bodies:
        response = bank.post("/v1/exchanges/batch", json=body, headers=operator)
        assert_problem(response, 422, "invalid_request")
    assert ledger_state(bank, operator, *MEMBERS) == before


def test_only_an_operator_posts_a_batch(
    bank: TestClient, operator: Headers, auditor: Headers
) -> None:
    body = {"items": [exchange("ann", "bob", 1)]}
    assert_problem(bank.post("/v1/exchanges/batch", json=body), 401, "unauthorized")
    assert_problem(bank.post("/v1/exchanges/batch", json=body, headers=auditor), 403, "forbidden")
    assert_problem(bank.post("/v1/transfers/batch", json=body, headers=auditor), 403, "forbidden")


def test_a_batch_may_be_larger_than_a_single_requests_body_limit(
    bank: TestClient, operator: Headers
) -> None:
    items = [
        exchange(*(("ann", "bob") if n % 2 else ("bob", "cy")), 1, "m" * 60) for n in range(1000)
    ]
    body_size = len(json.dumps({"items": items}))
    assert body_size > MAX_BODY_BYTES

    results = post_batch(bank, operator, items)

    assert all(r["status"] == 201 for r in results)
    assert bank.get("/v1/members/cy", headers=operator).json()["balance_minutes"] == 500


def test_a_transfer_batch_holds_each_accepted_transfer_and_refuses_the_rest_alone(
    bank: TestClient, operator: Headers
) -> None:
    ledger: Ledger = bank.app.state.application  # type: ignore[attr-defined]
    directory = DirectoryChanged(
        banks=[
            BankEntry(bank_id=BANK_ID, name="Here", status="active"),
            BankEntry(bank_id="college", name="College", status="active"),
        ]
    )
    ledger.receive([Envelope(source=CLEARING, destination=BANK_ID, seq=1, message=directory)])
    transfer = {"payer": "ann", "to_bank": "college", "payee": "priya", "memo": "a course"}
    items = [
        {**transfer, "minutes": 90, "idempotency_key": "t-1"},
        {**transfer, "minutes": 90, "idempotency_key": "t-1"},
        {**transfer, "minutes": 600},
        {**transfer, "to_bank": "nowhere", "minutes": 10},
        {**transfer, "minutes": 0},
        {**transfer, "minutes": 30},
    ]
    response = bank.post("/v1/transfers/batch", json={"items": items}, headers=operator)
    assert response.status_code == 200, response.text
    results = response.json()["results"]

    assert [r["status"] for r in results] == [202, 202, 409, 404, 422, 202]
    assert results[1]["replayed"] is True
    assert results[1]["transfer"] == results[0]["transfer"]
    assert results[3]["problem"]["code"] == "unknown_bank"
    assert {results[0]["transfer"]["status"], results[5]["transfer"]["status"]} == {"pending"}
    ann = bank.get("/v1/members/ann", headers=operator).json()
    assert ann["held_minutes"] == 120
    assert ann["balance_minutes"] == 0
