"""A bank's dashboard at /ui/: members log in to see their balance and statement and to pay
someone here or at a partner bank; a new member sets a passphrase at /ui/welcome with the code
a coordinator gave them. The coordinator's pages are in ui_coordinator.py. Pages call the
ledger directly, as the API's routes do, and every form works without JavaScript."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError

from services.common.deps import application
from services.common.sessions import LoginThrottled, Principal
from services.common.ui import (
    UI_PREFIX,
    LoginAttempt,
    Posted,
    UIError,
    UISite,
    Viewer,
    render,
    see_other,
)
from services.common.ui.session import (
    PostedForm,
    client_address,
    flashed,
    same_token,
    set_form_cookie,
    set_session_cookie,
)
from services.common.ui.session import done as done_page
from services.common.ui.site import UISession
from services.ledger.access import authenticate, recorded_by, take_invitation
from services.ledger.api_members import statement_csv
from services.ledger.api_self import Payment, pay
from services.ledger.application import Ledger
from services.ledger.domain_access import InvitationRefused, LoginRole
from services.ledger.domain_terms import LedgerError
from services.ledger.views import MemberView, StatementWindow

UI_ROLES = frozenset({LoginRole.MEMBER.value, LoginRole.COORDINATOR.value})
STATEMENT_DAYS = 90
WELCOME_CSRF_COOKIE = "timebank_welcome_csrf"
MAX_HOURS = 100

LedgerUI = Annotated[Ledger, Depends(application(Ledger))]
router = APIRouter(prefix=UI_PREFIX)


def ui_authenticate(request: Request, attempt: LoginAttempt) -> Principal | None:
    """A member's or coordinator's login and passphrase (argon2; the same work either way)."""
    ledger: Ledger = request.app.state.application
    return authenticate(ledger, attempt.login, attempt.secret)


def bank_name(request: Request) -> str:
    """The bank's name as the federation's directory has it (from its config), once known."""
    ledger: Ledger = request.app.state.application
    return str(ledger.known_banks().get(ledger.bank_id, {}).get("name", ""))


def ledger_site(bank_id: str) -> UISite:
    return UISite(
        service=f"{bank_id} time bank",
        name_of=bank_name,
        nav=(),
        nav_by_role={
            LoginRole.COORDINATOR: (
                (f"{UI_PREFIX}/members", "Members"),
                (f"{UI_PREFIX}/offers", "Offers and requests"),
                (f"{UI_PREFIX}/reports", "Reports"),
            ),
            LoginRole.MEMBER: (
                (f"{UI_PREFIX}/me", "My account"),
                (f"{UI_PREFIX}/offers", "Offers and requests"),
            ),
        },
        authenticate=ui_authenticate,
        roles=UI_ROLES,
        templates_dir=Path(__file__).parent / "templates",
        login_label="Member number or login",
    )


def member_of(session: UISession) -> str:
    """The member a member's page is about: only ever the session's own."""
    principal: Principal = session.principal
    if principal.role != LoginRole.MEMBER:
        raise UIError(
            403, "Members only", "This page is a member's own. Coordinators: see Members."
        )
    return principal.login


def minutes_from(form: PostedForm) -> int:
    """Hours and minutes typed into a form, as whole minutes (never a float)."""
    hours, minutes = form.text("hours") or "0", form.text("minutes") or "0"
    if not (hours.isdigit() and minutes.isdigit()) or int(hours) > MAX_HOURS:
        raise LedgerError(f"hours must be a whole number up to {MAX_HOURS}, minutes 0-59")
    total = int(hours) * 60 + int(minutes)
    if int(minutes) > 59 or total <= 0:
        raise LedgerError("give at least one minute: hours 0 or more, minutes 0-59")
    return total


def payment_from(form: PostedForm, bank_id: str) -> Payment:
    bank = form.text("bank")
    try:
        return Payment(
            payee=form.text("payee"),
            bank=None if bank in ("", bank_id) else bank,
            minutes=minutes_from(form),
            memo=form.text("memo"),
        )
    except ValidationError as e:
        first = e.errors()[0]
        raise LedgerError(f"{first['loc'][-1]}: {first['msg']}") from e


def recent_statement(ledger: Ledger, member_id: str) -> dict[str, Any]:
    """The last days' entries, newest first, each with the coordinator who recorded it (if
    one did, for the member)."""
    since = datetime.now(UTC) - timedelta(days=STATEMENT_DAYS)
    listed = ledger.statement(member_id, StatementWindow(start=since))
    by = recorded_by(ledger, [e.entry_id for e in listed.entries])
    return {
        "statement": listed,
        "entries": list(reversed(listed.entries)),
        "days": STATEMENT_DAYS,
        "recorded_by": by,
    }


def partner_banks(ledger: Ledger) -> list[tuple[str, str]]:
    return sorted(
        (bank_id, entry.get("name", bank_id))
        for bank_id, entry in ledger.known_banks().items()
        if bank_id != ledger.bank_id
    )


def account_page(
    request: Request, ledger: Ledger, session: UISession, message: str = "", status: int = 200
) -> Response:
    member = ledger.get_member(member_of(session))
    context = account_context(request, ledger, session, member, (message, status))
    return render(request, "ledger/me.html", {**context, "title": "My account"}, status)


def account_context(
    request: Request,
    ledger: Ledger,
    session: UISession,
    member: MemberView,
    outcome: tuple[str, int],
) -> dict[str, Any]:
    """What a member's page shows (theirs, or a coordinator's page of them): the account, its
    recent statement, the banks to pay at, and the outcome of the last form."""
    message, status = outcome
    return {
        "title": member.name,
        "session": session,
        "member": member,
        "banks": partner_banks(ledger),
        "bank_id": ledger.bank_id,
        "message": message or flashed(request, session),
        "failed": status >= 400,
        **recent_statement(ledger, member.member_id),
    }


@router.get("/")
def home(session: Viewer) -> Response:
    """Coordinators start at their members, members at their own account."""
    if session.principal.role == LoginRole.COORDINATOR:
        return see_other(f"{UI_PREFIX}/members")
    return see_other(f"{UI_PREFIX}/me")


@router.get("/me")
def my_account(request: Request, ledger: LedgerUI, session: Viewer) -> Response:
    return account_page(request, ledger, session)


@router.post("/me/pay")
def pay_from_my_account(request: Request, ledger: LedgerUI, posted: Posted) -> Response:
    """Pay someone from the member's own account, here or at a partner bank."""
    member_id = member_of(posted.session)
    try:
        payment = payment_from(posted, ledger.bank_id)
        receipt = pay(ledger, member_id, payment, posted.session.principal, None).value
    except LedgerError as e:
        return account_page(request, ledger, posted.session, e.detail, status=409)
    where = f" at {payment.bank}" if payment.bank else ""
    state = "sent: it shows once the other bank accepts it" if receipt.transfer else "paid"
    outcome = f"{payment.minutes} minutes to {payment.payee}{where}: {state}."
    return done_page(request, posted.session, f"{UI_PREFIX}/me", outcome)


@router.get("/me/statement.csv")
def my_statement_csv(ledger: LedgerUI, session: Viewer) -> Response:
    member_id = member_of(session)
    return statement_csv(member_id, ledger.statement(member_id))


# Welcome: setting a passphrase with an invitation code, then logged in.


def welcome_page(request: Request, message: str = "", status: int = 200) -> Response:
    token = secrets.token_urlsafe(16)
    context = {
        "title": "Welcome",
        "welcome_csrf": token,
        "message": message,
        "login": request.query_params.get("login", "")[:64],
    }
    response = render(request, "ledger/welcome.html", context, status_code=status)
    set_form_cookie(response, request, WELCOME_CSRF_COOKIE, token, f"{UI_PREFIX}/welcome")
    return response


@router.get("/welcome")
def welcome(request: Request) -> Response:
    """Set a passphrase with the code a coordinator gave you."""
    return welcome_page(request)


@router.post("/welcome")
async def set_passphrase(request: Request, ledger: LedgerUI) -> Response:
    form = await request.form()
    fields = {k: str(form.get(k, ""))[:300] for k in ("login", "code", "passphrase", "again")}
    expected = request.cookies.get(WELCOME_CSRF_COOKIE, "")
    if not same_token(form.get("welcome_csrf"), expected):
        return welcome_page(request, "The form had expired. Please try again.", 403)
    if fields["passphrase"] != fields["again"]:
        return welcome_page(request, "The two passphrases are not the same.", 422)
    state, login = request.app.state, fields["login"].strip()
    acceptance = (login, fields["code"], fields["passphrase"])
    try:
        opened, _ = take_invitation(
            ledger, state.sessions, state.login_throttle, acceptance, client_address(request)
        )
    except LoginThrottled:
        return welcome_page(request, "Too many failed attempts. Try again later.", 429)
    except InvitationRefused as e:
        return welcome_page(request, e.detail, 403)
    except LedgerError as e:
        return welcome_page(request, e.detail, 422)
    response = see_other(f"{UI_PREFIX}/")
    set_session_cookie(response, request, opened.token)
    return response
