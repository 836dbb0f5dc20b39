"""The clearing house's HTTP API: admission (with the bank's token and public key), the
directory, and who may do what."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nkeys
import pytest
from fastapi.testclient import TestClient

from services.clearing.service import create_app
from services.clearing.settings import ClearingSettings
from shared.nats_users import new_seed
from shared.signing import SigningKey
from tests.helpers import AUDITOR_TOKEN, assert_problem

ADMIN_TOKEN = "admin-" + "x" * 24
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
AUDITOR = {"Authorization": f"Bearer {AUDITOR_TOKEN}"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = ClearingSettings.build(
        {"TIMEBANK_ADMIN_TOKEN": ADMIN_TOKEN, "TIMEBANK_AUDITOR_TOKEN": AUDITOR_TOKEN},
        store_url=f"sqlite:///{tmp_path}/clearing.db",
    )
    with TestClient(create_app(settings)) as client:
        yield client


def admit(client: TestClient, bank_id: str = "rushey-green", **extra: object) -> dict[str, object]:
    body = {"bank_id": bank_id, "name": "Rushey Green", "limit_minutes": 600, **extra}
    response = client.post("/v1/banks", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    admitted: dict[str, object] = response.json()
    return admitted


def test_admission_tells_the_bank_the_clearing_houses_public_key(tmp_path: Path) -> None:
    key_file = tmp_path / "clearing.key"
    key = SigningKey.generate()
    key.save(key_file)
    settings = ClearingSettings.build(
        {"TIMEBANK_ADMIN_TOKEN": ADMIN_TOKEN},
        store_url=f"sqlite:///{tmp_path}/clearing.db",
        signing_key_path=key_file,
    )
    with TestClient(create_app(settings)) as client:
        admitted = admit(client, public_key=SigningKey.generate().public_key)
    assert admitted["clearing_public_key"] == key.public_key


def test_admission_answers_the_bank_with_its_own_clearing_token_once(client: TestClient) -> None:
    admitted = admit(client, public_key=SigningKey.generate().public_key)

    token = admitted.pop("clearing_token")
    assert isinstance(token, str)
    assert len(token) >= 32
    # Off the bus, the clearing house has no key of its own to give.
    assert admitted.pop("clearing_public_key") is None
    assert admitted == {
        "bank_id": "rushey-green",
        "name": "Rushey Green",
        "status": "active",
        "limit_minutes": 600,
        "position_minutes": 0,
        "reserved_minutes": 0,
        "nats_key": "",
    }
    listed = client.get("/v1/banks", headers=ADMIN).json()["banks"]
    assert listed == [admitted]  # the token is not shown again
    assert token not in client.get("/v1/banks", headers=AUDITOR).text


def test_each_bank_gets_a_different_token(client: TestClient) -> None:
    assert admit(client, "a1")["clearing_token"] != admit(client, "b2")["clearing_token"]


@pytest.mark.parametrize(
    "public_key", ["not base64!", "c2hvcnQ=", "", "A" * 65], ids=["text", "short", "empty", "long"]
)
def test_admission_with_an_unusable_public_key_is_refused_and_admits_nothing(
    client: TestClient, public_key: str
) -> None:
    body = {"bank_id": "b1", "name": "B", "limit_minutes": 1, "public_key": public_key}
    response = client.post("/v1/banks", json=body, headers=ADMIN)

    assert response.status_code == 422
    assert client.get("/v1/banks", headers=ADMIN).json() == {"banks": []}


def test_admission_keeps_the_banks_nats_user_and_lists_it(
    client: TestClient, tmp_path: Path
) -> None:
    nats_key = new_seed(tmp_path / "bank.nk")
    admitted = admit(client, nats_key=nats_key)

    assert admitted["nats_key"] == nats_key
    assert client.get("/v1/banks", headers=AUDITOR).json()["banks"][0]["nats_key"] == nats_key


def a_user_nkey_with_its_checksum_broken() -> str:
    seed = nkeys.encode_seed(bytes(32), nkeys.PREFIX_BYTE_USER)
    key: str = nkeys.from_seed(seed).public_key.decode()
    return key[:-1] + ("A" if key[-1] != "A" else "B")


def an_account_nkey() -> str:
    seed = nkeys.encode_seed(bytes(32), nkeys.PREFIX_BYTE_ACCOUNT)
    key: str = nkeys.from_seed(seed).public_key.decode()
    return key


@pytest.mark.parametrize(
    "nats_key",
    [a_user_nkey_with_its_checksum_broken(), an_account_nkey(), "U" * 55, "U" + "1" * 55],
    ids=["checksum", "not-a-user", "short", "not-base32"],
)
def test_admission_with_an_unusable_nats_key_is_refused_and_admits_nothing(
    client: TestClient, nats_key: str
) -> None:
    body = {"bank_id": "b1", "name": "B", "limit_minutes": 1, "nats_key": nats_key}
    response = client.post("/v1/banks", json=body, headers=ADMIN)

    assert response.status_code == 422
    assert client.get("/v1/banks", headers=ADMIN).json() == {"banks": []}


def test_only_the_admin_admits_banks(client: TestClient) -> None:
    body = {"bank_id": "b1", "name": "B", "limit_minutes": 1}

    assert_problem(client.post("/v1/banks", json=body), 401, "unauthorized")
    assert_problem(client.post("/v1/banks", json=body, headers=AUDITOR), 403, "forbidden")
    assert client.get("/v1/banks", headers=AUDITOR).json() == {"banks": []}


def test_a_new_bank_token_replaces_the_old_one(client: TestClient) -> None:
    old = admit(client)["clearing_token"]
    assert client.post("/v1/settlements", headers=ADMIN).status_code == 201  # nothing to settle

    issued = client.post("/v1/banks/rushey-green/token", headers=ADMIN)

    assert issued.status_code == 200
    new = issued.json()["clearing_token"]
    assert new != old
    confirm = "/v1/settlements/1/obligations/1/confirm"
    # The old token is no bank's any more; the new one is the bank's (no such obligation: 404).
    body = {"signature": "c2lnbmVk"}
    assert_problem(
        client.post(confirm, json=body, headers={"Authorization": f"Bearer {old}"}),
        401,
        "unauthorized",
    )
    assert_problem(
        client.post(confirm, json=body, headers={"Authorization": f"Bearer {new}"}),
        404,
        "unknown_obligation",
    )


def test_only_the_admin_issues_bank_tokens_and_only_for_members(client: TestClient) -> None:
    admit(client)

    assert_problem(client.post("/v1/banks/rushey-green/token", headers=AUDITOR), 403, "forbidden")
    assert_problem(client.post("/v1/banks/atlantis/token", headers=ADMIN), 404, "unknown_bank")


def test_stuck_transfers_are_listed_for_readers_and_other_statuses_are_refused(
    client: TestClient,
) -> None:
    response = client.get("/v1/transfers", params={"status": "stuck"}, headers=AUDITOR)
    assert response.status_code == 200
    assert response.json() == {"transfers": []}
    assert_problem(client.get("/v1/transfers", params={"status": "stuck"}), 401, "unauthorized")
    refused = client.get("/v1/transfers", params={"status": "committed"}, headers=AUDITOR)
    assert_problem(refused, 422, "invalid_request")


def test_the_admin_changes_a_banks_name_or_limit_and_only_the_admin(client: TestClient) -> None:
    admitted = admit(client)
    changed = client.patch("/v1/banks/rushey-green", json={"limit_minutes": 900}, headers=ADMIN)
    assert changed.status_code == 200, changed.text
    assert changed.json()["limit_minutes"] == 900
    assert changed.json()["name"] == "Rushey Green"
    renamed = client.patch(
        "/v1/banks/rushey-green", json={"name": "Rushey Green TB"}, headers=ADMIN
    )
    assert (renamed.json()["name"], renamed.json()["limit_minutes"]) == ("Rushey Green TB", 900)
    bank_token = {"Authorization": f"Bearer {admitted['clearing_token']}"}
    for headers, status, code in ((AUDITOR, 403, "forbidden"), (bank_token, 401, "unauthorized")):
        refused = client.patch("/v1/banks/rushey-green", json={"limit_minutes": 1}, headers=headers)
        assert_problem(refused, status, code)
    assert client.get("/v1/banks", headers=ADMIN).json()["banks"][0]["limit_minutes"] == 900


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 422, "invalid_request"),
        ({"limit_minutes": -1}, 422, "invalid_request"),
        ({"limit_minutes": "10"}, 422, "invalid_request"),
        ({"name": ""}, 422, "invalid_request"),
        ({"status": "active"}, 422, "invalid_request"),
    ],
)
def test_a_bad_change_is_refused_with_a_problem(
    client: TestClient, body: dict[str, object], status: int, code: str
) -> None:
    admit(client)
    response = client.patch("/v1/banks/rushey-green", json=body, headers=ADMIN)
    assert_problem(response, status, code)


def test_changing_an_unknown_bank_is_404(client: TestClient) -> None:
    response = client.patch("/v1/banks/nobody", json={"limit_minutes": 1}, headers=ADMIN)
    assert_problem(response, 404, "unknown_bank")
