"""Offers and requests: what members give and need, by category, and the exchanges and transfers
recorded against them; and the offers partner banks' members chose to share with the
federation, as this bank last heard of them.

The aggregates stay in this module: its path is part of every stored event's topic."""

from __future__ import annotations

from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from services.ledger.domain_terms import InvalidRequest, LedgerError

# The board's categories: a slug (stable, in events and on the bus) and a label for people.
CATEGORIES: dict[str, str] = {
    "befriending": "Befriending",
    "lifts": "Lifts",
    "diy": "DIY and small repairs",
    "tutoring": "Tutoring",
    "courses": "Courses",
    "gardening": "Gardening",
    "shopping": "Shopping",
    "admin_help": "Help with forms and letters",
    "other": "Other",
}
MAX_TITLE_LENGTH = 200
MAX_WHERE_LENGTH = 200
# A whole course (the longest thing anyone lists) at most: 1,000 hours.
MAX_OFFER_MINUTES = 1_000 * 60


class OfferKind(StrEnum):
    OFFER = "offer"  # the member gives this help
    REQUEST = "request"  # the member needs it


class OfferStatus(StrEnum):
    OPEN = "open"
    WITHDRAWN = "withdrawn"


class UnknownOffer(LedgerError):
    """No offer or request with that id here."""


class OfferWithdrawn(LedgerError):
    """The offer is withdrawn (or no longer shared): nothing more is recorded against it."""


def check_terms(title: str, category: str, minutes: object, where: str) -> None:
    """InvalidRequest unless the terms are fit for the board."""
    if not title.strip() or len(title) > MAX_TITLE_LENGTH:
        raise InvalidRequest(f"title must be 1-{MAX_TITLE_LENGTH} characters")
    if category not in CATEGORIES:
        raise InvalidRequest(f"category must be one of {', '.join(CATEGORIES)}")
    if (
        not isinstance(minutes, int)
        or isinstance(minutes, bool)
        or not 0 < minutes <= MAX_OFFER_MINUTES
    ):
        raise InvalidRequest(f"minutes must be a whole number from 1 to {MAX_OFFER_MINUTES}")
    if len(where) > MAX_WHERE_LENGTH:
        raise InvalidRequest(f"where must be at most {MAX_WHERE_LENGTH} characters")


class Offer(Aggregate):
    """One member's offer or request on this bank's board. Shared with the federation only
    when the member opted in (``shared_with_federation``); otherwise it never leaves the bank."""

    @classmethod
    def post(
        cls,
        kind: str,
        member_id: str,
        title: str,
        category: str,
        minutes: int,
        where: str,
        shared_with_federation: bool,
    ) -> Offer:
        if kind not in tuple(OfferKind):
            raise InvalidRequest("kind must be offer or request")
        check_terms(title, category, minutes, where)
        return cls(
            kind=kind,
            member_id=member_id,
            title=title,
            category=category,
            minutes=minutes,
            where=where,
            shared_with_federation=shared_with_federation,
        )

    class Posted(Aggregate.Created):
        kind: str
        member_id: str
        title: str
        category: str
        minutes: int
        where: str
        shared_with_federation: bool

    @event(Posted)
    def __init__(
        self,
        kind: str,
        member_id: str,
        title: str,
        category: str,
        minutes: int,
        where: str,
        shared_with_federation: bool,
    ) -> None:
        self.kind = kind
        self.member_id = member_id
        self.title = title
        self.category = category
        self.minutes = minutes
        self.where = where
        self.shared_with_federation = shared_with_federation
        self.status = OfferStatus.OPEN
        # What was recorded against it, as plain data so snapshots transcode it.
        self.recorded: list[dict[str, Any]] = []

    @property
    def offer_id(self) -> str:
        return str(self.id)

    @property
    def visible_to_partners(self) -> bool:
        return self.shared_with_federation and self.status == OfferStatus.OPEN

    def check_open(self) -> None:
        if self.status != OfferStatus.OPEN:
            raise OfferWithdrawn(f"offer {self.offer_id} is withdrawn", offer_id=self.offer_id)

    class Changed(Aggregate.Event):
        title: str
        category: str
        minutes: int
        where: str
        shared_with_federation: bool

    def change(
        self,
        title: str | None = None,
        category: str | None = None,
        minutes: int | None = None,
        where: str | None = None,
        shared_with_federation: bool | None = None,
    ) -> bool:
        """New terms (None: as they are); whether anything changed (one event if so)."""
        self.check_open()
        new_title = self.title if title is None else title
        new_category = self.category if category is None else category
        new_minutes = self.minutes if minutes is None else minutes
        new_where = self.where if where is None else where
        shared = (
            self.shared_with_federation
            if shared_with_federation is None
            else shared_with_federation
        )
        check_terms(new_title, new_category, new_minutes, new_where)
        new = (new_title, new_category, new_minutes, new_where, shared)
        if new == (
            self.title,
            self.category,
            self.minutes,
            self.where,
            self.shared_with_federation,
        ):
            return False
        self._changed(
            title=new_title,
            category=new_category,
            minutes=new_minutes,
            where=new_where,
            shared_with_federation=shared,
        )
        return True

    @event(Changed)
    def _changed(
        self, title: str, category: str, minutes: int, where: str, shared_with_federation: bool
    ) -> None:
        self.title = title
        self.category = category
        self.minutes = minutes
        self.where = where
        self.shared_with_federation = shared_with_federation

    class Withdrawn(Aggregate.Event):
        pass

    def withdraw(self) -> None:
        self.check_open()
        self._withdrawn()

    @event(Withdrawn)
    def _withdrawn(self) -> None:
        self.status = OfferStatus.WITHDRAWN

    class Recorded(Aggregate.Event):
        """An exchange or a transfer made against the offer (saved with it, atomically)."""

        entry: str
        entry_id: str
        minutes: int
        payer: str
        payee: str

    def record(self, entry: str, entry_id: str, minutes: int, payer: str, payee: str) -> None:
        self.check_open()
        self._recorded(entry=entry, entry_id=entry_id, minutes=minutes, payer=payer, payee=payee)

    @event(Recorded)
    def _recorded(self, entry: str, entry_id: str, minutes: int, payer: str, payee: str) -> None:
        self.recorded.append(
            {
                "entry": entry,
                "entry_id": entry_id,
                "minutes": minutes,
                "payer": payer,
                "payee": payee,
            }
        )

    def exchange_parties(self, payer: str | None, payee: str | None) -> tuple[str, str]:
        """Who pays whom in a local exchange against it: the member who offered help is paid
        by whoever received it; the member who asked for help pays whoever gave it."""
        if self.kind == OfferKind.OFFER:
            return _other(payer, "payer"), _owner(payee, self.member_id, "payee")
        return _owner(payer, self.member_id, "payer"), _other(payee, "payee")

    def transfer_parties(self, payer: str | None) -> str:
        """The payer here of a transfer to another bank against it: only a request's member
        pays someone elsewhere; an offer's member is paid, by an exchange here or by a
        transfer their partner bank records against its copy of the offer."""
        if self.kind != OfferKind.REQUEST:
            raise InvalidRequest(
                "this offer's member is paid, not paying: record an exchange against it, or a "
                "transfer at the payer's bank against its shared copy"
            )
        return _owner(payer, self.member_id, "payer")


def _owner(given: str | None, member_id: str, role: str) -> str:
    if given is not None and given != member_id:
        raise InvalidRequest(f"{role} must be the offer's member, {member_id}")
    return member_id


def _other(given: str | None, role: str) -> str:
    if given is None:
        raise InvalidRequest(f"{role} is required")
    return given


_PARTNER_NAMESPACE = uuid5(NAMESPACE_URL, "urn:timebank-federation:partner-offer")


def partner_offer_id(offer_id: str) -> UUID:
    """The aggregate id of a partner bank's shared offer here (offer ids are uuid4s: unique
    across the federation)."""
    return uuid5(_PARTNER_NAMESPACE, offer_id)


class PartnerOffer(Aggregate):
    """A partner bank's offer or request that its member shared with the federation, as the
    clearing house relayed it: only what the member chose to show."""

    @staticmethod
    def create_id(offer_id: str, **_: Any) -> UUID:
        return partner_offer_id(offer_id)

    class Known(Aggregate.Created):
        offer_id: str
        bank: str

    @event(Known)
    def __init__(self, offer_id: str, bank: str) -> None:
        self.offer_id = offer_id
        self.bank = bank
        self.revision = 0
        self.shared = False
        self.terms: dict[str, Any] = {}
        self.recorded: list[dict[str, Any]] = []

    class Shared(Aggregate.Event):
        revision: int
        terms: dict[str, Any]

    def share(self, revision: int, terms: dict[str, Any]) -> None:
        """Its terms as of ``revision`` of the offer at its bank; an older one is ignored."""
        if revision > self.revision:
            self._shared(revision=revision, terms=terms)

    @event(Shared)
    def _shared(self, revision: int, terms: dict[str, Any]) -> None:
        self.revision = revision
        self.terms = dict(terms)
        self.shared = True

    class Unshared(Aggregate.Event):
        revision: int

    def unshare(self, revision: int) -> None:
        """No longer shared (withdrawn, or the member opted out): its terms are forgotten."""
        if revision > self.revision:
            self._unshared(revision=revision)

    @event(Unshared)
    def _unshared(self, revision: int) -> None:
        self.revision = revision
        self.terms = {}
        self.shared = False

    @property
    def kind(self) -> str:
        return str(self.terms.get("kind", ""))

    @property
    def member_id(self) -> str:
        return str(self.terms.get("member_id", ""))

    class Recorded(Aggregate.Event):
        """A transfer from a member here to its member, made against it."""

        transfer_id: str
        minutes: int
        payer: str

    def check_shared(self) -> None:
        if not self.shared:
            raise OfferWithdrawn(
                f"offer {self.offer_id} of {self.bank} is no longer shared", offer_id=self.offer_id
            )

    def transfer_payee(self, to_bank: str | None, payee: str | None) -> tuple[str, str]:
        """The bank and member a transfer against it pays: its member, who offered help."""
        self.check_shared()
        if self.kind != OfferKind.OFFER:
            raise InvalidRequest(
                "a partner bank's request is paid by its own member: their bank records it"
            )
        return _owner(to_bank, self.bank, "to_bank"), _owner(payee, self.member_id, "payee")

    def record(self, transfer_id: str, minutes: int, payer: str) -> None:
        self.check_shared()
        self._recorded_transfer(transfer_id=transfer_id, minutes=minutes, payer=payer)

    @event(Recorded)
    def _recorded_transfer(self, transfer_id: str, minutes: int, payer: str) -> None:
        self.recorded.append({"transfer_id": transfer_id, "minutes": minutes, "payer": payer})


_SHARED_OFFERS_ID = uuid5(NAMESPACE_URL, "urn:timebank-federation:shared-offers")


class SharedOffers(Aggregate):
    """The offers this bank's members share with the federation now (open and opted in): what
    a bank that joins the federation, or comes back to it, is sent."""

    @staticmethod
    def create_id(**_: Any) -> UUID:
        return _SHARED_OFFERS_ID

    class Opened(Aggregate.Created):
        pass

    @event(Opened)
    def __init__(self) -> None:
        self.offer_ids: list[str] = []

    class Changed(Aggregate.Event):
        offer_id: str
        shared: bool

    def mark(self, offer_id: str, shared: bool) -> None:
        if (offer_id in self.offer_ids) != shared:
            self._changed(offer_id=offer_id, shared=shared)

    @event(Changed)
    def _changed(self, offer_id: str, shared: bool) -> None:
        if shared:
            self.offer_ids.append(offer_id)
        else:
            self.offer_ids.remove(offer_id)
