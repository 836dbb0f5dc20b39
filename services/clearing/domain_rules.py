"""The clearing house's rules that look at more than one aggregate: whether a transfer is
refused before the payee's bank is asked, and finding a member bank."""

from __future__ import annotations

from typing import Protocol, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from services.clearing.domain import MemberBank
from services.clearing.domain_terms import BankStatus, Refusal, UnknownBank, bank_id_to_uuid

A = TypeVar("A", bound=Aggregate)


def refusal_for(
    payer_bank: MemberBank, payee_bank: MemberBank | None, payee_bank_id: str, minutes: int
) -> Refusal | None:
    """Why a transfer from ``payer_bank`` to ``payee_bank_id`` (found as ``payee_bank``, or
    not a member) must be aborted before the payee's bank is asked; None if it may go on."""
    if payee_bank_id == payer_bank.bank_id:
        return Refusal("invalid_transfer", "payer and payee are in the same bank")
    if payee_bank is None:
        return Refusal("unknown_bank", f"{payee_bank_id} is not a member bank")
    if payee_bank.status != BankStatus.ACTIVE:
        return Refusal("bank_suspended", f"bank {payee_bank_id} is suspended")
    return payer_bank.reservation_refusal(minutes)


class Finder(Protocol):
    """A lookup by aggregate id that answers None when there is none of that class: an
    application's ``find`` or a unit of work's ``get``."""

    def __call__(self, aggregate_id: UUID, cls: type[A], /) -> A | None: ...


def member_bank(find: Finder, bank_id: str) -> MemberBank:
    bank = find(bank_id_to_uuid(bank_id), MemberBank)
    if bank is None:
        raise UnknownBank(f"bank {bank_id} is not a member", bank_id=bank_id)
    return bank
