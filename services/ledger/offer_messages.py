"""What a partner bank is sent of a member's shared offer: only what the member chose to show
(the board's terms, and the member's id and name, so that a partner's member can pay them)."""

from __future__ import annotations

from services.ledger.domain_offers import Offer
from shared.protocol import OfferShared


def offer_shared(
    bank_id: str, offer: Offer, member_name: str, for_bank: str | None = None
) -> OfferShared:
    return OfferShared(
        offer_id=offer.offer_id,
        bank=bank_id,
        revision=offer.version,
        kind=offer.kind,
        member_id=offer.member_id,
        member_name=member_name,
        title=offer.title,
        category=offer.category,
        minutes=offer.minutes,
        where=offer.where,
        for_bank=for_bank,
    )
