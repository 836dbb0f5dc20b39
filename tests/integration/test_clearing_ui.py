"""The clearing house's dashboard through its real app on a real store, as a browser without
JavaScript uses it (plain forms, cookies, CSRF tokens): logging in and out, what a failed or
forged login gets, the forms' CSRF checks, who may run a cycle, and what the pages show
(positions, flows, waiting transfers, cycles and their obligations)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.clearing.application import Clearing
from services.clearing.service import create_app
from services.clearing.settings import ClearingSettings
from services.common.sessions import SESSION_COOKIE
from services.common.stores import parse_store_url
from services.common.ui.session import LOGIN_FAILED
from shared.protocol import CLEARING, CreditPrepared, Envelope, TransferRequested
from tests.helpers import AUDITOR_TOKEN, Clock

ADMIN_TOKEN = "admin-" + "x" * 24
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def clearing(store_url: str, clock: Clock) -> Iterator[Clearing]:
    app = Clearing(parse_store_url(store_url), deadline_seconds=600, clock=clock)
    for bank_id in ("alpha", "beta"):
        app.admit_bank(bank_id, bank_id.title() + " Time Bank", 600)
    yield app
    app.close()


@pytest.fixture
def ui(clearing: Clearing) -> Iterator[TestClient]:
    settings = ClearingSettings.build(
        {"TIMEBANK_ADMIN_TOKEN": ADMIN_TOKEN, "TIMEBANK_AUDITOR_TOKEN": AUDITOR_TOKEN},
        store_url="sqlite:///unused.db",
    )
    with TestClient(create_app(settings, clearing), follow_redirects=False) as client:
        yield client


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no {name} in the page"
    return found.group(1)


def log_in(client: TestClient, token: str, next_path: str = "/ui/") -> Any:
    page = client.get("/ui/login")
    form = {"login_csrf": hidden(page.text, "login_csrf"), "next": next_path, "secret": token}
    return client.post("/ui/login", data=form)


def post_form(client: TestClient, page_path: str, action: str) -> Any:
    """Post the form on ``page_path``'s page with the CSRF token the page carries."""
    page = client.get(page_path)
    assert page.status_code == 200, page.text
    return client.post(action, data={"csrf": hidden(page.text, "csrf")})


def transfer(clearing: Clearing, seq: int, transfer_id: str, minutes: int, commit: bool) -> None:
    """alpha's member pays beta's: requested at alpha, then (if ``commit``) prepared at beta."""
    requested = TransferRequested(
        transfer_id=transfer_id, payer_bank="alpha", payer="maya", payee_bank="beta",
        payee="bob", minutes=minutes, memo="", requested_at=START,
    )  # fmt: skip
    clearing.receive([Envelope(source="alpha", destination=CLEARING, seq=seq, message=requested)])
    if commit:
        prepared = CreditPrepared(transfer_id=transfer_id)
        envelope = Envelope(source="beta", destination=CLEARING, seq=seq, message=prepared)
        clearing.receive([envelope])


def test_pages_ask_for_a_login_then_go_where_the_person_was_going(ui: TestClient) -> None:
    page = ui.get("/ui/settlements")
    assert page.status_code == 303
    assert page.headers["location"] == "/ui/login?next=%2Fui%2Fsettlements"
    logged_in = log_in(ui, ADMIN_TOKEN, "/ui/settlements")
    assert logged_in.status_code == 303
    assert logged_in.headers["location"] == "/ui/settlements"
    cookie = next(
        c for c in logged_in.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE)
    )
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/" in cookie
    page = ui.get("/ui/settlements")
    assert page.status_code == 200
    assert "Administrator" in page.text
    # The pages carry their policy: nothing from elsewhere, no inline script, never framed.
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    # Logging in goes on to a page of this site, never anywhere else.
    ui.cookies.clear()
    assert log_in(ui, ADMIN_TOKEN, "//elsewhere.example/").headers["location"] == "/ui/"


def test_a_failed_login_says_nothing_of_why_and_too_many_are_refused_for_a_while(
    ui: TestClient, clearing: Clearing
) -> None:
    for token in ("not-a-token-of-this-house", "x" * 40):
        failed = log_in(ui, token)
        assert failed.status_code == 401
        assert LOGIN_FAILED in failed.text
        assert SESSION_COOKIE not in failed.headers.get("set-cookie", "")
    for _ in range(3):
        assert log_in(ui, "still-not-the-token").status_code == 401
    throttled = log_in(ui, ADMIN_TOKEN)  # even the right token, for now
    assert throttled.status_code == 429
    assert "Too many failed attempts" in throttled.text
    assert int(throttled.headers["retry-after"]) >= 1
    assert ui.get("/ui/").status_code == 303


def test_a_login_form_from_another_page_is_refused(ui: TestClient) -> None:
    forged = ui.post("/ui/login", data={"login_csrf": "made-up", "secret": ADMIN_TOKEN})
    assert forged.status_code == 403
    assert "expired" in forged.text
    assert ui.get("/ui/").status_code == 303
    # A browser that never saw the login form has no token cookie: an empty token in the form
    # must not match the missing one.
    ui.cookies.clear()
    empty = ui.post("/ui/login", data={"login_csrf": "", "secret": ADMIN_TOKEN})
    assert empty.status_code == 403
    assert ui.get("/ui/").status_code == 303


def test_a_form_without_the_sessions_csrf_token_changes_nothing(
    ui: TestClient, clearing: Clearing
) -> None:
    log_in(ui, ADMIN_TOKEN)
    for form in ({}, {"csrf": "guessed"}):
        refused = ui.post("/ui/settlements", data=form)
        assert refused.status_code == 403
        assert "text/html" in refused.headers["content-type"]
    assert clearing.settlements() == []
    # The API's routes still take JSON only: the forms' exception is the dashboard's alone.
    api = ui.post(
        "/v1/settlements",
        content="csrf=x",
        headers={
            "Authorization": f"Bearer {ADMIN_TOKEN}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert api.status_code == 415


def test_the_administrator_runs_a_cycle_and_sees_its_obligations(
    ui: TestClient, clearing: Clearing
) -> None:
    transfer(clearing, 1, "t1", 90, commit=True)
    log_in(ui, ADMIN_TOKEN)
    ran = post_form(ui, "/ui/settlements", "/ui/settlements")
    assert ran.status_code == 303
    assert ran.headers["location"] == "/ui/settlements/1"
    page = ui.get("/ui/settlements/1").text
    assert re.search(
        r'data-number="1">.*?class="debtor">alpha<.*?class="creditor">beta<.*?'
        r'class="num obligation-minutes">90<',
        page,
        re.S,
    )
    assert "Cycle 1" in ui.get("/ui/settlements").text
    # While it is open, another is refused, with the reason, on the cycles page.
    again = post_form(ui, "/ui/settlements", "/ui/settlements")
    assert again.status_code == 409
    assert "The cycle was not run: settlement 1 is still open" in again.text
    assert len(clearing.settlements()) == 1
    missing = ui.get("/ui/settlements/7")
    assert missing.status_code == 404
    assert "There is no settlement cycle 7." in missing.text
    assert ui.get("/ui/settlements/seven").status_code == 404


def test_an_auditor_sees_the_pages_but_cannot_run_a_cycle(
    ui: TestClient, clearing: Clearing
) -> None:
    log_in(ui, AUDITOR_TOKEN)
    page = ui.get("/ui/settlements")
    assert page.status_code == 200
    assert "Close a settlement cycle now" not in page.text
    refused = ui.post("/ui/settlements", data={"csrf": hidden(page.text, "csrf")})
    assert refused.status_code == 403
    assert clearing.settlements() == []


def test_the_overview_shows_positions_flows_and_the_transfers_left_waiting(
    ui: TestClient, clearing: Clearing, clock: Clock
) -> None:
    transfer(clearing, 1, "t1", 90, commit=True)
    transfer(clearing, 2, "t2", 30, commit=False)
    clock.now += timedelta(seconds=120)
    log_in(ui, ADMIN_TOKEN)
    page = ui.get("/ui/").text
    shown = dict(re.findall(r'data-bank="([a-z]+)">.*?data-minutes="(-?\d+)"', page, re.S))
    assert (
        shown
        == {"alpha": "-90", "beta": "90"}
        == {k: str(v) for k, v in clearing.positions().items()}
    )
    assert re.search(r"<td>alpha</td>\s*<td>beta</td>\s*<td[^>]*>1</td>\s*<td[^>]*>90</td>", page)
    assert 'aria-labelledby="bar-' in page
    assert "<title" in page
    # htmx refreshes the positions alone; a request without a session is sent to log in.
    fragment = ui.get("/ui/fragments/positions")
    assert 'id="positions"' in fragment.text
    assert "<html" not in fragment.text
    waiting = ui.get("/ui/transfers", params={"older_than": "60"}).text
    assert "<code>t2</code>" in waiting
    assert "<code>t1</code>" not in waiting  # committed, so not waiting for an answer
    assert "<code>t2</code>" not in ui.get("/ui/transfers", params={"older_than": "600"}).text
    bad = ui.get("/ui/transfers", params={"older_than": "soon"})
    assert bad.status_code == 422
    assert "whole number of seconds" in bad.text


def test_logging_out_ends_the_session(ui: TestClient) -> None:
    log_in(ui, ADMIN_TOKEN)
    token = ui.cookies[SESSION_COOKIE]
    out = post_form(ui, "/ui/", "/ui/logout")
    assert out.status_code == 303
    assert out.headers["location"] == "/ui/login"
    ui.cookies.set(SESSION_COOKIE, token)  # the old cookie, kept: it opens nothing now
    assert ui.get("/ui/").status_code == 303
    htmx = ui.get("/ui/fragments/positions", headers={"HX-Request": "true"})
    assert htmx.status_code == 204
    assert htmx.headers["HX-Redirect"].startswith("/ui/login")
