"""A coordinator's changes to a member, through the real app: name and overdraft limit, suspend,
reinstate and close. A suspended or closed member can neither pay nor be paid, here or from
another bank; a closed member's balance stays; every change is an event the audit replays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.audit.eventlog import open_event_log
from services.audit.replay import audit_bank
from services.common.stores import parse_store_url
from services.ledger.application import Ledger
from services.ledger.domain_terms import HoldsOpen, MemberInactive
from shared.protocol import CLEARING, BankEntry, CreditRequested, DirectoryChanged, Envelope
from tests.helpers import BANK_ID, assert_problem

Headers = dict[str, str]


def open_member(client: TestClient, operator: Headers, member_id: str, **extra: Any) -> None:
    body = {"member_id": member_id, "name": member_id.title(), "kind": "person", **extra}
    response = client.post("/v1/members", json=body, headers=operator)
    assert response.status_code == 201, response.text


def pay(client: TestClient, operator: Headers, payer: str, payee: str, minutes: int) -> Any:
    body = {"payer": payer, "payee": payee, "minutes": minutes, "memo": "help"}
    return client.post("/v1/exchanges", json=body, headers=operator)


@pytest.fixture
def bank(client: TestClient, operator: Headers) -> TestClient:
    for member_id in ("ann", "bob"):
        open_member(client, operator, member_id)
    return client


def test_a_coordinator_renames_a_member_and_changes_its_overdraft_limit(
    bank: TestClient, operator: Headers
) -> None:
    changed = bank.patch(
        "/v1/members/ann",
        json={"name": "Ann Smith", "overdraft_limit_minutes": 30},
        headers=operator,
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["name"], changed.json()["overdraft_limit_minutes"]) == ("Ann Smith", 30)
    assert_problem(pay(bank, operator, "ann", "bob", 31), 409, "overdraft_limit_exceeded")
    # null: the bank's default again (600 minutes).
    again = bank.patch("/v1/members/ann", json={"overdraft_limit_minutes": None}, headers=operator)
    assert again.json()["overdraft_limit_minutes"] == 600
    assert again.json()["name"] == "Ann Smith"
    assert pay(bank, operator, "ann", "bob", 31).status_code == 201


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/members/ann", {}, 422, "invalid_request"),
        ("/v1/members/ann", {"name": ""}, 422, "invalid_request"),
        ("/v1/members/ann", {"name": None}, 422, "invalid_request"),
        ("/v1/members/ann", {"overdraft_limit_minutes": -1}, 422, "invalid_request"),
        ("/v1/members/ann", {"kind": "organisation"}, 422, "invalid_request"),
        ("/v1/members/nobody", {"name": "X"}, 404, "unknown_member"),
        ("/v1/members/federation", {"name": "X"}, 422, "invalid_request"),
    ],
)
def test_a_bad_change_is_refused_and_writes_nothing(
    bank: TestClient, operator: Headers, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    before = bank.get("/v1/members/ann", headers=operator).json()
    assert_problem(bank.patch(path, json=body, headers=operator), status, code)
    assert bank.get("/v1/members/ann", headers=operator).json() == before


def test_a_suspended_member_neither_pays_nor_is_paid_until_reinstated(
    bank: TestClient, operator: Headers, auditor: Headers
) -> None:
    assert bank.post("/v1/members/ann/suspend", headers=auditor).status_code == 403
    suspended = bank.post("/v1/members/ann/suspend", headers=operator)
    assert suspended.json()["status"] == "suspended"
    assert_problem(pay(bank, operator, "ann", "bob", 10), 409, "member_inactive")
    assert_problem(pay(bank, operator, "bob", "ann", 10), 409, "member_inactive")
    reinstated = bank.post("/v1/members/ann/reinstate", headers=operator)
    assert reinstated.json()["status"] == "active"
    assert pay(bank, operator, "ann", "bob", 10).status_code == 201


def test_a_closed_member_keeps_its_balance_and_can_never_pay_be_paid_or_change(
    bank: TestClient, operator: Headers
) -> None:
    assert pay(bank, operator, "bob", "ann", 45).status_code == 201
    closed = bank.post("/v1/members/ann/close", headers=operator)
    assert closed.status_code == 200, closed.text
    assert (closed.json()["status"], closed.json()["balance_minutes"]) == ("closed", 45)
    assert_problem(pay(bank, operator, "ann", "bob", 1), 409, "member_inactive")
    assert_problem(pay(bank, operator, "bob", "ann", 1), 409, "member_inactive")
    for action in ("reinstate", "suspend", "close"):
        response = bank.post(f"/v1/members/ann/{action}", headers=operator)
        assert_problem(response, 409, "member_closed")
    assert_problem(bank.patch("/v1/members/ann", json={"name": "A"}, headers=operator), 409,
                   "member_closed")  # fmt: skip
    assert bank.get("/v1/members/ann", headers=operator).json()["balance_minutes"] == 45
    assert bank.get("/v1/bank", headers=operator).json()["total_posted_minutes"] == 0


def test_a_member_with_minutes_on_hold_cannot_be_closed_until_they_are_decided(
    tmp_path: Path,
) -> None:
    ledger = Ledger(BANK_ID, parse_store_url(f"sqlite:///{tmp_path / 'bank.db'}"))
    try:
        ledger.open_member("ann", "Ann", "person")
        ledger.open_member("bob", "Bob", "person")
        ledger.place_hold("ann", "h1", 20, "bob", "a course place")
        with pytest.raises(HoldsOpen):
            ledger.change_member("ann", lambda account: account.close())
        assert ledger.get_member("ann").status == "active"
        ledger.void_hold("ann", "h1")
        assert ledger.change_member("ann", lambda account: account.close()).status == "closed"
    finally:
        ledger.close()


def directory() -> DirectoryChanged:
    banks = [BankEntry(bank_id=b, name=b, status="active") for b in (BANK_ID, "college")]
    return DirectoryChanged(banks=banks)


def test_a_suspended_member_neither_sends_nor_receives_a_cross_bank_transfer(
    tmp_path: Path,
) -> None:
    ledger = Ledger(BANK_ID, parse_store_url(f"sqlite:///{tmp_path / 'bank.db'}"))
    try:
        ledger.open_member("ann", "Ann", "person")
        ledger.change_member("ann", lambda account: account.suspend())
        request = CreditRequested(
            transfer_id="t1",
            payer_bank="college",
            payer="bob",
            payee="ann",
            minutes=30,
            memo="",
        )
        envelopes = [
            Envelope(source=CLEARING, destination=BANK_ID, seq=1, message=directory()),
            Envelope(source=CLEARING, destination=BANK_ID, seq=2, message=request),
        ]
        ledger.receive(envelopes)
        assert ledger.get_transfer("t1").status == "aborted"
        assert ledger.get_transfer("t1").reason == "payee_refused"
        assert ledger.get_member("federation").held_minutes == 0
        with pytest.raises(MemberInactive):
            ledger.request_transfer("ann", "college", "bob", 5, "")
    finally:
        ledger.close()


def test_the_audit_replays_every_change_and_follows_a_changed_overdraft_limit(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'bank.db'}"
    ledger = Ledger(BANK_ID, parse_store_url(url), default_overdraft_minutes=100)
    try:
        ledger.open_member("ann", "Ann", "person")
        ledger.open_member("bob", "Bob", "person")
        # Past the default of 100, which the audit would report if it missed the change.
        ledger.change_member("ann", lambda account: account.change_overdraft(300))
        ledger.exchange("ann", "bob", 250, "a course")
        ledger.change_member("ann", lambda account: account.rename("Ann Smith"))
        ledger.change_member("bob", lambda account: account.suspend())
        ledger.change_member("bob", lambda account: account.reinstate())
        ledger.change_member("bob", lambda account: account.close())
    finally:
        ledger.close()
    log = open_event_log(url)
    try:
        result = audit_bank(log, default_overdraft_minutes=100)
    finally:
        log.close()
    assert result.ok, result.problems
    assert result.balances["ann"].posted_minutes == -250
    assert result.balances["bob"].posted_minutes == 250


def test_a_renamed_member_is_found_by_its_new_name_and_a_closed_one_is_still_listed(
    bank: TestClient, operator: Headers
) -> None:
    assert bank.get("/v1/members", params={"q": "ann"}, headers=operator).json()["members"]
    bank.patch("/v1/members/ann", json={"name": "Priya Shah"}, headers=operator)
    found = bank.get("/v1/members", params={"q": "shah"}, headers=operator).json()["members"]
    assert [(m["member_id"], m["name"]) for m in found] == [("ann", "Priya Shah")]
    bank.post("/v1/members/bob/close", headers=operator)
    listed = bank.get("/v1/members", headers=operator).json()["members"]
    assert [(m["member_id"], m["status"]) for m in listed] == [("ann", "active"), ("bob", "closed")]
