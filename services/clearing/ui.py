"""The clearing house's dashboard at /ui/: the federation as its administrator sees it (banks,
positions, flows between banks), its settlement cycles (close one, see its obligations) and
the transfers waiting too long. Built on services.common.ui; pages call the clearing
application directly, as the API's routes do."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from services.clearing.application import Clearing
from services.clearing.domain_terms import SettlementBlocked
from services.clearing.reports import (
    DEFAULT_OLDER_THAN_SECONDS,
    MAX_OLDER_THAN_SECONDS,
    Interval,
    flows_report,
    positions_report,
    stuck_transfers_report,
)
from services.clearing.settlement import SettlementOpen, UnknownSettlement
from services.clearing.views import SettlementView
from services.common.deps import application, service_tokens
from services.common.sessions import Principal
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
from services.common.ui.charts import Series, bar_chart, line_chart

# Who may log in, with the clearing house's tokens: the admin runs cycles, an auditor looks.
UI_ROLES = frozenset({"admin", "auditor"})
NAMES = {"admin": "Administrator", "auditor": "Auditor"}

ClearingDep = Annotated[Clearing, Depends(application(Clearing))]
router = APIRouter(prefix=UI_PREFIX)


def authenticate(request: Request, attempt: LoginAttempt) -> Principal | None:
    """The clearing house's admin (or auditor) token, typed into the login form."""
    role = service_tokens(request).role_of(attempt.secret) if attempt.secret else None
    if role not in UI_ROLES:
        return None
    return Principal(role=role, login=role, name=NAMES[role])


SITE = UISite(
    service="Clearing house",
    nav=(
        (f"{UI_PREFIX}/", "Federation"),
        (f"{UI_PREFIX}/settlements", "Settlement cycles"),
        (f"{UI_PREFIX}/transfers", "Waiting transfers"),
    ),
    authenticate=authenticate,
    roles=UI_ROLES,
    templates_dir=Path(__file__).parent / "templates",
    asks_login=False,
    secret_label="Clearing house token",  # noqa: S106 (a label, not a secret)
)


# What the pages show, beside what the application answers: services/clearing/reports.py.


def positions_over_time(clearing: Clearing) -> tuple[list[str], list[Series]]:
    """Each bank's position at each UTC midnight since the first transfer, and now."""
    report = positions_report(clearing, None, None, Interval.DAY)
    count = len(report.banks[0].points) if report.banks else 0
    labels = [
        "now" if i == count - 1 else p.at.strftime("%d %b")
        for i, p in enumerate(report.banks[0].points if report.banks else [])
    ]
    return labels, [Series(b.bank_id, [p.position_minutes for p in b.points]) for b in report.banks]


def positions_over_cycles(cycles: list[SettlementView]) -> tuple[list[str], list[Series]]:
    """Each bank's position at each cycle's cut-off: the x labels and one series per bank."""
    banks = sorted({b for c in cycles for b in c.positions})
    labels = [f"#{c.settlement_id}" for c in cycles]
    return labels, [Series(b, [c.positions.get(b, 0) for c in cycles]) for b in banks]


# The pages.


def _require_admin(posted: Posted) -> None:
    if posted.session.principal.role != "admin":
        raise UIError(403, "Not allowed", "Only the clearing house's administrator may do this.")


@router.get("/")
def overview(request: Request, session: Viewer, clearing: ClearingDep) -> Response:
    """Banks, their positions as a chart, and the flows between them."""
    banks = clearing.banks()
    context = {
        "title": "Federation",
        "session": session,
        "banks": banks,
        "chart": bar_chart(
            "Positions at the clearing house", {b.bank_id: b.position_minutes for b in banks}
        ),
        "flows": flows_report(clearing, None, None).flows,
        "stuck": len(clearing.stuck_transfers()),
        "history": line_chart(
            "Positions over time", *positions_over_time(clearing), x_title="day (UTC)"
        ),
    }
    return render(request, "clearing/overview.html", context)


@router.get("/fragments/positions")
def positions_fragment(request: Request, session: Viewer, clearing: ClearingDep) -> Response:
    """The positions part of the overview, which the page refreshes by itself (htmx)."""
    banks = clearing.banks()
    chart = bar_chart(
        "Positions at the clearing house", {b.bank_id: b.position_minutes for b in banks}
    )
    context = {"session": session, "banks": banks, "chart": chart}
    return render(request, "clearing/_positions.html", context)


def _settlements_page(
    request: Request, session: Viewer, clearing: Clearing, status: int = 200, problem: str = ""
) -> Response:
    cycles = clearing.settlements()
    labels, series = positions_over_cycles(cycles)
    chart = (
        line_chart("Positions at each cycle's cut-off", labels, series, x_title="settlement cycle")
        if cycles
        else None
    )
    context = {
        "title": "Settlement cycles",
        "session": session,
        "cycles": list(reversed(cycles)),
        "chart": chart,
        "problem": problem,
        "positions": clearing.positions(),
    }
    return render(request, "clearing/settlements.html", context, status_code=status)


@router.get("/settlements")
def settlements(request: Request, session: Viewer, clearing: ClearingDep) -> Response:
    """Every cycle, newest first, and the form that closes a new one."""
    return _settlements_page(request, session, clearing)


@router.post("/settlements")
def open_settlement(request: Request, posted: Posted, clearing: ClearingDep) -> Response:
    """Close a cycle now, then show it; a refusal (one is open, transfers are in flight) is
    said on the cycles page, with its reason."""
    _require_admin(posted)
    try:
        cycle = clearing.open_settlement()
    except (SettlementOpen, SettlementBlocked) as e:
        problem = f"The cycle was not run: {e.detail.rstrip('.')}."
        return _settlements_page(request, posted.session, clearing, 409, problem)
    return see_other(f"{UI_PREFIX}/settlements/{cycle.settlement_id}")


@router.get("/settlements/{settlement_id}")
def settlement(
    request: Request, settlement_id: str, session: Viewer, clearing: ClearingDep
) -> Response:
    """One cycle: its positions at the cut-off and its obligations, each with its status."""
    if not settlement_id.isdigit() or len(settlement_id) > 9:
        raise UIError(404, "No such cycle", f"There is no settlement cycle {settlement_id[:20]}.")
    try:
        cycle = clearing.get_settlement(int(settlement_id))
    except UnknownSettlement:
        raise UIError(
            404, "No such cycle", f"There is no settlement cycle {settlement_id}."
        ) from None
    context = {
        "title": f"Settlement cycle {cycle.settlement_id}",
        "session": session,
        "cycle": cycle,
        "chart": bar_chart(f"Positions at cycle {cycle.settlement_id}'s cut-off", cycle.positions),
    }
    return render(request, "clearing/settlement.html", context)


@router.get("/transfers")
def transfers(
    request: Request, session: Viewer, clearing: ClearingDep, older_than: str = ""
) -> Response:
    """Transfers the payee's bank has not answered for ``older_than`` seconds, and those
    decided but still not applied by some bank after every re-send (stuck)."""
    text = older_than.strip() or str(DEFAULT_OLDER_THAN_SECONDS)
    if not text.isdigit() or int(text) > MAX_OLDER_THAN_SECONDS:
        problem = f"Give a whole number of seconds from 0 to {MAX_OLDER_THAN_SECONDS}."
        seconds, status = DEFAULT_OLDER_THAN_SECONDS, 422
    else:
        problem, seconds, status = "", int(text), 200
    context = {
        "title": "Waiting transfers",
        "session": session,
        "older_than": seconds,
        "problem": problem,
        "waiting": stuck_transfers_report(clearing, seconds).transfers,
        "stuck": clearing.stuck_transfers(),
    }
    return render(request, "clearing/transfers.html", context, status_code=status)


UI_ROUTERS = (router,)
