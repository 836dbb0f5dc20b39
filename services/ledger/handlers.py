"""The bank's side of the clearing house's protocol: one small idempotent handler for each
message the clearing house may send a bank, applied in a unit of work of the received batch."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from uuid import UUID

import msgspec

from services.common.inbox import MessageRejected, UnitOfWork
from services.ledger.domain import (
    Account,
    BankDirectory,
    CrossBankTransfer,
    post_hold_to_counterparty,
    post_settlement,
)
from services.ledger.domain_offers import Offer, PartnerOffer, SharedOffers, partner_offer_id
from services.ledger.domain_terms import (
    FEDERATION_ACCOUNT,
    SETTLEMENT_ACCOUNT,
    EntryKind,
    MemberStatus,
    Role,
    TransferStatus,
    account_id,
    transfer_id_to_uuid,
)
from services.ledger.offer_messages import offer_shared
from shared.protocol import (
    CLEARING,
    AnyMessage,
    CreditPrepared,
    CreditRefused,
    CreditRequested,
    DecisionApplied,
    DirectoryChanged,
    OfferShared,
    OfferUnshared,
    SettlementCompleted,
    TransferAborted,
    TransferCommitted,
)

# A bank's status in the directory that lets it take part (the other is "suspended").
ACTIVE = "active"


@dataclass(frozen=True)
class BankHandlers:
    """Handlers for one bank, with what they need of it."""

    bank_id: str
    default_overdraft_minutes: int

    def handle(self, source: str, message: AnyMessage, uow: UnitOfWork) -> None:
        match message:
            case DirectoryChanged():
                self.on_directory_changed(message, uow)
            case CreditRequested():
                self.on_credit_requested(message, uow)
            case TransferCommitted() | TransferAborted():
                self.on_decision(message, uow)
            case SettlementCompleted():
                self.on_settlement_completed(message, uow)
            case OfferShared() | OfferUnshared():
                self.on_partner_offer(message, uow)
            case _:
                raise MessageRejected(f"a bank does not accept {type(message).__name__}")

    def on_directory_changed(self, message: DirectoryChanged, uow: UnitOfWork) -> None:
        directory = uow.get(BankDirectory.create_id(), BankDirectory)
        directory = directory or uow.add(BankDirectory())
        was_active = {b for b, entry in directory.banks.items() if entry["status"] == ACTIVE}
        directory.replace([msgspec.to_builtins(b) for b in message.banks])
        arrived = {
            b.bank_id
            for b in message.banks
            if b.status == ACTIVE and b.bank_id not in was_active and b.bank_id != self.bank_id
        }
        for bank_id in sorted(arrived):
            self.share_offers_again(bank_id, uow)

    def share_offers_again(self, bank_id: str, uow: UnitOfWork) -> None:
        """A bank joined the federation, or came back to it: it missed what members here
        share, so every shared offer is sent again, for it alone (a copy it has already, of
        the same revision, changes nothing there)."""
        shared = uow.get(SharedOffers.create_id(), SharedOffers)
        for offer_id in shared.offer_ids if shared is not None else ():
            offer = uow.get(UUID(offer_id), Offer)
            member = uow.get(account_id(offer.member_id), Account) if offer else None
            if offer is not None and member is not None and offer.visible_to_partners:
                again = offer_shared(self.bank_id, offer, member.name, for_bank=bank_id)
                uow.send(CLEARING, again, sender=self.bank_id)

    def on_credit_requested(self, message: CreditRequested, uow: UnitOfWork) -> None:
        """Place the pending credit (a hold on the federation account, posted to the payee
        on commit), or refuse a payee that is not a member here."""
        if uow.get(transfer_id_to_uuid(message.transfer_id), CrossBankTransfer) is not None:
            return  # asked again: already answered
        transfer = uow.add(
            CrossBankTransfer(
                transfer_id=message.transfer_id,
                role=Role.PAYEE,
                member_id=message.payee,
                other_bank=message.payer_bank,
                other_member=message.payer,
                minutes=message.minutes,
                memo=message.memo,
            )
        )
        payee = uow.get(account_id(message.payee), Account)
        refused = None
        if payee is None or payee.is_system:
            refused = ("unknown_payee", f"no member {message.payee} in bank {self.bank_id}")
        elif payee.status != MemberStatus.ACTIVE:
            refused = ("payee_refused", f"{message.payee} is {payee.status} in {self.bank_id}")
        if refused is not None:
            transfer.abort(refused[0])
            refusal = CreditRefused(
                transfer_id=message.transfer_id, reason=refused[0], detail=refused[1]
            )
            uow.send(CLEARING, refusal, sender=self.bank_id)
            return
        self.account(uow, transfer.held_on).place_hold(
            message.transfer_id,
            message.minutes,
            message.payee,
            message.memo,
            EntryKind.TRANSFER,
            self.default_overdraft_minutes,
            party=transfer.party,
        )
        uow.send(CLEARING, CreditPrepared(transfer_id=message.transfer_id), sender=self.bank_id)

    def on_decision(self, message: TransferCommitted | TransferAborted, uow: UnitOfWork) -> None:
        """Post or void the transfer's hold, once; acknowledge every time, so the clearing
        house stops re-sending."""
        transfer = uow.get(transfer_id_to_uuid(message.transfer_id), CrossBankTransfer)
        if transfer is None:
            raise MessageRejected(f"no transfer {message.transfer_id} at {self.bank_id}")
        committed = isinstance(message, TransferCommitted)
        if transfer.status == TransferStatus.PENDING:
            held_on = self.account(uow, transfer.held_on)
            if committed:
                post_hold_to_counterparty(held_on, transfer.transfer_id, partial(self.account, uow))
                transfer.commit()
            else:
                held_on.void_hold(transfer.transfer_id)
                transfer.abort(message.reason if isinstance(message, TransferAborted) else "")
        elif (transfer.status == TransferStatus.COMMITTED) != committed:
            raise MessageRejected(
                f"transfer {transfer.transfer_id} is {transfer.status} here; "
                f"the clearing house says {'committed' if committed else 'aborted'}"
            )
        applied = DecisionApplied(transfer_id=transfer.transfer_id, committed=committed)
        uow.send(CLEARING, applied, sender=self.bank_id)

    def on_settlement_completed(self, message: SettlementCompleted, uow: UnitOfWork) -> None:
        post_settlement(
            self.account(uow, FEDERATION_ACCOUNT),
            self.account(uow, SETTLEMENT_ACCOUNT),
            message.settlement_id,
            message.paid_minutes - message.received_minutes,
        )

    def on_partner_offer(self, message: OfferShared | OfferUnshared, uow: UnitOfWork) -> None:
        """Keep a partner bank's shared offer (what its member chose to show), or forget it."""
        if message.bank == self.bank_id:
            raise MessageRejected(f"offer {message.offer_id} is this bank's own")
        offer = uow.get(partner_offer_id(message.offer_id), PartnerOffer)
        if offer is not None and offer.bank != message.bank:
            raise MessageRejected(
                f"offer {message.offer_id} is {offer.bank}'s, not {message.bank}'s"
            )
        if isinstance(message, OfferUnshared):
            if offer is not None:
                offer.unshare(message.revision)
            return
        offer = offer or uow.add(PartnerOffer(offer_id=message.offer_id, bank=message.bank))
        terms = msgspec.to_builtins(message)
        for name in ("type", "offer_id", "bank", "revision", "for_bank"):
            terms.pop(name, None)
        offer.share(message.revision, terms)

    def account(self, uow: UnitOfWork, member_id: str) -> Account:
        account = uow.get(account_id(member_id), Account)
        if account is None:
            raise MessageRejected(f"no account {member_id} in bank {self.bank_id}")
        return account
