"""Idempotency-Key replays and conflicts (also across a restart), and bearer-token auth by role."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.ledger.service import create_app
from tests.helpers import OPERATOR_TOKEN, assert_problem, ledger_state, make_settings

Headers = dict[str, str]

ANN_PAYS_BOB = {"payer": "ann", "payee": "bob", "minutes": 90, "memo": "lift"}
MAYA = {"member_id": "maya", "name": "Maya", "kind": "person"}


@contextmanager
def running(store_url: str) -> Iterator[TestClient]:
    """One run of the service on the store; leaving the block shuts it down (a restart)."""
    with TestClient(create_app(make_settings(store_url))) as client:
        yield client


def new_member(client: TestClient, operator: Headers, member_id: str, **fields: Any) -> None:
    body = {"member_id": member_id, "name": member_id.title(), "kind": "person", **fields}
    response = client.post("/v1/members", json=body, headers=operator)
    assert response.status_code == 201, response.text


def keyed(headers: Headers, key: str | bytes) -> dict[str, Any]:
    return {**headers, "Idempotency-Key": key}


def balances(client: TestClient, operator: Headers, *member_ids: str) -> list[int]:
    return [
        client.get(f"/v1/members/{m}", headers=operator).json()["balance_minutes"]
        for m in member_ids
    ]


@pytest.fixture
def ann_and_bob(client: TestClient, operator: Headers) -> TestClient:
    new_member(client, operator, "ann")
    new_member(client, operator, "bob")
    return client


# Idempotency-Key on exchanges.


def test_repeated_exchange_with_the_same_key_replays_the_first_receipt(
    ann_and_bob: TestClient, operator: Headers
) -> None:
    first = ann_and_bob.post("/v1/exchanges", json=ANN_PAYS_BOB, headers=keyed(operator, "k-1"))
    again = ann_and_bob.post("/v1/exchanges", json=ANN_PAYS_BOB, headers=keyed(operator, "k-1"))

    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()


def test_repeated_exchange_with_the_same_key_moves_the_balances_once(
    ann_and_bob: TestClient, operator: Headers
) -> None:
    for _ in range(3):
        response = ann_and_bob.post(
            "/v1/exchanges", json=ANN_PAYS_BOB, headers=keyed(operator, "k-1")
        )
        assert response.status_code == 201, response.text

    assert balances(ann_and_bob, operator, "ann", "bob") == [-90, 90]
    statement = ann_and_bob.get("/v1/members/ann/statement", headers=operator).json()
    assert len(statement["entries"]) == 1


def test_repeated_exchange_without_a_key_is_recorded_each_time(
    ann_and_bob: TestClient, operator: Headers
) -> None:
    first = ann_and_bob.post("/v1/exchanges", json=ANN_PAYS_BOB, headers=operator)
    again = ann_and_bob.post("/v1/exchanges", json=ANN_PAYS_BOB, headers=operator)

    assert "idempotent-replayed" not in again.headers
    assert first.json()["exchange_id"] != again.json()["exchange_id"]
    assert balances(ann_and_bob, operator, "ann", "bob") == [-180, 180]


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({**ANN_PAYS_BOB, "minutes": 91}, id="minutes"),
        pytest.param({**ANN_PAYS_BOB, "memo": "another lift"}, id="memo"),
        pytest.param({**ANN_PAYS_BOB, "payer": "bob", "payee": "ann"}, id="direction"),
    ],
)
def test_same_key_with_another_exchange_is_409_idempotency_conflict_and_changes_nothing(
    ann_and_bob: TestClient, operator: Headers, other: dict[str, Any]
) -> None:
    ann_and_bob.post("/v1/exchanges", json=ANN_PAYS_BOB, headers=keyed(operator, "k-1"))
    before = ledger_state(ann_and_bob, operator, "ann", "bob")

    response = ann_and_bob.post("/v1/exchanges", json=other, headers=keyed(operator, "k-1"))

    assert_problem(response, 409, "idempotency_conflict")
    assert ledger_state(ann_and_bob, operator, "ann", "bob") == before


def test_a_key_used_to_open_a_member_conflicts_with_an_exchange(
    ann_and_bob: TestClient, operator: Headers
) -> None:
    opened = ann_and_bob.post("/v1/members", json=MAYA, headers=keyed(operator, "shared"))
    assert opened.status_code == 201, opened.text
    before = ledger_state(ann_and_bob, operator, "ann", "bob", "maya")

    response = ann_and_bob.post(
        "/v1/exchanges", json=ANN_PAYS_BOB, headers=keyed(operator, "shared")
    )

    assert_problem(response, 409, "idempotency_conflict")
    assert ledger_state(ann_and_bob, operator, "ann", "bob", "maya") == before


# Idempotency-Key on new members.


def test_repeated_new_member_with_the_same_key_replays_the_first_result(
    client: TestClient, operator: Headers
) -> None:
    first = client.post("/v1/members", json=MAYA, headers=keyed(operator, "m-1"))
    again = client.post("/v1/members", json=MAYA, headers=keyed(operator, "m-1"))

    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert client.get("/v1/bank", headers=operator).json()["members"] == 1


def test_repeated_new_member_without_a_key_is_409_member_exists(
    client: TestClient, operator: Headers
) -> None:
    client.post("/v1/members", json=MAYA, headers=operator)

    assert_problem(client.post("/v1/members", json=MAYA, headers=operator), 409, "member_exists")


def test_same_key_with_another_new_member_is_409_idempotency_conflict_and_opens_nothing(
    client: TestClient, operator: Headers
) -> None:
    client.post("/v1/members", json=MAYA, headers=keyed(operator, "m-1"))
    other = {"member_id": "noor", "name": "Noor", "kind": "person"}

    response = client.post("/v1/members", json=other, headers=keyed(operator, "m-1"))

    assert_problem(response, 409, "idempotency_conflict")
    assert_problem(client.get("/v1/members/noor", headers=operator), 404, "unknown_member")
    assert client.get("/v1/bank", headers=operator).json()["members"] == 1


# Idempotency across a restart of the service.


def test_exchange_replay_survives_a_restart(store_url: str, operator: Headers) -> None:
    with running(store_url) as first_run:
        new_member(first_run, operator, "ann")
        new_member(first_run, operator, "bob")
        first = first_run.post("/v1/exchanges", json=ANN_PAYS_BOB, headers=keyed(operator, "k-1"))
        assert first.status_code == 201, first.text

    with running(store_url) as second_run:
        again = second_run.post("/v1/exchanges", json=ANN_PAYS_BOB, headers=keyed(operator, "k-1"))

        assert again.status_code == 201, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert balances(second_run, operator, "ann", "bob") == [-90, 90]


def test_exchange_conflict_survives_a_restart(store_url: str, operator: Headers) -> None:
    with running(store_url) as first_run:
        new_member(first_run, operator, "ann")
        new_member(first_run, operator, "bob")
        first_run.post("/v1/exchanges", json=ANN_PAYS_BOB, headers=keyed(operator, "k-1"))
        before = ledger_state(first_run, operator, "ann", "bob")

    with running(store_url) as second_run:
        other = {**ANN_PAYS_BOB, "minutes": 30}
        response = second_run.post("/v1/exchanges", json=other, headers=keyed(operator, "k-1"))

        assert_problem(response, 409, "idempotency_conflict")
        assert ledger_state(second_run, operator, "ann", "bob") == before


def test_new_member_replay_and_conflict_survive_a_restart(
    store_url: str, operator: Headers
) -> None:
    with running(store_url) as first_run:
        first = first_run.post("/v1/members", json=MAYA, headers=keyed(operator, "m-1"))
        assert first.status_code == 201, first.text

    with running(store_url) as second_run:
        again = second_run.post("/v1/members", json=MAYA, headers=keyed(operator, "m-1"))
        other = second_run.post(
            "/v1/members", json={**MAYA, "member_id": "noor"}, headers=keyed(operator, "m-1")
        )

        assert again.status_code == 201, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert_problem(other, 409, "idempotency_conflict")
        assert second_run.get("/v1/bank", headers=operator).json()["members"] == 1


# Only successful results are stored under a key.


def test_refused_exchange_records_nothing_under_its_key_so_a_retry_can_succeed(
    client: TestClient, operator: Headers
) -> None:
    new_member(client, operator, "ann", overdraft_limit_minutes=0)
    new_member(client, operator, "bob")
    refused = client.post("/v1/exchanges", json=ANN_PAYS_BOB, headers=keyed(operator, "k-1"))
    assert_problem(refused, 409, "overdraft_limit_exceeded")
    earned = client.post(
        "/v1/exchanges",
        json={"payer": "bob", "payee": "ann", "minutes": 90, "memo": "gardening"},
        headers=operator,
    )
    assert earned.status_code == 201, earned.text

    retried = client.post("/v1/exchanges", json=ANN_PAYS_BOB, headers=keyed(operator, "k-1"))

    assert retried.status_code == 201, retried.text
    assert "idempotent-replayed" not in retried.headers
    assert balances(client, operator, "ann", "bob") == [0, 0]


def test_refused_exchange_leaves_its_key_free_for_a_different_request(
    ann_and_bob: TestClient, operator: Headers
) -> None:
    unknown_payee = {**ANN_PAYS_BOB, "payee": "nobody"}
    refused = ann_and_bob.post("/v1/exchanges", json=unknown_payee, headers=keyed(operator, "k-1"))
    assert_problem(refused, 404, "unknown_member")

    response = ann_and_bob.post("/v1/exchanges", json=ANN_PAYS_BOB, headers=keyed(operator, "k-1"))

    assert response.status_code == 201, response.text
    assert balances(ann_and_bob, operator, "ann", "bob") == [-90, 90]


# Invalid keys.


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("k" * 256, id="256-chars"),
        pytest.param("clé".encode(), id="non-ascii-utf8"),
        pytest.param("clé".encode("latin-1"), id="non-ascii-latin1"),
    ],
)
@pytest.mark.parametrize("route", ["/v1/exchanges", "/v1/members"])
def test_invalid_idempotency_key_is_422_invalid_request_and_writes_nothing(
    ann_and_bob: TestClient, operator: Headers, key: str | bytes, route: str
) -> None:
    body = ANN_PAYS_BOB if route == "/v1/exchanges" else MAYA
    before = ledger_state(ann_and_bob, operator, "ann", "bob")

    response = ann_and_bob.post(route, json=body, headers=keyed(operator, key))

    assert_problem(response, 422, "invalid_request")
    assert ledger_state(ann_and_bob, operator, "ann", "bob") == before
    assert_problem(ann_and_bob.get("/v1/members/maya", headers=operator), 404, "unknown_member")


def test_idempotency_key_of_255_characters_is_accepted(
    ann_and_bob: TestClient, operator: Headers
) -> None:
    key = "k" * 255
    first = ann_and_bob.post("/v1/exchanges", json=ANN_PAYS_BOB, headers=keyed(operator, key))
    again = ann_and_bob.post("/v1/exchanges", json=ANN_PAYS_BOB, headers=keyed(operator, key))

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true"
    assert balances(ann_and_bob, operator, "ann", "bob") == [-90, 90]


# Authentication.

PROTECTED = [
    ("GET", "/v1/members/ann", None),
    ("GET", "/v1/members/ann/statement", None),
    ("GET", "/v1/bank", None),
    ("POST", "/v1/members", MAYA),
    ("POST", "/v1/exchanges", ANN_PAYS_BOB),
]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": f"Basic {OPERATOR_TOKEN}"}, id="wrong-scheme"),
        pytest.param({"Authorization": OPERATOR_TOKEN}, id="no-scheme"),
        pytest.param({"Authorization": "Bearer "}, id="empty-token"),
        pytest.param({"Authorization": "Bearer not-the-token-at-all-x"}, id="wrong-token"),
        pytest.param({"Authorization": f"Bearer {OPERATOR_TOKEN}x"}, id="token-plus-one"),
    ],
)
def test_every_protected_route_without_a_valid_token_is_401_with_www_authenticate(
    ann_and_bob: TestClient, operator: Headers, headers: Headers
) -> None:
    before = ledger_state(ann_and_bob, operator, "ann", "bob")

    for method, path, body in PROTECTED:
        response = ann_and_bob.request(method, path, json=body, headers=headers)
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer"), (method, path)

    assert ledger_state(ann_and_bob, operator, "ann", "bob") == before
    assert_problem(ann_and_bob.get("/v1/members/maya", headers=operator), 404, "unknown_member")


def test_bearer_scheme_is_case_insensitive(client: TestClient) -> None:
    response = client.get("/v1/bank", headers={"Authorization": f"bearer {OPERATOR_TOKEN}"})

    assert response.status_code == 200, response.text


def test_healthz_needs_no_token_and_ignores_a_bad_one(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    bad = client.get("/healthz", headers={"Authorization": "Bearer not-the-token-at-all-x"})
    assert bad.status_code == 200


def test_auditor_can_read_every_get_route(
    ann_and_bob: TestClient, operator: Headers, auditor: Headers
) -> None:
    ann_and_bob.post("/v1/exchanges", json=ANN_PAYS_BOB, headers=operator)

    for path in ("/healthz", "/v1/members/ann", "/v1/members/ann/statement", "/v1/bank"):
        by_auditor = ann_and_bob.get(path, headers=auditor)
        assert by_auditor.status_code == 200, (path, by_auditor.text)
        assert by_auditor.json() == ann_and_bob.get(path, headers=operator).json()


@pytest.mark.parametrize(("path", "body"), [("/v1/members", MAYA), ("/v1/exchanges", ANN_PAYS_BOB)])
def test_auditor_writing_is_403_forbidden_and_writes_nothing(
    ann_and_bob: TestClient, operator: Headers, auditor: Headers, path: str, body: dict[str, Any]
) -> None:
    before = ledger_state(ann_and_bob, operator, "ann", "bob")

    response = ann_and_bob.post(path, json=body, headers=keyed(auditor, "audit-1"))

    assert_problem(response, 403, "forbidden")
    assert ledger_state(ann_and_bob, operator, "ann", "bob") == before
    assert_problem(ann_and_bob.get("/v1/members/maya", headers=operator), 404, "unknown_member")
    # The refused request must not have claimed the key either.
    by_operator = ann_and_bob.post(path, json=body, headers=keyed(operator, "audit-1"))
    assert by_operator.status_code == 201, by_operator.text
    assert "idempotent-replayed" not in by_operator.headers


def test_operator_can_open_members_record_exchanges_and_read_everything(
    client: TestClient, operator: Headers
) -> None:
    assert client.post("/v1/members", json=MAYA, headers=operator).status_code == 201
    new_member(client, operator, "noor")
    exchange = {"payer": "maya", "payee": "noor", "minutes": 45, "memo": "tea"}
    assert client.post("/v1/exchanges", json=exchange, headers=operator).status_code == 201

    for path in ("/v1/members/maya", "/v1/members/maya/statement", "/v1/bank"):
        assert client.get(path, headers=operator).status_code == 200, path
    assert balances(client, operator, "maya", "noor") == [-45, 45]
