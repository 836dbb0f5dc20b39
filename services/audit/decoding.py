"""The fields a bank's replay folds, per event type, as typed structs checked on decoding.

Each struct names only what the replay reads of its event, with the constraints the ledger's
rules guarantee (minutes a whole number above zero, text as text, a member kind or a role
from its enum), and the defaults the event class gives (``party``). A stored state that does
not fit is a ``decode`` finding: ``explain`` says which field, and what is wrong with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Final

import msgspec
from eventsourcing.utils import get_topic

from services.common.idempotency import IdempotencyRecord
from services.common.outbox import Outbox
from services.ledger.domain import (
    Account,
    BankDirectory,
    BankPolicy,
    CrossBankTransfer,
)
from services.ledger.domain_access import Login
from services.ledger.domain_offers import Offer, PartnerOffer, SharedOffers
from services.ledger.domain_terms import (
    MemberKind,
    Role,
)
from shared.protocol import CLEARING

Minutes = Annotated[int, msgspec.Meta(gt=0)]
Limit = Annotated[int, msgspec.Meta(ge=0)]


class Folded(msgspec.Struct, frozen=True, gc=False):
    """What the replay reads of one event; any other field of it is left alone."""


class AccountOpened(Folded, frozen=True, gc=False):
    member_id: str
    kind: MemberKind
    # None: the member follows the bank's default.
    overdraft_limit_minutes: Limit | None


class OverdraftChanged(Folded, frozen=True, gc=False):
    # None: the member follows the bank's default from then on.
    overdraft_limit_minutes: Limit | None


class Debited(Folded, frozen=True, gc=False):
    entry_id: str
    minutes: Minutes
    counterparty: str


class Credited(Debited, frozen=True, gc=False):
    # Who pays in another bank ("college/bob"); empty for a local entry.
    party: str = ""


class HoldVoided(Folded, frozen=True, gc=False):
    hold_id: str
    minutes: Minutes


class HoldPlaced(HoldVoided, frozen=True, gc=False):
    counterparty: str
    # Who is paid in another bank; empty for a local hold.
    party: str = ""


class HoldPosted(HoldPlaced, frozen=True, gc=False):
    pass


class TransferStarted(Folded, frozen=True, gc=False):
    transfer_id: str
    role: Role
    member_id: str
    minutes: Minutes


class OutboxOpened(Folded, frozen=True, gc=False):
    destination: str


class ClearingOutboxOpened(OutboxOpened, frozen=True, gc=False):
    """The bank's outbox to the clearing house: its source is the bank's id."""

    source: str


class PolicyAdopted(Folded, frozen=True, gc=False):
    default_overdraft_minutes: Limit


class DefaultOverdraftChanged(PolicyAdopted, frozen=True, gc=False):
    pass


class TransferCommitted(Folded, frozen=True, gc=False):
    pass


class TransferAborted(Folded, frozen=True, gc=False):
    pass


class Unread(Folded, frozen=True, gc=False):
    """An event that the replay only counts (an outbox's message, the bank directory)."""


# Made by @event("Recorded"), so not an attribute the type checker can see.
IDEMPOTENCY_RECORDED: Final = f"{get_topic(IdempotencyRecord)}.Recorded"

# Each event type the replay folds -> the struct it is folded as.
FOLDED: Final[dict[str, type[Folded]]] = {
    get_topic(Account.Opened): AccountOpened,
    get_topic(Account.Debited): Debited,
    get_topic(Account.Credited): Credited,
    get_topic(Account.HoldPlaced): HoldPlaced,
    get_topic(Account.HoldPosted): HoldPosted,
    get_topic(Account.HoldVoided): HoldVoided,
    get_topic(Account.OverdraftChanged): OverdraftChanged,
    # A member's name and status: counted, and chained; the postings they allow are checked
    # by the ledger's own rules, which refuse a suspended or closed member.
    get_topic(Account.Renamed): Unread,
    get_topic(Account.Suspended): Unread,
    get_topic(Account.Reinstated): Unread,
    get_topic(Account.Closed): Unread,
    get_topic(CrossBankTransfer.Started): TransferStarted,
    get_topic(CrossBankTransfer.Committed): TransferCommitted,
    get_topic(CrossBankTransfer.Aborted): TransferAborted,
    get_topic(Outbox.Opened): OutboxOpened,
    get_topic(Outbox.Queued): Unread,
    get_topic(BankPolicy.Adopted): PolicyAdopted,
    get_topic(BankPolicy.DefaultOverdraftChanged): DefaultOverdraftChanged,
    get_topic(BankDirectory.Opened): Unread,
    get_topic(BankDirectory.Replaced): Unread,
    IDEMPOTENCY_RECORDED: Unread,
    # Who may log in, and what coordinators did for members: counted and chained; no
    # balance depends on them.
    get_topic(Login.Invited): Unread,
    get_topic(Login.Reinvited): Unread,
    get_topic(Login.PassphraseSet): Unread,
    get_topic(Login.Revoked): Unread,
    get_topic(Login.ActedFor): Unread,
    # The board of offers and requests, and partner banks' shared offers: counted and chained;
    # the exchanges and transfers recorded against them are checked as every posting is.
    get_topic(Offer.Posted): Unread,
    get_topic(Offer.Changed): Unread,
    get_topic(Offer.Withdrawn): Unread,
    get_topic(Offer.Recorded): Unread,
    get_topic(PartnerOffer.Known): Unread,
    get_topic(PartnerOffer.Shared): Unread,
    get_topic(PartnerOffer.Unshared): Unread,
    get_topic(PartnerOffer.Recorded): Unread,
    get_topic(SharedOffers.Opened): Unread,
    get_topic(SharedOffers.Changed): Unread,
}


def converter(struct: type[Folded]) -> Callable[[dict[str, Any]], Folded]:
    """How a stored state becomes a ``struct``; msgspec.ValidationError if it does not fit."""
    if struct is OutboxOpened:
        return _outbox
    if not struct.__struct_fields__:
        # Nothing to check: one instance does for every event.
        empty = struct()
        return lambda state: empty

    def convert(state: dict[str, Any]) -> Folded:
        return msgspec.convert(state, struct, strict=True)

    return convert


def _outbox(state: dict[str, Any]) -> OutboxOpened:
    # Only the outbox to the clearing house says whose log this is; another's source is
    # not read, so it is not checked either.
    opened = msgspec.convert(state, OutboxOpened, strict=True)
    if opened.destination == CLEARING:
        return msgspec.convert(state, ClearingOutboxOpened, strict=True)
    return opened


_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")
_AT_FIELD = re.compile(r"^(?P<reason>.*) - at `\$\.(?P<field>[^`]+)`$")


def explain(error: msgspec.ValidationError, state: dict[str, Any]) -> str:
    """A conversion's error, for a reader: the field, its stored value and what it must be."""
    text = str(error)
    missing = _MISSING.match(text)
    if missing:
        return f"field {missing['field']!r} is missing"
    at_field = _AT_FIELD.match(text)
    if at_field is None:
        return text
    name, reason = at_field["field"], at_field["reason"]
    return f"{name} is {state.get(name)!r}: {reason[0].lower()}{reason[1:]}"
