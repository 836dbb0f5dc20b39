"""The bank's board of offers and requests: the commands that post, change and withdraw them and
record exchanges and transfers against them (each decided and saved with what it affects, in
one ledger command), and what the board answers (views; the index and the category report are
in offer_board.py).

A member's offer crosses to partner banks only when the member opted in: then, and only then,
the same save queues a signed OfferShared for the clearing house; an offer that stops being
visible (withdrawn, or no longer shared) queues an OfferUnshared."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate

from services.common.outbox import Outbox, outbox_id
from services.common.sessions import Principal
from services.ledger.access import acts_for
from services.ledger.application import Ledger
from services.ledger.domain import Account
from services.ledger.domain_offers import (
    CATEGORIES,
    Offer,
    PartnerOffer,
    SharedOffers,
    UnknownOffer,
    partner_offer_id,
)
from services.ledger.domain_terms import (
    EntryKind,
    InvalidRequest,
    UnknownMember,
    account_id,
)
from services.ledger.offer_messages import offer_shared
from services.ledger.views import ExchangeReceipt, TransferReceipt
from services.ledger.writer import Executed, IdempotencyKey
from shared.protocol import CLEARING, OfferShared, OfferUnshared

# Views: what the board answers (also the HTTP API's response shapes).


@dataclass(frozen=True)
class RecordedEntry:
    entry: str = field(metadata={"description": "exchange or transfer"})
    entry_id: str = field(metadata={"description": "The exchange's or the transfer's id."})
    minutes: int
    payer: str
    payee: str


@dataclass(frozen=True)
class OfferView:
    offer_id: str
    kind: str = field(metadata={"description": "offer: the member gives it; request: needs it."})
    member_id: str
    title: str
    category: str
    category_label: str
    minutes: int = field(metadata={"description": "The hours expected, in minutes."})
    where: str
    shared_with_federation: bool = field(
        metadata={"description": "The member's opt-in: partner banks see it only if true."}
    )
    status: str = field(metadata={"description": "open or withdrawn."})
    posted_at: datetime
    changed_at: datetime
    recorded: list[RecordedEntry] = field(
        metadata={"description": "Exchanges and transfers made against it, oldest first."}
    )


def offer_view(offer: Offer) -> OfferView:
    return OfferView(
        offer_id=offer.offer_id,
        kind=offer.kind,
        member_id=offer.member_id,
        title=offer.title,
        category=offer.category,
        category_label=CATEGORIES[offer.category],
        minutes=offer.minutes,
        where=offer.where,
        shared_with_federation=offer.shared_with_federation,
        status=str(offer.status),
        posted_at=offer.created_on,
        changed_at=offer.modified_on,
        recorded=[RecordedEntry(**entry) for entry in offer.recorded],
    )


@dataclass(frozen=True)
class OfferPage:
    offers: list[OfferView]
    next_cursor: str | None = field(
        metadata={"description": "Pass as cursor for the next page; null on the last."}
    )


@dataclass(frozen=True)
class PartnerOfferView:
    """A partner bank's offer, as its member chose to share it."""

    offer_id: str
    bank: str
    kind: str
    member_id: str
    member_name: str
    title: str
    category: str
    category_label: str
    minutes: int
    where: str


def partner_offer_view(offer: PartnerOffer) -> PartnerOfferView:
    terms = offer.terms
    return PartnerOfferView(
        offer_id=offer.offer_id,
        bank=offer.bank,
        kind=terms["kind"],
        member_id=terms["member_id"],
        member_name=terms["member_name"],
        title=terms["title"],
        category=terms["category"],
        category_label=CATEGORIES.get(terms["category"], terms["category"]),
        minutes=terms["minutes"],
        where=terms.get("where", ""),
    )


@dataclass(frozen=True)
class PartnerOfferPage:
    offers: list[PartnerOfferView]
    next_cursor: str | None = field(
        metadata={"description": "Pass as cursor for the next page; null on the last."}
    )


@dataclass(frozen=True)
class OfferExchangeReceipt:
    offer_id: str
    exchange: ExchangeReceipt


@dataclass(frozen=True)
class OfferTransferReceipt:
    offer_id: str
    transfer: TransferReceipt


@dataclass(frozen=True)
class NewOffer:
    kind: str
    member_id: str
    title: str
    category: str
    minutes: int
    where: str = ""
    shared_with_federation: bool = False


@dataclass(frozen=True)
class OfferChanges:
    """New terms; None leaves one as it is."""

    title: str | None = None
    category: str | None = None
    minutes: int | None = None
    where: str | None = None
    shared_with_federation: bool | None = None


# Reads.


def get_offer(ledger: Ledger, offer_id: str) -> OfferView:
    return offer_view(_offer(ledger, offer_id))


def find_offer(ledger: Ledger, offer_id: str) -> Offer | None:
    try:
        aggregate_id = UUID(offer_id)
    except ValueError:
        return None
    return ledger.find(aggregate_id, Offer)


def _offer(ledger: Ledger, offer_id: str) -> Offer:
    offer = find_offer(ledger, offer_id)
    if offer is None:
        raise UnknownOffer(f"no offer {offer_id} in bank {ledger.bank_id}", offer_id=offer_id)
    return offer


def find_partner_offer(ledger: Ledger, offer_id: str) -> PartnerOffer | None:
    try:
        normal = str(UUID(offer_id))
    except ValueError:
        return None
    return ledger.find(partner_offer_id(normal), PartnerOffer)


# Commands.


def post_offer(
    ledger: Ledger,
    new: NewOffer,
    idempotency: IdempotencyKey | None = None,
    by: Principal | None = None,
) -> Executed[OfferView]:
    """Post a member's offer or request; only an active member may. Posted by a coordinator
    (``by``), it is recorded as their act for the member."""

    def command() -> tuple[Sequence[Aggregate], OfferView]:
        account = _member(ledger, new.member_id)
        account.check_active()
        offer = Offer.post(
            new.kind,
            new.member_id,
            new.title,
            new.category,
            new.minutes,
            new.where,
            new.shared_with_federation,
        )
        announced = _announce(ledger, offer, was_visible=False)
        acts = acts_for(ledger, by, new.member_id, "posted", offer.offer_id)
        return [offer, *announced, *acts], offer_view(offer)

    return ledger.run(command, idempotency, OfferView)


def change_offer(ledger: Ledger, offer_id: str, changes: OfferChanges) -> OfferView:
    def command() -> tuple[Sequence[Aggregate], OfferView]:
        offer = _offer(ledger, offer_id)
        was_visible = offer.visible_to_partners
        if not offer.change(
            changes.title,
            changes.category,
            changes.minutes,
            changes.where,
            changes.shared_with_federation,
        ):
            return [], offer_view(offer)
        return [offer, *_announce(ledger, offer, was_visible)], offer_view(offer)

    return ledger.run(command, None, OfferView).value


def withdraw_offer(ledger: Ledger, offer_id: str) -> OfferView:
    def command() -> tuple[Sequence[Aggregate], OfferView]:
        offer = _offer(ledger, offer_id)
        was_visible = offer.visible_to_partners
        offer.withdraw()
        return [offer, *_announce(ledger, offer, was_visible)], offer_view(offer)

    return ledger.run(command, None, OfferView).value


def record_exchange(
    ledger: Ledger,
    offer_id: str,
    parties: tuple[str | None, str | None],
    minutes: int,
    memo: str | None,
    idempotency: IdempotencyKey | None = None,
    by: Principal | None = None,
) -> Executed[OfferExchangeReceipt]:
    """A local exchange made against an offer, saved with the offer's record of it: both or
    neither. ``parties``: (payer, payee), the offer's member implied when None."""

    def command() -> tuple[Sequence[Aggregate], OfferExchangeReceipt]:
        offer = _offer(ledger, offer_id)
        offer.check_open()
        payer, payee = offer.exchange_parties(*parties)
        text = offer.title if memo is None else memo
        aggregates, receipt = ledger.exchange_command(payer, payee, minutes, text)()
        offer.record(EntryKind.EXCHANGE, receipt.exchange_id, minutes, payer, payee)
        acts = acts_for(ledger, by, payer, "paid", receipt.exchange_id)
        return [*aggregates, offer, *acts], OfferExchangeReceipt(offer.offer_id, receipt)

    return ledger.run(command, idempotency, OfferExchangeReceipt)


@dataclass(frozen=True)
class TransferParties:
    """Who pays whom across banks; each None is implied by the offer (or refused)."""

    payer: str | None = None
    to_bank: str | None = None
    payee: str | None = None


def record_transfer(
    ledger: Ledger,
    offer_id: str,
    parties: TransferParties,
    minutes: int,
    memo: str | None,
    idempotency: IdempotencyKey | None = None,
    by: Principal | None = None,
) -> Executed[OfferTransferReceipt]:
    """A cross-bank transfer made against an offer, requested in the same save as the offer's
    record of it. Against a request here, its member pays someone in another bank; against a
    partner bank's shared offer, a member here pays its member."""

    def command() -> tuple[Sequence[Aggregate], OfferTransferReceipt]:
        target, payer, to_bank, payee = _transfer_parties(ledger, offer_id, parties)
        if memo is not None:
            text = memo
        else:
            text = target.title if isinstance(target, Offer) else str(target.terms["title"])
        aggregates, receipt = ledger.transfer_command(payer, to_bank, payee, minutes, text)()
        if isinstance(target, Offer):
            party = f"{to_bank}/{payee}"
            target.record(EntryKind.TRANSFER, receipt.transfer_id, minutes, payer, party)
        else:
            target.record(receipt.transfer_id, minutes, payer)
        acts = acts_for(ledger, by, payer, "paid", receipt.transfer_id)
        return [*aggregates, target, *acts], OfferTransferReceipt(offer_id, receipt)

    return ledger.run(command, idempotency, OfferTransferReceipt)


# Plumbing.


def _transfer_parties(
    ledger: Ledger, offer_id: str, parties: TransferParties
) -> tuple[Offer | PartnerOffer, str, str, str]:
    """The offer a transfer is made against (here, or a partner's shared one), and its payer,
    payee bank and payee."""
    offer = find_offer(ledger, offer_id)
    if offer is not None:
        offer.check_open()
        payer = offer.transfer_parties(parties.payer)
        to_bank, payee = _required(parties.to_bank, "to_bank"), _required(parties.payee, "payee")
        return offer, payer, to_bank, payee
    partner = find_partner_offer(ledger, offer_id)
    if partner is None:
        raise UnknownOffer(
            f"no offer {offer_id} in bank {ledger.bank_id} or shared with it", offer_id=offer_id
        )
    to_bank, payee = partner.transfer_payee(parties.to_bank, parties.payee)
    return partner, _required(parties.payer, "payer"), to_bank, payee


def _required(value: str | None, name: str) -> str:
    if value is None:
        raise InvalidRequest(f"{name} is required")
    return value


def _member(ledger: Ledger, member_id: str) -> Account:
    account = ledger.find(account_id(member_id), Account)
    if account is None or account.is_system:
        detail = f"no member {member_id} in bank {ledger.bank_id}"
        raise UnknownMember(detail, member_id=member_id)
    return account


def _announce(ledger: Ledger, offer: Offer, was_visible: bool) -> list[Aggregate]:
    """Queue for the clearing house what partner banks may now see of the offer: its shared
    terms while it is open and shared, its end when it stops being so; nothing about an offer
    that never was shared. The bank's list of shared offers follows."""
    message: OfferShared | OfferUnshared
    if offer.visible_to_partners:
        member_name = _member(ledger, offer.member_id).name
        message = offer_shared(ledger.bank_id, offer, member_name)
    elif was_visible:
        message = OfferUnshared(
            offer_id=offer.offer_id, bank=ledger.bank_id, revision=offer.version
        )
    else:
        return []
    outbox = ledger.find(outbox_id(ledger.bank_id, CLEARING), Outbox)
    outbox = outbox or Outbox(source=ledger.bank_id, destination=CLEARING)
    outbox.queue(message)
    shared = ledger.find(SharedOffers.create_id(), SharedOffers) or SharedOffers()
    shared.mark(offer.offer_id, offer.visible_to_partners)
    return [outbox, shared]
