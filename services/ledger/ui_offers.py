"""The offers board on a bank's dashboard: this bank's open offers and requests, and partner
banks' offers that their members chose to share. A member posts and withdraws their own; a
coordinator posts for a member (recorded as their act) and withdraws any."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.common.sessions import Principal
from services.common.ui import UI_PREFIX, Posted, UIError, Viewer, render
from services.common.ui.session import done, flashed
from services.common.ui.site import UISession
from services.ledger.application import Ledger
from services.ledger.domain_access import LoginRole
from services.ledger.domain_offers import CATEGORIES, Offer, OfferKind
from services.ledger.domain_terms import LedgerError
from services.ledger.offer_board import BoardQuery, list_offers, list_partner_offers
from services.ledger.offers import (
    NewOffer,
    OfferView,
    PartnerOfferView,
    TransferParties,
    find_offer,
    find_partner_offer,
    get_offer,
    offer_view,
    partner_offer_view,
    post_offer,
    record_exchange,
    record_transfer,
    withdraw_offer,
)
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


# One offer: its terms, what was recorded against it, and recording help given or received.


def offer_page(
    request: Request,
    ledger: Ledger,
    session: UISession,
    offer_id: str,
    message: str = "",
    status: int = 200,
) -> Response:
    local = find_offer(ledger, offer_id)
    partner = find_partner_offer(ledger, offer_id) if local is None else None
    view: OfferView | PartnerOfferView
    if local is not None:
        view = offer_view(local)
    elif partner is not None and partner.shared:
        view = partner_offer_view(partner)
    else:
        raise UIError(404, "No such offer", "It is not on this bank's board, or no longer shared.")
    context = {
        "title": view.title,
        "session": session,
        "offer": view,
        "partner": local is None,
        "is_coordinator": session.principal.role == LoginRole.COORDINATOR,
        "message": message or flashed(request, session),
        "failed": status >= 400,
    }
    return render(request, "ledger/offer.html", context, status_code=status)


@router.get("/offers/{offer_id}")
def offer(request: Request, ledger: LedgerUI, session: Viewer, offer_id: str) -> Response:
    return offer_page(request, ledger, session, offer_id)


def exchange_parties(offer: Offer, who: Principal, other: str) -> tuple[str | None, str | None]:
    """(payer, payee) of help recorded against a local offer; None: the offer's member. An
    offer's member gave the help: whoever received it pays (a member: only they themselves).
    A request's member received it and pays the helper: only they, or a coordinator, say so."""
    coordinator = who.role == LoginRole.COORDINATOR
    if offer.kind == OfferKind.OFFER:
        return (other if coordinator else who.login), None
    if not coordinator and who.login != offer.member_id:
        raise UIError(403, "Not your request", "Only the member who asked, or a coordinator, "
                      "records the help given for a request: its member pays for it.")  # fmt: skip
    return None, other


@router.post("/offers/{offer_id}/record")
def record(request: Request, ledger: LedgerUI, posted: Posted, offer_id: str) -> Response:
    """Help given against an offer or a request: an exchange here, or, for a partner bank's
    offer, a transfer to its member; by a coordinator, recorded as their act."""
    who = posted.session.principal
    other, memo = posted.text("other"), posted.text("memo") or None
    local = find_offer(ledger, offer_id)
    try:
        minutes = minutes_from(posted)
        if local is not None:
            parties = exchange_parties(local, who, other)
            record_exchange(ledger, offer_id, parties, minutes, memo, by=who)
            outcome = f"Recorded: {minutes} minutes against “{local.title}”."
        else:
            payer = other if who.role == LoginRole.COORDINATOR else who.login
            record_transfer(ledger, offer_id, TransferParties(payer=payer), minutes, memo, by=who)
            outcome = f"Sent: {minutes} minutes. It shows once the other bank accepts it."
    except LedgerError as e:
        return offer_page(request, ledger, posted.session, offer_id, e.detail, 409)
    return done(request, posted.session, f"{UI_PREFIX}/offers/{offer_id}", outcome)
