"""What the clearing house does with each message a member bank sends it: one handler per
message type, after checking that the sender is a member."""

from __future__ import annotations

from services.clearing.coordinator import Coordinator
from services.clearing.domain import (
    CheckpointLog,
    Directory,
    MemberBank,
)
from services.clearing.domain_rules import (
    member_bank,
)
from services.clearing.domain_terms import (
    BankStatus,
    CheckpointConflict,
    bank_id_to_uuid,
)
from services.common.inbox import MessageRejected, UnitOfWork
from shared.protocol import (
    CLEARING,
    AnyMessage,
    CheckpointPublished,
    CreditPrepared,
    CreditRefused,
    DecisionApplied,
    OfferShared,
    OfferUnshared,
    TransferRequested,
)
from shared.signing import checkpoint_payload, verify_any


def handle(coordinator: Coordinator, source: str, message: AnyMessage, uow: UnitOfWork) -> None:
    """Apply one message from bank ``source`` to the unit of work; MessageRejected if it can
    never be applied."""
    # Through the unit of work: the sender's record is read once per batch, not per message.
    if uow.get(bank_id_to_uuid(source), MemberBank) is None:
        raise MessageRejected(f"{source} is not a member bank")
    match message:
        case TransferRequested():
            coordinator.on_transfer_requested(source, message, uow)
        case CreditPrepared():
            coordinator.on_credit_prepared(source, message, uow)
        case CreditRefused():
            coordinator.on_credit_refused(source, message, uow)
        case DecisionApplied():
            coordinator.on_decision_applied(source, message, uow)
        case CheckpointPublished():
            on_checkpoint(source, message, uow)
        case OfferShared() | OfferUnshared():
            relay_offer(source, message, uow)
        case _:
            raise MessageRejected(f"a bank may not send {type(message).__name__}")


def relay_offer(source: str, message: OfferShared | OfferUnshared, uow: UnitOfWork) -> None:
    """Pass a member's shared offer (or its end) on, unchanged, to every other active bank (or
    to the one it names, when sent again for a bank that arrived): the clearing house keeps
    nothing of it but what its outboxes send."""
    if message.bank != source:
        raise MessageRejected(f"{source} may not speak for the offers of {message.bank}")
    directory = uow.get(Directory.create_id(), Directory)
    only = message.for_bank if isinstance(message, OfferShared) else None
    for bank_id in directory.bank_ids if directory is not None else ():
        if bank_id == source or (only is not None and bank_id != only):
            continue
        if member_bank(uow.get, bank_id).status == BankStatus.ACTIVE:
            uow.send(bank_id, message, sender=CLEARING)


def on_checkpoint(source: str, message: CheckpointPublished, uow: UnitOfWork) -> None:
    """Keep a bank's signed checkpoint of its log, if its signature verifies against a key
    the bank has held (the one given at its admission, or one it rotated to since: a
    checkpoint signed just before a rotation may arrive after it)."""
    bank = member_bank(uow.get, source)
    if not bank.public_key:
        raise MessageRejected(f"{source} has no public key here: its checkpoint is unsigned")
    payload = checkpoint_payload(source, message.position, message.chain_hash)
    if not verify_any(bank.keys_held, payload, message.signature):
        raise MessageRejected(
            f"the signature of {source}'s checkpoint at {message.position} does not verify"
        )
    log = uow.get(CheckpointLog.create_id(source), CheckpointLog)
    log = log or uow.add(CheckpointLog(source))
    try:
        log.record(message.position, message.chain_hash, message.signature)
    except CheckpointConflict as e:
        raise MessageRejected(e.detail) from None
