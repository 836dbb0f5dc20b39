"""A coordinator's pages on a bank's dashboard: members (search, open, edit, suspend, reinstate,
close, invite), recording an exchange for a member (recorded as the coordinator's act), and the
bank's reports with charts. Every form works without JavaScript; a refusal is shown on the
page it came from, with what to change."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.common.sessions import Principal
from services.common.ui import UI_PREFIX, Posted, UIError, Viewer, render
from services.common.ui.charts import Series, bar_chart, line_chart
from services.common.ui.session import done, flashed
from services.common.ui.site import UISession
from services.ledger.access import invite_member
from services.ledger.api_members import closing, statement_csv
from services.ledger.api_reports import impact_csv
from services.ledger.api_self import pay
from services.ledger.application import Ledger
from services.ledger.domain import Account
from services.ledger.domain_access import LoginRole
from services.ledger.domain_terms import (
    MEMBER_KINDS,
    LedgerError,
)
from services.ledger.offer_board import category_report
from services.ledger.reports import Window, impact_report, month_text, monthly_report
from services.ledger.ui import LedgerUI, account_context, payment_from

router = APIRouter(prefix=UI_PREFIX)
PAGE_SIZE = 25
REPORT_MONTHS = 12
CATEGORIES_SHOWN = 6


def coordinator(session: UISession) -> Principal:
    principal: Principal = session.principal
    if principal.role != LoginRole.COORDINATOR:
        raise UIError(403, "Coordinators only", "This page is for the bank's coordinators.")
    return principal


@router.get("/members")
def members(
    request: Request, ledger: LedgerUI, session: Viewer, q: str = "", cursor: str = ""
) -> Response:
    """Members in id order, a page at a time; search by id or name."""
    coordinator(session)
    try:
        page = ledger.members(q[:200] or None, PAGE_SIZE, cursor[:200] or None)
    except LedgerError as e:
        raise UIError(422, "Cannot list members", e.detail) from e
    context = {
        "title": "Members",
        "session": session,
        "page": page,
        "q": q,
        "kinds": MEMBER_KINDS,
        "message": flashed(request, session),
    }
    return render(request, "ledger/members.html", context)


@router.post("/members")
def open_member(request: Request, ledger: LedgerUI, posted: Posted) -> Response:
    coordinator(posted.session)
    member_id = posted.text("member_id")
    try:
        ledger.open_member(member_id, posted.text("name"), posted.text("kind"))
    except LedgerError as e:
        page = ledger.members(None, PAGE_SIZE, None)
        context = {
            "title": "Members",
            "session": posted.session,
            "page": page,
            "q": "",
            "kinds": MEMBER_KINDS,
            "message": e.detail,
            "failed": True,
        }
        return render(request, "ledger/members.html", context, status_code=409)
    return done(request, posted.session, f"{UI_PREFIX}/members/{member_id}", f"{member_id} opened.")


def member_page(
    request: Request,
    ledger: Ledger,
    session: UISession,
    member_id: str,
    message: str = "",
    status: int = 200,
) -> Response:
    coordinator(session)
    try:
        member = ledger.get_member(member_id)
    except LedgerError as e:
        raise UIError(404, "No such member", e.detail) from e
    if member.kind == "system":
        raise UIError(404, "No such member", f"{member_id} is one of the bank's own accounts")
    context = account_context(request, ledger, session, member, (message, status))
    return render(request, "ledger/member.html", context, status_code=status)


@router.get("/members/{member_id}")
def member(request: Request, ledger: LedgerUI, session: Viewer, member_id: str) -> Response:
    return member_page(request, ledger, session, member_id)


@router.post("/members/{member_id}/pay")
def record_exchange(request: Request, ledger: LedgerUI, posted: Posted, member_id: str) -> Response:
    """The member received help and pays for it (here or at a partner bank): recorded as
    done by this coordinator for the member."""
    who = coordinator(posted.session)
    try:
        payment = payment_from(posted, ledger.bank_id)
        receipt = pay(ledger, member_id, payment, who, None).value
    except LedgerError as e:
        return member_page(request, ledger, posted.session, member_id, e.detail, 409)
    state = "sent to the partner bank" if receipt.transfer else "recorded"
    return done(
        request,
        posted.session,
        f"{UI_PREFIX}/members/{member_id}",
        f"{member_id} paid {payment.payee} {payment.minutes} minutes: {state}.",
    )


@router.post("/members/{member_id}/edit")
def edit_member(request: Request, ledger: LedgerUI, posted: Posted, member_id: str) -> Response:
    coordinator(posted.session)
    name, limit = posted.text("name"), posted.text("overdraft_limit_minutes")

    def change(account: Account) -> None:
        if name:
            account.rename(name)
        if limit == "":
            return
        if not limit.isdigit():
            raise LedgerError("the overdraft limit is a whole number of minutes, 0 or more")
        account.change_overdraft(int(limit))

    try:
        ledger.change_member(member_id, change)
    except LedgerError as e:
        return member_page(request, ledger, posted.session, member_id, e.detail, 409)
    return done(request, posted.session, f"{UI_PREFIX}/members/{member_id}", "Changes saved.")


STATUS_ACTIONS = {"suspend": "suspended", "reinstate": "reinstated", "close": "closed"}


@router.post("/members/{member_id}/status")
def change_status(request: Request, ledger: LedgerUI, posted: Posted, member_id: str) -> Response:
    """Suspend, reinstate or close (closing asks to be confirmed on the form)."""
    coordinator(posted.session)
    action = posted.text("action")
    if action not in STATUS_ACTIONS:
        raise UIError(422, "Unknown action", "choose suspend, reinstate or close")
    if action == "close" and posted.text("confirm") != "yes":
        message = "Tick the box to confirm closing: it cannot be undone."
        return member_page(request, ledger, posted.session, member_id, message, 422)

    change = closing(ledger) if action == "close" else getattr(Account, action)
    try:
        ledger.change_member(member_id, change)
    except LedgerError as e:
        return member_page(request, ledger, posted.session, member_id, e.detail, 409)
    return done(
        request,
        posted.session,
        f"{UI_PREFIX}/members/{member_id}",
        f"{member_id} {STATUS_ACTIONS[action]}.",
    )


@router.post("/members/{member_id}/invitation")
def invite(request: Request, ledger: LedgerUI, posted: Posted, member_id: str) -> Response:
    """A printable slip with the member's one-time code (shown only on this page)."""
    who = coordinator(posted.session)
    try:
        invitation = invite_member(ledger, member_id, who)
    except LedgerError as e:
        return member_page(request, ledger, posted.session, member_id, e.detail, 409)
    welcome = str(request.base_url).rstrip("/") + f"{UI_PREFIX}/welcome"
    context = {
        "title": "Invitation",
        "session": posted.session,
        "invitation": invitation,
        "welcome": welcome,
        "member": ledger.get_member(member_id),
    }
    return render(request, "ledger/invitation.html", context)


def last_months() -> Window:
    now = datetime.now(UTC)
    last = now.year * 12 + now.month - 1
    return Window(last - REPORT_MONTHS + 1, last)


@router.get("/members/{member_id}/statement.csv")
def member_statement_csv(ledger: LedgerUI, session: Viewer, member_id: str) -> Response:
    coordinator(session)
    return statement_csv(member_id, ledger.statement(member_id))


@router.get("/reports/impact.csv")
def impact_report_csv(ledger: LedgerUI, session: Viewer) -> Response:
    coordinator(session)
    return impact_csv(impact_report(ledger, last_months()))


@router.get("/reports")
def bank_reports(request: Request, ledger: LedgerUI, session: Viewer) -> Response:
    """The last twelve months: hours exchanged, active members, hours across banks."""
    coordinator(session)
    window = last_months()
    impact = impact_report(ledger, window)
    monthly = monthly_report(ledger, window)
    rows = impact.months
    labels = [row.month[2:] for row in rows]
    hours_chart = bar_chart(
        "Hours exchanged in the bank, by month",
        {label: row.exchanged_minutes for label, row in zip(labels, rows, strict=True)},
    )
    people_chart = line_chart(
        "Members active, by month",
        labels,
        [Series("active members", [row.active_members for row in rows])],
        y_label="members",
        unit=str,
    )
    across_chart = line_chart(
        "Hours across banks, by month",
        labels,
        [
            Series("spent at partner banks", [row.transfers_out_minutes for row in rows]),
            Series("partners' members spent here", [row.transfers_in_minutes for row in rows]),
        ],
    )
    categories = category_report(ledger).categories[:CATEGORIES_SHOWN]
    categories_chart = bar_chart(
        "Top categories: hours exchanged against offers and requests",
        {c.label: c.minutes for c in categories},
    )
    context = {
        "title": "Reports",
        "session": session,
        "impact": impact,
        "monthly": monthly,
        "charts": [hours_chart, people_chart, across_chart, categories_chart],
        "categories": categories,
        "first": month_text(window.first),
        "last": month_text(window.last),
    }
    return render(request, "ledger/reports.html", context)
