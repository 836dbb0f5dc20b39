"""The messages banks and the clearing house exchange over NATS, version 1, and their codec.

Every message is a tagged ``msgspec.Struct``; the ``type`` tag carries the version
(``transfer.requested.v1``). A message travels in an :class:`Envelope` that names its sender
and its place in the sender's stream to one receiver (``seq``: 1, 2, 3, ... with no gaps), so a
receiver can apply each message exactly once and notice one that went missing.

Schema evolution (msgspec's rules): a new field is added only with a default; unknown fields
are ignored, so older receivers keep working; anything incompatible is a new ``.v2`` tag.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final

import msgspec

from shared.identifiers import BANK_ID_PATTERN

# The clearing house's name on the bus; shared.identifiers reserves it, so no bank takes it.
CLEARING: Final = "clearing"

# msgspec matches patterns with re.search, where "$" also matches before a final newline: every
# pattern here ends in "\Z" so nothing but the whole value can match.
_BANK_ID = BANK_ID_PATTERN.pattern.removesuffix("$") + r"\Z"

Minutes = Annotated[int, msgspec.Meta(gt=0, le=1_000_000)]
BankId = Annotated[str, msgspec.Meta(pattern=_BANK_ID)]
# A party on the bus: a bank id, or "clearing" (which fits the same pattern). Subject names
# are built from it, so it may hold no ".", "*", ">" or spaces.
Source = Annotated[str, msgspec.Meta(pattern=_BANK_ID)]
MemberId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
TransferId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Memo = Annotated[str, msgspec.Meta(max_length=500)]
ReasonCode = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z_]{0,63}\Z")]
Seq = Annotated[int, msgspec.Meta(ge=1)]

# Why the clearing house aborts a transfer; each is a stable code shown to users.
ABORT_REASONS: Final = frozenset(
    {
        "unknown_bank",
        "bank_suspended",
        "bank_limit_exceeded",
        "unknown_payee",
        "payee_refused",
        "deadline_exceeded",
        "invalid_transfer",
    }
)


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every message."""


class TransferMessage(Message, frozen=True, kw_only=True):
    """A step of one cross-bank transfer, named by its id (chosen by the payer's bank)."""

    transfer_id: TransferId


class TransferRequested(TransferMessage, frozen=True, kw_only=True, tag="transfer.requested.v1"):
    """Payer's bank -> clearing: the payer's minutes are held; please move them."""

    payer_bank: BankId
    payer: MemberId
    payee_bank: BankId
    payee: MemberId
    minutes: Minutes
    memo: Memo = ""
    requested_at: Annotated[datetime, msgspec.Meta(tz=True)]


class CreditRequested(TransferMessage, frozen=True, kw_only=True, tag="credit.requested.v1"):
    """Clearing -> payee's bank: can you credit this member? Prepare, but do not post."""

    payer_bank: BankId
    payer: MemberId
    payee: MemberId
    minutes: Minutes
    memo: Memo = ""


class CreditPrepared(TransferMessage, frozen=True, kw_only=True, tag="credit.prepared.v1"):
    """Payee's bank -> clearing: the credit is pending and will be posted on commit."""


class CreditRefused(TransferMessage, frozen=True, kw_only=True, tag="credit.refused.v1"):
    """Payee's bank -> clearing: the credit cannot be made (e.g. unknown payee)."""

    reason: ReasonCode
    detail: Memo = ""


class TransferCommitted(TransferMessage, frozen=True, kw_only=True, tag="transfer.committed.v1"):
    """Clearing -> both banks: the decision is COMMIT; post the hold / pending credit."""

    payer_bank: BankId
    payee_bank: BankId
    minutes: Minutes


class TransferAborted(TransferMessage, frozen=True, kw_only=True, tag="transfer.aborted.v1"):
    """Clearing -> both banks: the decision is ABORT; void the hold / pending credit."""

    reason: ReasonCode
    detail: Memo = ""


class DecisionApplied(TransferMessage, frozen=True, kw_only=True, tag="decision.applied.v1"):
    """A bank -> clearing: the decision is applied here; stop re-sending it."""

    committed: bool


class BankEntry(msgspec.Struct, frozen=True, kw_only=True):
    bank_id: BankId
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    status: Annotated[str, msgspec.Meta(pattern=r"^(active|suspended)\Z")]


class DirectoryChanged(Message, frozen=True, kw_only=True, tag="directory.changed.v1"):
    """Clearing -> every bank: the whole directory of member banks, as it now stands."""

    banks: list[BankEntry]


class SettlementCompleted(Message, frozen=True, kw_only=True, tag="settlement.completed.v1"):
    """Clearing -> a bank: a settlement cycle is confirmed. The bank paid ``paid_minutes`` and
    was paid ``received_minutes`` outside the system; it posts the difference from its
    ``federation`` account to its ``settlement`` account, as its position moves by as much."""

    settlement_id: Annotated[int, msgspec.Meta(ge=1)]
    paid_minutes: Annotated[int, msgspec.Meta(ge=0, le=10**12)]
    received_minutes: Annotated[int, msgspec.Meta(ge=0, le=10**12)]


class CheckpointPublished(Message, frozen=True, kw_only=True, tag="checkpoint.published.v1"):
    """A bank -> clearing: the bank's event log up to ``position`` hashes to ``chain_hash``
    (services/common/chain.py), signed with the bank's Ed25519 key
    (shared/signing.checkpoint_payload). The clearing house keeps it, so an audit can tell a
    rewritten log even when the bank's own records were rewritten to match."""

    position: Annotated[int, msgspec.Meta(ge=1)]
    chain_hash: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]
    signature: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


OfferId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Revision = Annotated[int, msgspec.Meta(ge=1)]


class OfferShared(Message, frozen=True, kw_only=True, tag="offer.shared.v1"):
    """A bank -> clearing -> every other active bank: a member's offer or request, shared with
    the federation because the member opted in; only what they chose to show. Sent again on
    every change (``revision``: the offer's version at its bank; an older one is ignored)."""

    offer_id: OfferId
    bank: BankId
    revision: Revision
    kind: Annotated[str, msgspec.Meta(pattern=r"^(offer|request)\Z")]
    member_id: MemberId
    member_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    category: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z_]{0,31}\Z")]
    minutes: Minutes
    where: Annotated[str, msgspec.Meta(max_length=200)] = ""
    # Sent again for one bank only (one that joined, or came back): the clearing house relays
    # it to that bank alone. None: to every other active bank.
    for_bank: BankId | None = None


class OfferUnshared(Message, frozen=True, kw_only=True, tag="offer.unshared.v1"):
    """A bank -> clearing -> every other active bank: the offer is withdrawn or its member no
    longer shares it; partners forget its terms."""

    offer_id: OfferId
    bank: BankId
    revision: Revision


AnyMessage = (
    DirectoryChanged
    | TransferRequested
    | CreditRequested
    | CreditPrepared
    | CreditRefused
    | TransferCommitted
    | TransferAborted
    | DecisionApplied
    | SettlementCompleted
    | CheckpointPublished
    | OfferShared
    | OfferUnshared
)


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """One message on the bus, from ``source`` (a bank id or "clearing") to ``destination``."""

    source: Source
    destination: Source
    seq: Seq
    message: AnyMessage
    # Ed25519 over the envelope encoded with signature=None; filled in by a later release.
    signature: str | None = None

    @property
    def msg_id(self) -> str:
        """JetStream's de-duplication id: the same envelope always gets the same one."""
        return f"{self.source}>{self.destination}:{self.seq}"


class ProtocolError(ValueError):
    """Bytes that are not a valid envelope; the message says why."""


class Codec:
    """One encoder and one typed, strict decoder, built once per process."""

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(Envelope)

    def encode(self, envelope: Envelope) -> bytes:
        return self._encoder.encode(envelope)

    def decode(self, data: bytes) -> Envelope:
        try:
            envelope = self._decoder.decode(data)
        except msgspec.DecodeError as e:
            raise ProtocolError(str(e)) from None
        if envelope.source == envelope.destination:
            raise ProtocolError("an envelope's source and destination must differ")
        return envelope
