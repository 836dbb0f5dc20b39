"""Members and coordinators logging in at a bank, through the real app on SQLite and PostgreSQL:
invitations, passphrases, sessions, a member's own routes (and no one else's), throttled
logins that say nothing about what was wrong, and a coordinator's acts for a member, each
recorded in the same save as the act."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.audit.eventlog import open_event_log
from services.audit.replay import audit_bank
from services.common.sessions import SESSION_COOKIE, Principal
from services.common.stores import parse_store_url
from services.ledger.access import accept_invitation, acting, invite_coordinator, invite_member
from services.ledger.application import Ledger
from services.ledger.domain_terms import InvalidRequest
from services.ledger.views import ExchangeReceipt as Receipt
from tests.helpers import BANK_ID, OPERATOR_TOKEN, assert_problem
from tests.integration.service_federation import served_federation, wait_until

Headers = dict[str, str]
PASSPHRASE = "correct horse battery"


def open_member(client: TestClient, operator: Headers, member_id: str) -> None:
    body = {"member_id": member_id, "name": member_id.title(), "kind": "person"}
    assert client.post("/v1/members", json=body, headers=operator).status_code == 201


def invite(client: TestClient, headers: Headers, member_id: str) -> str:
    response = client.post(f"/v1/members/{member_id}/invitation", headers=headers)
    assert response.status_code == 201, response.text
    code: str = response.json()["code"]
    return code


def accept(client: TestClient, login: str, code: str, passphrase: str = PASSPHRASE) -> Any:
    body = {"login": login, "code": code, "passphrase": passphrase}
    return client.post("/v1/invitations/accept", json=body)


def log_in(client: TestClient, login: str, passphrase: str = PASSPHRASE) -> Any:
    return client.post("/v1/sessions", json={"login": login, "passphrase": passphrase})


def bearer(response: Any) -> Headers:
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def member_session(client: TestClient, operator: Headers, member_id: str) -> Headers:
    assert accept(client, member_id, invite(client, operator, member_id)).status_code == 201
    return bearer(log_in(client, member_id))


def coordinator_session(client: TestClient, operator: Headers, coordinator: str) -> Headers:
    body = {"coordinator_id": coordinator, "name": "Sam Reid"}
    invited = client.post("/v1/coordinators", json=body, headers=operator)
    assert invited.status_code == 201, invited.text
    assert accept(client, coordinator, invited.json()["code"]).status_code == 201
    return bearer(log_in(client, coordinator))


@pytest.fixture
def bank(client: TestClient, operator: Headers) -> TestClient:
    for member_id in ("ann", "bob", "cy"):
        open_member(client, operator, member_id)
    return client


def test_an_invited_member_sets_a_passphrase_logs_in_and_pays_from_its_own_account(
    bank: TestClient, operator: Headers
) -> None:
    ann = member_session(bank, operator, "ann")
    me = bank.get("/v1/me", headers=ann)
    assert me.status_code == 200, me.text
    assert (me.json()["login"], me.json()["role"], me.json()["member"]["member_id"]) == (
        "ann", "member", "ann"
    )  # fmt: skip
    paid = bank.post(
        "/v1/me/payments", json={"payee": "bob", "minutes": 45, "memo": "shopping"}, headers=ann
    )
    assert paid.status_code == 201, paid.text
    assert paid.json()["kind"] == "exchange"
    assert paid.json()["exchange"]["payer"] == "ann"
    assert bank.get("/v1/members/bob", headers=operator).json()["balance_minutes"] == 45
    # Sent again with its key, a payment is answered as before and paid once.
    keyed = {**ann, "Idempotency-Key": "ann-shopping-1"}
    payment = {"payee": "bob", "minutes": 5, "memo": "milk"}
    first = bank.post("/v1/me/payments", json=payment, headers=keyed)
    again = bank.post("/v1/me/payments", json=payment, headers=keyed)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == first.json()
    assert bank.get("/v1/members/bob", headers=operator).json()["balance_minutes"] == 50
    statement = bank.get("/v1/me/statement", headers=ann).json()
    assert [e["minutes"] for e in statement["entries"]] == [-45, -5]
    csv = bank.get("/v1/me/statement.csv", headers=ann)
    assert csv.status_code == 200
    assert csv.text.splitlines()[1].endswith(",-45,-45")
    assert csv.text.splitlines()[2].endswith(",-5,-50")


def test_a_member_can_neither_see_nor_spend_another_members_account(
    bank: TestClient, operator: Headers
) -> None:
    ann = member_session(bank, operator, "ann")
    for path in ("/v1/members/bob", "/v1/members", "/v1/members/bob/statement", "/v1/bank"):
        assert_problem(bank.get(path, headers=ann), 403, "forbidden")
    exchange = {"payer": "bob", "payee": "ann", "minutes": 10, "memo": ""}
    assert_problem(bank.post("/v1/exchanges", json=exchange, headers=ann), 403, "forbidden")
    payment = {"payee": "ann", "minutes": 10, "memo": ""}
    assert_problem(
        bank.post("/v1/members/bob/payments", json=payment, headers=ann), 403, "forbidden"
    )
    # A payment names no payer: there is no field to name someone else's account with.
    with_payer = {**payment, "payee": "cy", "payer": "bob"}
    assert_problem(
        bank.post("/v1/me/payments", json=with_payer, headers=ann), 422, "invalid_request"
    )
    assert bank.get("/v1/members/bob", headers=operator).json()["balance_minutes"] == 0


def test_a_wrong_passphrase_and_an_unknown_login_get_the_same_answer(
    bank: TestClient, operator: Headers
) -> None:
    member_session(bank, operator, "ann")
    wrong = assert_problem(log_in(bank, "ann", "not the passphrase"), 401, "login_failed")
    unknown = assert_problem(log_in(bank, "nobody", PASSPHRASE), 401, "login_failed")
    uninvited = assert_problem(log_in(bank, "bob", PASSPHRASE), 401, "login_failed")
    assert wrong["detail"] == unknown["detail"] == uninvited["detail"]


def test_failed_logins_are_throttled_per_login_even_for_the_right_passphrase(
    bank: TestClient, operator: Headers
) -> None:
    member_session(bank, operator, "ann")
    member_session(bank, operator, "bob")
    for _ in range(5):
        assert_problem(log_in(bank, "ann", "guess guess guess"), 401, "login_failed")
    throttled = log_in(bank, "ann", PASSPHRASE)
    assert_problem(throttled, 429, "too_many_attempts")
    assert int(throttled.headers["Retry-After"]) >= 1
    # Another login from the same address is not locked out by ann's failures.
    assert log_in(bank, "bob", PASSPHRASE).status_code == 201


def test_wrong_invitation_codes_count_as_failed_logins(bank: TestClient, operator: Headers) -> None:
    code = invite(bank, operator, "ann")
    for _ in range(5):
        assert_problem(accept(bank, "ann", "AAAA-BBBB-CCCC"), 403, "invitation_refused")
    assert_problem(accept(bank, "ann", code), 429, "too_many_attempts")


def test_an_invitation_code_works_once_and_a_new_invitation_ends_the_old_passphrase(
    bank: TestClient, operator: Headers
) -> None:
    code = invite(bank, operator, "ann")
    assert_problem(accept(bank, "ann", code, "short"), 422, "invalid_request")
    # Read out over the phone: any case, spaces for dashes.
    assert accept(bank, "ann", code.lower().replace("-", " ")).status_code == 201
    assert_problem(accept(bank, "ann", code, "another good passphrase"), 403, "invitation_refused")
    invite(bank, operator, "ann")
    assert_problem(log_in(bank, "ann"), 401, "login_failed")


def test_the_session_cookie_is_http_only_and_strict_and_the_api_wants_the_bearer_token(
    bank: TestClient, operator: Headers
) -> None:
    code = invite(bank, operator, "ann")
    accept(bank, "ann", code)
    response = log_in(bank, "ann")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    # The cookie alone (the client keeps it) opens no API route: no cross-site form can spend.
    assert_problem(bank.get("/v1/me"), 401, "unauthorized")
    token = bearer(response)
    assert bank.delete("/v1/sessions/current", headers=token).status_code == 204
    assert_problem(bank.get("/v1/me", headers=token), 401, "unauthorized")


def test_a_suspended_member_logs_in_but_cannot_pay_and_a_closed_one_cannot_log_in(
    bank: TestClient, operator: Headers
) -> None:
    ann = member_session(bank, operator, "ann")
    member_session(bank, operator, "bob")
    assert bank.post("/v1/members/ann/suspend", headers=operator).status_code == 200
    payment = {"payee": "bob", "minutes": 5, "memo": ""}
    assert_problem(bank.post("/v1/me/payments", json=payment, headers=ann), 409, "member_inactive")
    assert bank.get("/v1/me/statement", headers=ann).status_code == 200
    assert bank.post("/v1/members/bob/close", headers=operator).status_code == 200
    assert_problem(log_in(bank, "bob"), 401, "login_failed")


def test_a_coordinator_pays_for_a_member_and_the_act_is_recorded_with_it(
    bank: TestClient, operator: Headers
) -> None:
    sam = coordinator_session(bank, operator, "sam")
    payment = {"payee": "bob", "minutes": 30, "memo": "gardening"}
    paid = bank.post("/v1/members/ann/payments", json=payment, headers=sam)
    assert paid.status_code == 201, paid.text
    refused = bank.post("/v1/members/ann/payments", json={**payment, "minutes": 601}, headers=sam)
    assert_problem(refused, 409, "overdraft_limit_exceeded")
    code = invite(bank, sam, "cy")
    assert code
    # The operator's token is a machine's: its payments are not anyone's acts.
    assert bank.post("/v1/members/ann/payments", json=payment, headers=operator).status_code == 201
    acts = bank.get("/v1/coordinators/sam/acts", headers=operator).json()
    assert [(a["member_id"], a["action"], a["reference"]) for a in acts] == [
        ("ann", "paid", paid.json()["exchange"]["exchange_id"]),
        ("cy", "invited", ""),
    ]
    assert bank.get("/v1/members/ann", headers=sam).json()["balance_minutes"] == -60
    for_ann = bank.get("/v1/members/ann/acts", headers=operator).json()
    assert [(a["coordinator"], a["action"], a["reference"]) for a in for_ann] == [
        ("sam", "paid", paid.json()["exchange"]["exchange_id"])
    ]
    assert bank.get("/v1/members/cy/acts", headers=operator).json()[0]["action"] == "invited"
    assert bank.get("/v1/members/bob/acts", headers=operator).json() == []
    assert_problem(bank.get("/v1/members/nobody/acts", headers=operator), 404, "unknown_member")


def test_coordinators_are_invited_by_the_operator_only_and_not_under_a_members_id(
    bank: TestClient, operator: Headers, auditor: Headers
) -> None:
    sam = coordinator_session(bank, operator, "sam")
    body = {"coordinator_id": "kim", "name": "Kim"}
    assert_problem(bank.post("/v1/coordinators", json=body, headers=sam), 403, "forbidden")
    assert_problem(bank.post("/v1/coordinators", json=body, headers=auditor), 403, "forbidden")
    taken = {"coordinator_id": "ann", "name": "Ann"}
    assert_problem(bank.post("/v1/coordinators", json=taken, headers=operator), 409, "login_exists")
    assert_problem(bank.post("/v1/members/sam/invitation", headers=operator), 404, "unknown_member")


def test_revoking_a_login_ends_its_sessions(bank: TestClient, operator: Headers) -> None:
    sam = coordinator_session(bank, operator, "sam")
    ann = member_session(bank, operator, "ann")
    assert_problem(bank.post("/v1/logins/sam/revoke", headers=sam), 403, "forbidden")
    assert bank.post("/v1/logins/ann/revoke", headers=sam).status_code == 204
    assert_problem(bank.get("/v1/me", headers=ann), 401, "unauthorized")
    assert_problem(log_in(bank, "ann"), 401, "login_failed")


def test_logins_and_acts_are_in_the_log_and_the_audit_still_passes(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/bank.db"
    ledger = Ledger(BANK_ID, parse_store_url(url))
    try:
        admin = Principal("operator", "operator")
        ledger.open_member("ann", "Ann", "person")
        ledger.open_member("bob", "Bob", "person")
        invite_member(ledger, "ann", admin)
        command = ledger.exchange_command("ann", "bob", 20, "")
        sam_session = Principal("coordinator", "sam")
        with pytest.raises(InvalidRequest):  # sam has not accepted: not a coordinator yet
            ledger.run(acting(ledger, command, sam_session, "ann", "paid", _id), None, Receipt)
        invitation = invite_coordinator(ledger, "sam", "Sam", admin)
        accept_invitation(ledger, "sam", invitation.code, PASSPHRASE)
        ledger.run(acting(ledger, command, sam_session, "ann", "paid", _id), None, Receipt)
    finally:
        ledger.close()
    log = open_event_log(url)
    try:
        result = audit_bank(log, default_overdraft_minutes=600)
    finally:
        log.close()
    assert result.ok, result.problems
    assert result.balances["bob"].posted_minutes == 20


@pytest.mark.timeout(90)
def test_a_member_pays_a_member_of_a_partner_bank(tmp_path: Path, nats_url: str, bus: Any) -> None:
    with served_federation(tmp_path, nats_url, bus) as fed:
        gp = fed.clients["gp"]
        maya = member_session(gp, {"Authorization": f"Bearer {OPERATOR_TOKEN}"}, "maya")
        payment = {"payee": "bob", "bank": "college", "minutes": 40, "memo": "evening class"}
        sent = gp.post("/v1/me/payments", json=payment, headers=maya)
        assert sent.status_code == 202, sent.text
        transfer_id = sent.json()["transfer"]["transfer_id"]
        wait_until(lambda: fed.status("gp", transfer_id) == "committed", what="committed")
        assert fed.banks["college"].get_member("bob").balance_minutes == 40
        assert fed.banks["gp"].get_member("maya").balance_minutes == -40


def _id(receipt: Receipt) -> str:
    return receipt.exchange_id


def test_a_member_reads_the_board_and_posts_only_its_own_offers(
    bank: TestClient, operator: Headers
) -> None:
    ann = member_session(bank, operator, "ann")
    sam = coordinator_session(bank, operator, "sam")
    offer = {"kind": "offer", "title": "Lifts", "category": "lifts", "minutes": 60}
    posted = bank.post("/v1/me/offers", json=offer, headers=ann)
    assert posted.status_code == 201, posted.text
    assert (posted.json()["member_id"], posted.json()["shared_with_federation"]) == ("ann", False)
    someone_elses = {**offer, "member_id": "bob"}
    assert_problem(
        bank.post("/v1/me/offers", json=someone_elses, headers=ann), 422, "invalid_request"
    )
    assert_problem(bank.post("/v1/offers", json=someone_elses, headers=ann), 403, "forbidden")
    board = bank.get("/v1/offers", headers=ann)
    assert [o["title"] for o in board.json()["offers"]] == ["Lifts"]
    assert bank.get("/v1/federation/offers", headers=ann).status_code == 200
    withdraw = bank.post(f"/v1/offers/{posted.json()['offer_id']}/withdraw", headers=ann)
    assert_problem(withdraw, 403, "forbidden")
    # A coordinator's post for a member is recorded as the coordinator's act.
    for_bob = bank.post("/v1/offers", json=someone_elses, headers=sam)
    assert for_bob.status_code == 201, for_bob.text
    acts = bank.get("/v1/coordinators/sam/acts", headers=operator).json()
    assert [(a["member_id"], a["action"], a["reference"]) for a in acts] == [
        ("bob", "posted", for_bob.json()["offer_id"])
    ]
