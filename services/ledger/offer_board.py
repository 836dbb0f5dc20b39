"""The board's index and its category report, folded from the log (as directory_index.py folds
the member directory): the bank's offers and requests, the partner banks' shared ones, and the
minutes exchanged against them per category and month.

What the report counts: an exchange recorded against an offer, in the month it was made; a
transfer recorded against one (a request here, or a partner's shared offer), in the month it
was committed at this bank, once committed (a pending or aborted transfer moved nothing)."""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from services.ledger.application import Ledger
from services.ledger.directory_index import Follow
from services.ledger.domain import CrossBankTransfer
from services.ledger.domain_offers import CATEGORIES, Offer, OfferKind, OfferStatus, PartnerOffer
from services.ledger.domain_terms import EntryKind, InvalidRequest, transfer_id_to_uuid
from services.ledger.offers import (
    OfferPage,
    PartnerOfferPage,
    offer_view,
    partner_offer_view,
)


@dataclass
class Listing:
    """An offer as the index knows it: what it is filtered and searched by."""

    aggregate_id: UUID
    kind: str
    member_id: str
    category: str
    text: str  # title and where, case-folded
    status: str = OfferStatus.OPEN
    bank: str = ""  # a partner's; "" for this bank's own


@dataclass(frozen=True)
class BoardQuery:
    """Which offers a page holds; None: any."""

    category: str | None = None
    kind: str | None = None
    member: str | None = None
    bank: str | None = None
    q: str | None = None
    status: str | None = OfferStatus.OPEN

    def matches(self, listing: Listing) -> bool:
        return (
            (self.category is None or listing.category == self.category)
            and (self.kind is None or listing.kind == self.kind)
            and (self.member is None or listing.member_id == self.member)
            and (self.bank is None or listing.bank == self.bank)
            and (self.status is None or listing.status == self.status)
            and (self.q is None or self.q.casefold() in listing.text)
        )


# The category report's shapes (the HTTP API answers them as they are).


@dataclass(frozen=True)
class CategoryFigures:
    category: str
    label: str
    exchanges: int = field(
        metadata={"description": "Exchanges and committed transfers recorded against offers."}
    )
    minutes: int = field(metadata={"description": "The minutes they moved."})
    open_offers: int = field(metadata={"description": "Open offers in it, now."})
    open_requests: int = field(metadata={"description": "Open requests in it, now."})


@dataclass(frozen=True)
class CategoryMonth:
    month: str = field(metadata={"description": "YYYY-MM, a calendar month in UTC."})
    category: str
    exchanges: int
    minutes: int


@dataclass(frozen=True)
class CategoryReport:
    bank: str
    categories: list[CategoryFigures] = field(
        metadata={
            "description": "Every category, top first: most minutes exchanged, then most "
            "open offers and requests (then by name)."
        }
    )
    months: list[CategoryMonth] = field(
        metadata={"description": "Each month and category with any exchange, oldest first."}
    )


def month_of(moment: datetime) -> str:
    utc = moment.astimezone(UTC) if moment.tzinfo is not None else moment
    return f"{utc.year:04d}-{utc.month:02d}"


class OfferBoard:
    """This bank's offers and its partners' shared ones, in posting order, and the minutes
    exchanged per (month, category). Each call reads on only from where the last ended, under
    the lock: always a whole-transaction prefix of the log."""

    def __init__(self) -> None:
        self.next_position = 1
        self.lock = threading.Lock()
        self.local: list[Listing] = []
        self.partners: list[Listing] = []
        self._by_id: dict[UUID, Listing] = {}
        # Transfers recorded against an offer, until committed (counted) or aborted.
        self._pending: dict[UUID, tuple[str, int]] = {}
        self._activity: dict[tuple[str, str], list[int]] = {}

    def catch_up(self, follow: Follow) -> None:
        """Fold what the log holds past the last call; the caller holds the lock."""
        for position, event in follow(self.next_position, TOPICS):
            FOLDS[type(event)](self, event)
            self.next_position = position + 1

    def page(
        self, follow: Follow, query: BoardQuery, limit: int, cursor: str | None, *, partners: bool
    ) -> tuple[list[UUID], str | None]:
        """Up to ``limit`` matching offers, newest first, after the cursor's; and the cursor
        of the next page (None after the last)."""
        before = decode_cursor(cursor) if cursor is not None else None
        found: list[tuple[int, UUID]] = []
        with self.lock:
            self.catch_up(follow)
            listings = self.partners if partners else self.local
            start = len(listings) if before is None else min(before, len(listings))
            for n in range(start - 1, -1, -1):
                if query.matches(listings[n]):
                    found.append((n, listings[n].aggregate_id))
                    if len(found) > limit:  # one more says whether there is a next page
                        break
        more = len(found) > limit
        return [i for _, i in found[:limit]], encode_cursor(found[limit - 1][0]) if more else None

    def report(self, follow: Follow, bank: str) -> CategoryReport:
        with self.lock:
            self.catch_up(follow)
            totals = {c: [0, 0] for c in CATEGORIES}
            for (_, category), (count, minutes) in self._activity.items():
                total = totals.setdefault(category, [0, 0])
                total[0] += count
                total[1] += minutes
            open_counts = {c: dict.fromkeys(OfferKind, 0) for c in totals}
            for listing in self.local:
                if listing.status == OfferStatus.OPEN:
                    open_counts[listing.category][OfferKind(listing.kind)] += 1
            months = [
                CategoryMonth(month=m, category=c, exchanges=n, minutes=minutes)
                for (m, c), (n, minutes) in sorted(self._activity.items())
            ]
        figures = [
            CategoryFigures(
                category=c,
                label=CATEGORIES.get(c, c),
                exchanges=totals[c][0],
                minutes=totals[c][1],
                open_offers=open_counts[c][OfferKind.OFFER],
                open_requests=open_counts[c][OfferKind.REQUEST],
            )
            for c in totals
        ]
        figures.sort(key=lambda f: (-f.minutes, -(f.open_offers + f.open_requests), f.category))
        return CategoryReport(bank=bank, categories=figures, months=months)

    # What each event does.

    def posted(self, event: Offer.Posted) -> None:
        listing = Listing(
            event.originator_id,
            event.kind,
            event.member_id,
            event.category,
            _text(event.title, event.where),
        )
        self.local.append(listing)
        self._by_id[event.originator_id] = listing

    def changed(self, event: Offer.Changed) -> None:
        listing = self._by_id[event.originator_id]
        listing.category = event.category
        listing.text = _text(event.title, event.where)

    def withdrawn(self, event: Offer.Withdrawn) -> None:
        self._by_id[event.originator_id].status = OfferStatus.WITHDRAWN

    def recorded(self, event: Offer.Recorded) -> None:
        category = self._by_id[event.originator_id].category
        if event.entry == EntryKind.EXCHANGE:
            self._count(event.timestamp, category, event.minutes)
        else:
            self._pending[transfer_id_to_uuid(event.entry_id)] = (category, event.minutes)

    def partner_known(self, event: PartnerOffer.Known) -> None:
        listing = Listing(event.originator_id, "", "", "", "", OfferStatus.WITHDRAWN, event.bank)
        self.partners.append(listing)
        self._by_id[event.originator_id] = listing

    def partner_shared(self, event: PartnerOffer.Shared) -> None:
        listing, terms = self._by_id[event.originator_id], event.terms
        listing.kind, listing.member_id = terms["kind"], terms["member_id"]
        listing.category = terms["category"]
        listing.text = _text(terms["title"], terms.get("where", ""), terms["member_name"])
        listing.status = OfferStatus.OPEN

    def partner_unshared(self, event: PartnerOffer.Unshared) -> None:
        listing = self._by_id[event.originator_id]
        listing.text, listing.status = "", OfferStatus.WITHDRAWN

    def partner_recorded(self, event: PartnerOffer.Recorded) -> None:
        category = self._by_id[event.originator_id].category
        self._pending[transfer_id_to_uuid(event.transfer_id)] = (category, event.minutes)

    def transfer_committed(self, event: CrossBankTransfer.Committed) -> None:
        pending = self._pending.pop(event.originator_id, None)
        if pending is not None:
            self._count(event.timestamp, *pending)

    def transfer_aborted(self, event: CrossBankTransfer.Aborted) -> None:
        self._pending.pop(event.originator_id, None)

    def _count(self, moment: datetime, category: str, minutes: int) -> None:
        figures = self._activity.setdefault((month_of(moment), category), [0, 0])
        figures[0] += 1
        figures[1] += minutes


def _text(*parts: str) -> str:
    return "\n".join(parts).casefold()


FOLDS: dict[type[Any], Callable[[OfferBoard, Any], None]] = {
    Offer.Posted: OfferBoard.posted,
    Offer.Changed: OfferBoard.changed,
    Offer.Withdrawn: OfferBoard.withdrawn,
    Offer.Recorded: OfferBoard.recorded,
    PartnerOffer.Known: OfferBoard.partner_known,
    PartnerOffer.Shared: OfferBoard.partner_shared,
    PartnerOffer.Unshared: OfferBoard.partner_unshared,
    PartnerOffer.Recorded: OfferBoard.partner_recorded,
    CrossBankTransfer.Committed: OfferBoard.transfer_committed,
    CrossBankTransfer.Aborted: OfferBoard.transfer_aborted,
}
TOPICS = tuple(get_topic(cls) for cls in FOLDS)


def encode_cursor(position: int) -> str:
    """The cursor before the offer at this place on the board."""
    return base64.urlsafe_b64encode(f"o{position}".encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> int:
    unpadded = cursor.rstrip("=")
    try:
        raw = base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), b"-_", validate=True)
        text = raw.decode()
    except (binascii.Error, UnicodeError, ValueError):
        text = ""
    if not (text.startswith("o") and text[1:].isdigit() and len(text) < 20):
        raise InvalidRequest("cursor is not one this service gave: pass a page's next_cursor")
    return int(text[1:])


def board_of(ledger: Ledger) -> OfferBoard:
    return ledger.read_model(OfferBoard)


def list_offers(ledger: Ledger, query: BoardQuery, limit: int, cursor: str | None) -> OfferPage:
    """A page of this bank's offers and requests, newest first."""
    ids, next_cursor = board_of(ledger).page(
        ledger.follow_events, query, limit, cursor, partners=False
    )
    found = (ledger.find(i, Offer) for i in ids)
    return OfferPage([offer_view(o) for o in found if o is not None], next_cursor)


def list_partner_offers(
    ledger: Ledger, query: BoardQuery, limit: int, cursor: str | None
) -> PartnerOfferPage:
    """A page of the partner banks' shared offers known here, newest first."""
    ids, next_cursor = board_of(ledger).page(
        ledger.follow_events, query, limit, cursor, partners=True
    )
    found = (ledger.find(i, PartnerOffer) for i in ids)
    views = [partner_offer_view(o) for o in found if o is not None and o.shared]
    return PartnerOfferPage(views, next_cursor)


def category_report(ledger: Ledger) -> CategoryReport:
    return board_of(ledger).report(ledger.follow_events, ledger.bank_id)
