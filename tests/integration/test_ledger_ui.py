"""A bank's dashboard without JavaScript, through the real app on SQLite and PostgreSQL: plain
HTML forms posted with their CSRF tokens, as a browser with scripts off would. A coordinator
opens a member, records an exchange for them and invites them; the member sets a passphrase
and pays; a member's pages are only ever its own."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers import BANK_ID
from tests.integration.test_member_access import PASSPHRASE, coordinator_session, open_member

Headers = dict[str, str]


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no {name} in the page"
    return found.group(1)


def ui_log_in(client: TestClient, login: str, passphrase: str = PASSPHRASE) -> Any:
    page = client.get("/ui/login")
    assert page.status_code == 200
    form = {
        "login_csrf": hidden(page.text, "login_csrf"),
        "next": "/ui/",
        "login": login,
        "secret": passphrase,
    }
    return client.post("/ui/login", data=form)


def post_form(client: TestClient, page_path: str, to: str, **fields: str) -> Any:
    """Post a form of ``page_path``'s page, with the CSRF token that page carries."""
    page = client.get(page_path)
    assert page.status_code == 200, page.text
    return client.post(to, data={"csrf": hidden(page.text, "csrf"), **fields})


@pytest.fixture
def bank(client: TestClient, operator: Headers) -> TestClient:
    for member_id in ("ann", "bob"):
        open_member(client, operator, member_id)
    coordinator_session(client, operator, "sam")
    client.cookies.clear()
    return client


def test_a_coordinator_opens_a_member_and_records_an_exchange_for_them(
    bank: TestClient, operator: Headers
) -> None:
    assert ui_log_in(bank, "sam").status_code == 200  # followed to the members page
    # No directory from a clearing house here: the bank is named by its id.
    assert f"{BANK_ID} time bank</a>" in bank.get("/ui/members").text
    members = bank.get("/ui/members", params={"q": "ann"})
    assert 'href="/ui/members/ann"' in members.text
    assert 'href="/ui/members/bob"' not in members.text
    recorded = post_form(
        bank,
        "/ui/members/ann",
        "/ui/members/ann/pay",
        payee="bob",
        bank="",
        hours="1",
        minutes="15",
        memo="Lift to the surgery",
    )
    assert recorded.status_code == 200, recorded.text
    assert "ann paid bob 75 minutes: recorded." in recorded.text
    assert "Lift to the surgery" in recorded.text
    assert "recorded by coordinator sam</span>" in recorded.text  # on the statement's row
    assert bank.get("/v1/members/bob", headers=operator).json()["balance_minutes"] == 75
    acts = bank.get("/v1/coordinators/sam/acts", headers=operator).json()
    assert [(a["member_id"], a["action"]) for a in acts] == [("ann", "paid")]
    refused = post_form(
        bank,
        "/ui/members/ann",
        "/ui/members/ann/pay",
        payee="bob",
        bank="",
        hours="11",
        minutes="0",
        memo="",
    )
    assert refused.status_code == 409
    assert "overdraft" in refused.text
    bad = post_form(
        bank,
        "/ui/members/ann",
        "/ui/members/ann/pay",
        payee="bob",
        bank="",
        hours="1.5",
        minutes="0",
        memo="",
    )
    assert bad.status_code == 409
    assert "whole number" in bad.text


def test_a_coordinator_opens_edits_suspends_and_invites_a_member_who_then_pays(
    bank: TestClient, operator: Headers
) -> None:
    ui_log_in(bank, "sam")
    opened = post_form(
        bank, "/ui/members", "/ui/members", member_id="cy", name="Cy Twombly", kind="person"
    )
    assert "cy opened." in opened.text
    post_form(
        bank, "/ui/members/cy", "/ui/members/cy/edit", name="Cy T.", overdraft_limit_minutes="30"
    )
    assert bank.get("/v1/members/cy", headers=operator).json()["overdraft_limit_minutes"] == 30
    closing = post_form(bank, "/ui/members/cy", "/ui/members/cy/status", action="close")
    assert closing.status_code == 422  # not confirmed: nothing happens
    post_form(bank, "/ui/members/cy", "/ui/members/cy/status", action="suspend")
    assert bank.get("/v1/members/cy", headers=operator).json()["status"] == "suspended"
    post_form(bank, "/ui/members/cy", "/ui/members/cy/status", action="reinstate")
    slip = post_form(bank, "/ui/members/cy", "/ui/members/cy/invitation")
    code = re.search(r'id="invitation-code">([A-Z0-9-]+)<', slip.text)
    assert code, slip.text
    bank.cookies.clear()
    welcome = bank.get("/ui/welcome")
    form = {
        "welcome_csrf": hidden(welcome.text, "welcome_csrf"),
        "login": "cy",
        "code": code.group(1),
        "passphrase": PASSPHRASE,
        "again": PASSPHRASE,
    }
    me = bank.post("/ui/welcome", data=form)
    assert me.status_code == 200
    assert "Hello, Cy T." in me.text
    paid = post_form(
        bank, "/ui/me", "/ui/me/pay", payee="ann", bank="", hours="0", minutes="20", memo="tea"
    )
    assert "20 minutes to ann: paid." in paid.text
    assert bank.get("/v1/members/ann", headers=operator).json()["balance_minutes"] == 20
    statement = bank.get("/ui/me/statement.csv")
    assert statement.text.splitlines()[1].endswith(",-20,-20")


def test_a_members_pages_are_its_own_and_forms_need_the_sessions_token(
    bank: TestClient, operator: Headers
) -> None:
    code = bank.post("/v1/members/ann/invitation", headers=operator).json()["code"]
    accept = {"login": "ann", "code": code, "passphrase": PASSPHRASE}
    assert bank.post("/v1/invitations/accept", json=accept).status_code == 201
    bank.cookies.clear()
    ui_log_in(bank, "ann")
    for path in ("/ui/members", "/ui/members/bob", "/ui/reports", "/ui/members/bob/statement.csv"):
        assert bank.get(path).status_code == 403, path
    forged = bank.post("/ui/me/pay", data={"payee": "bob", "hours": "1", "minutes": "0"})
    assert forged.status_code == 403
    assert bank.get("/v1/members/bob", headers=operator).json()["balance_minutes"] == 0
    bank.cookies.clear()
    to_login = bank.get("/ui/me", follow_redirects=False)
    assert to_login.status_code == 303
    assert to_login.headers["location"].startswith("/ui/login")


def test_a_wrong_welcome_code_is_refused_and_counted(bank: TestClient, operator: Headers) -> None:
    bank.post("/v1/members/ann/invitation", headers=operator)
    for attempt in range(6):
        welcome = bank.get("/ui/welcome")
        form = {
            "welcome_csrf": hidden(welcome.text, "welcome_csrf"),
            "login": "ann",
            "code": "AAAA-BBBB-CCCC",
            "passphrase": PASSPHRASE,
            "again": PASSPHRASE,
        }
        refused = bank.post("/ui/welcome", data=form)
        assert refused.status_code == (429 if attempt == 5 else 403)


def test_the_reports_page_draws_its_charts(bank: TestClient, operator: Headers) -> None:
    pay = {"payer": "ann", "payee": "bob", "minutes": 90, "memo": ""}
    assert bank.post("/v1/exchanges", json=pay, headers=operator).status_code == 201
    ui_log_in(bank, "sam")
    page = bank.get("/ui/reports")
    assert page.status_code == 200
    assert page.text.count("<svg") == 4
    assert 'role="img"' in page.text
    assert "1h 30m" in page.text  # this month's hours in the impact table
    csv = bank.get("/ui/reports/impact.csv")
    assert csv.text.splitlines()[-1].startswith("total,1,90,1.50,2,")


def test_members_post_and_withdraw_their_own_offers_and_a_coordinator_posts_for_one(
    bank: TestClient, operator: Headers
) -> None:
    code = bank.post("/v1/members/ann/invitation", headers=operator).json()["code"]
    accept = {"login": "ann", "code": code, "passphrase": PASSPHRASE}
    assert bank.post("/v1/invitations/accept", json=accept).status_code == 201
    bank.cookies.clear()
    ui_log_in(bank, "ann")
    posted = post_form(
        bank,
        "/ui/offers",
        "/ui/offers",
        kind="offer",
        title="Dog walking",
        category="other",
        hours="1",
        minutes="0",
        where="Catford",
        shared="yes",
    )
    assert "Posted: Dog walking (shared with partner banks)." in posted.text
    mine = bank.get("/v1/offers", headers=operator).json()["offers"]
    assert [(o["member_id"], o["minutes"], o["shared_with_federation"]) for o in mine] == [
        ("ann", 60, True)
    ]
    bank.cookies.clear()
    ui_log_in(bank, "sam")
    post_form(
        bank,
        "/ui/offers",
        "/ui/offers",
        member_id="bob",
        kind="request",
        title="Help with a letter",
        category="admin_help",
        hours="0",
        minutes="45",
    )
    offers = {o["title"]: o for o in bank.get("/v1/offers", headers=operator).json()["offers"]}
    assert offers["Help with a letter"]["member_id"] == "bob"
    assert offers["Help with a letter"]["shared_with_federation"] is False
    acts = bank.get("/v1/coordinators/sam/acts", headers=operator).json()
    assert [(a["member_id"], a["action"], a["reference"]) for a in acts] == [
        ("bob", "posted", offers["Help with a letter"]["offer_id"])
    ]
    bank.cookies.clear()
    ui_log_in(bank, "ann")
    theirs = offers["Help with a letter"]["offer_id"]
    refused = post_form(bank, "/ui/offers", f"/ui/offers/{theirs}/withdraw")
    assert refused.status_code == 403
    withdrawn = post_form(
        bank, "/ui/offers", f"/ui/offers/{offers['Dog walking']['offer_id']}/withdraw"
    )
    assert "Withdrawn: Dog walking." in withdrawn.text
    assert [o["title"] for o in bank.get("/v1/offers", headers=operator).json()["offers"]] == [
        "Help with a letter"
    ]


def test_a_notice_comes_only_from_the_sessions_own_form_and_shows_once(bank: TestClient) -> None:
    ui_log_in(bank, "sam")
    crafted = bank.get("/ui/members", params={"done": "Your account is locked: call 0900 000"})
    assert "call 0900" not in crafted.text
    saved = post_form(bank, "/ui/members/ann", "/ui/members/ann/edit", name="Ann B.")
    assert "Changes saved." in saved.text
    assert "Changes saved." not in bank.get("/ui/members/ann").text


def test_help_is_recorded_against_an_offer_or_a_request_from_its_page(
    bank: TestClient, operator: Headers
) -> None:
    def new(member_id: str, kind: str, title: str) -> str:
        body = {"member_id": member_id, "kind": kind, "title": title, "category": "lifts",
                "minutes": 45}  # fmt: skip
        offer_id: str = bank.post("/v1/offers", json=body, headers=operator).json()["offer_id"]
        return offer_id

    lifts, shopping = new("ann", "offer", "Lifts"), new("ann", "request", "Shopping")
    for member_id in ("bob",):
        code = bank.post(f"/v1/members/{member_id}/invitation", headers=operator).json()["code"]
        accept = {"login": member_id, "code": code, "passphrase": PASSPHRASE}
        assert bank.post("/v1/invitations/accept", json=accept).status_code == 201
    bank.cookies.clear()
    ui_log_in(bank, "bob")
    assert f'href="/ui/offers/{lifts}"' in bank.get("/ui/offers").text
    page = f"/ui/offers/{lifts}"
    got = post_form(bank, page, f"{page}/record", hours="0", minutes="45", memo="")
    assert "Recorded: 45 minutes against “Lifts”." in got.text
    assert bank.get("/v1/members/ann", headers=operator).json()["balance_minutes"] == 45
    recorded = bank.get(f"/v1/offers/{lifts}", headers=operator).json()["recorded"]
    assert [(r["payer"], r["payee"], r["minutes"]) for r in recorded] == [("bob", "ann", 45)]
    # Bob cannot make Ann pay for her request: only she, or a coordinator, records it.
    page = f"/ui/offers/{shopping}"
    refused = post_form(bank, page, f"{page}/record", other="bob", hours="1", minutes="0")
    assert refused.status_code == 403
    bank.cookies.clear()
    ui_log_in(bank, "sam")
    paid = post_form(bank, page, f"{page}/record", other="bob", hours="1", minutes="0")
    assert "Recorded: 60 minutes against “Shopping”." in paid.text
    assert bank.get("/v1/members/bob", headers=operator).json()["balance_minutes"] == 15
    acts = bank.get("/v1/coordinators/sam/acts", headers=operator).json()
    assert [(a["member_id"], a["action"]) for a in acts] == [("ann", "paid")]
    assert bank.get("/ui/offers/00000000-0000-4000-8000-000000000000").status_code == 404
