"""The offers board on a bank's dashboard: this bank's open offers and requests, and partner
banks' offers that their members chose to share. A member posts and withdraws their own; a
coordinator posts for a member (recorded as their act) and withdraws any."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.common.ui import UI_PREFIX, Posted, UIError, Viewer, render
from services.common.ui.session import done, flashed
from services.common.ui.site import UISession
from services.ledger.application import Ledger
from services.ledger.domain_access import LoginRole
from services.ledger.domain_offers import CATEGORIES, OfferKind
from services.ledger.domain_terms import LedgerError
from services.ledger.offer_board import BoardQuery, list_offers, list_partner_offers
from services.ledger.offers import NewOffer, get_offer, post_offer, withdraw_offer
from services.ledger.ui import LedgerUI, minutes_from

router = APIRouter(prefix=UI_PREFIX)
BOARD_SIZE = 50


def board_page(
    request: Request, ledger: Ledger, session: UISession, message: str = "", status: int = 200
) -> Response:
    params = request.query_params
    category = params.get("category", "")
    kind = params.get("kind", "")
    q = params.get("q", "")[:200]
    query = BoardQuery(
        category=category if category in CATEGORIES else None,
        kind=kind if kind in tuple(OfferKind) else None,
        q=q or None,
    )
    context = {
        "title": "Offers and requests",
        "session": session,
        "offers": list_offers(ledger, query, BOARD_SIZE, None).offers,
        "partners": list_partner_offers(ledger, query, BOARD_SIZE, None).offers,
        "categories": CATEGORIES,
        "category": category,
        "kind": kind,
        "q": q,
        "is_coordinator": session.principal.role == LoginRole.COORDINATOR,
        "message": message or flashed(request, session),
        "failed": status >= 400,
    }
    return render(request, "ledger/offers.html", context, status_code=status)


@router.get("/offers")
def board(request: Request, ledger: LedgerUI, session: Viewer) -> Response:
    return board_page(request, ledger, session)


@router.post("/offers")
def post(request: Request, ledger: LedgerUI, posted: Posted) -> Response:
    """A member posts their own; a coordinator, for the member the form names."""
    who = posted.session.principal
    coordinator = who.role == LoginRole.COORDINATOR
    member_id = posted.text("member_id") if coordinator else who.login
    try:
        new = NewOffer(
            kind=posted.text("kind"),
            member_id=member_id,
            title=posted.text("title"),
            category=posted.text("category"),
            minutes=minutes_from(posted),
            where=posted.text("where"),
            shared_with_federation=posted.text("shared") == "yes",
        )
        post_offer(ledger, new, by=who if coordinator else None)
    except LedgerError as e:
        return board_page(request, ledger, posted.session, e.detail, 409)
    outcome = f"Posted: {new.title}" + (
        " (shared with partner banks)." if new.shared_with_federation else "."
    )
    return done(request, posted.session, f"{UI_PREFIX}/offers", outcome)


@router.post("/offers/{offer_id}/withdraw")
def withdraw(request: Request, ledger: LedgerUI, posted: Posted, offer_id: str) -> Response:
    who = posted.session.principal
    try:
        offer = get_offer(ledger, offer_id)
        if who.role != LoginRole.COORDINATOR and offer.member_id != who.login:
            raise UIError(403, "Not yours", "A member withdraws only their own offers.")
        withdraw_offer(ledger, offer_id)
    except LedgerError as e:
        return board_page(request, ledger, posted.session, e.detail, 409)
    return done(request, posted.session, f"{UI_PREFIX}/offers", f"Withdrawn: {offer.title}.")
