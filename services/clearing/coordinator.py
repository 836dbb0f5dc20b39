"""The clearing house's decision for each cross-bank transfer: refuse, or reserve and ask the
payee's bank; commit or abort on its answer or at the deadline; tell both banks, and tell
them again until each has applied the decision."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from eventsourcing.utils import get_topic

from services.clearing.domain import (
    MemberBank,
    Transfer,
)
from services.clearing.domain_rules import (
    member_bank,
    refusal_for,
)
from services.clearing.domain_terms import (
    ProtocolViolation,
    bank_id_to_uuid,
    transfer_id_to_uuid,
)
from services.common.application import ServiceApplication
from services.common.inbox import MessageRejected, UnitOfWork
from shared.protocol import (
    ABORT_REASONS,
    CLEARING,
    AnyMessage,
    CreditPrepared,
    CreditRefused,
    CreditRequested,
    DecisionApplied,
    TransferAborted,
    TransferCommitted,
    TransferRequested,
)

log = logging.getLogger(__name__)

_TRANSFER_TOPICS = [
    get_topic(t)
    for t in (
        Transfer.Requested,
        Transfer.Committed,
        Transfer.Aborted,
        Transfer.Acknowledged,
        Transfer.Resent,
    )
]
# A decision a bank does not apply is sent again after resend_after, then after twice as long
# each time, at most this far apart, this many times; then it waits on the stuck list, for an
# operator (GET /v1/transfers?status=stuck), and is not sent again by itself.
MAX_RESEND_INTERVAL = timedelta(minutes=10)
MAX_RESENDS = 8


@dataclass
class _Awaiting:
    informed: list[str]
    acknowledged: set[str]
    sent_at: datetime
    resends: int = 0

    def due(self, now: datetime, resend_after: timedelta) -> bool:
        if self.resends >= MAX_RESENDS:
            return False
        wait = min(resend_after * (1 << self.resends), MAX_RESEND_INTERVAL)
        return now - self.sent_at >= wait

    @property
    def stuck(self) -> bool:
        return self.resends >= MAX_RESENDS


class _TransferIndex:
    """What the clearing house must still act on, folded from its own transfer events: the
    transfers waiting for the payee's bank (by deadline), and the decisions some bank has not
    acknowledged yet (by when they were last sent)."""

    def __init__(self) -> None:
        self.preparing: dict[UUID, datetime] = {}
        self.awaiting: dict[UUID, _Awaiting] = {}
        self._parties: dict[UUID, list[str]] = {}

    def fold(self, events: Iterable[object]) -> None:
        for ev in events:
            match ev:
                case Transfer.Requested(
                    originator_id=i, deadline=deadline, payer_bank=payer, payee_bank=payee
                ):
                    self.preparing[i] = deadline
                    self._parties[i] = [payer, payee]
                case Transfer.Committed(originator_id=i, decided_at=at, timestamp=recorded):
                    self._decided(i, self._parties.get(i, []), at or recorded)
                case Transfer.Aborted(
                    originator_id=i, informed=informed, decided_at=at, timestamp=recorded
                ):
                    self._decided(i, list(informed), at or recorded)
                case Transfer.Acknowledged(originator_id=i, bank_id=bank_id):
                    self._acknowledged(i, bank_id)
                case Transfer.Resent(originator_id=i, at=at, attempt=attempt):
                    if (awaiting := self.awaiting.get(i)) is not None:
                        awaiting.sent_at, awaiting.resends = at, attempt

    def _decided(self, aggregate_id: UUID, informed: list[str], at: datetime) -> None:
        self.preparing.pop(aggregate_id, None)
        self._parties.pop(aggregate_id, None)
        if informed:
            self.awaiting[aggregate_id] = _Awaiting(informed, set(), at)

    def _acknowledged(self, aggregate_id: UUID, bank_id: str) -> None:
        awaiting = self.awaiting.get(aggregate_id)
        if awaiting is not None:
            awaiting.acknowledged.add(bank_id)
            if set(awaiting.informed) <= awaiting.acknowledged:
                del self.awaiting[aggregate_id]


def decision_message(transfer: Transfer) -> AnyMessage:
    """What the banks are told of a decided transfer."""
    if not transfer.is_decided:
        raise ProtocolViolation(f"transfer {transfer.transfer_id} is not decided")
    if transfer.reason is None:
        return TransferCommitted(
            transfer_id=transfer.transfer_id,
            payer_bank=transfer.payer_bank,
            payee_bank=transfer.payee_bank,
            minutes=transfer.minutes,
        )
    return TransferAborted(
        transfer_id=transfer.transfer_id, reason=transfer.reason, detail=transfer.detail
    )


def tell_decision(uow: UnitOfWork, transfer: Transfer, to: Sequence[str] | None = None) -> None:
    """Send the decision to ``to``, or else to every bank told of it."""
    decision = decision_message(transfer)
    for bank_id in transfer.informed if to is None else to:
        uow.send(bank_id, decision, sender=CLEARING)


def _known_transfer(uow: UnitOfWork, transfer_id: str) -> Transfer:
    transfer = uow.get(transfer_id_to_uuid(transfer_id), Transfer)
    if transfer is None:
        raise MessageRejected(f"no transfer {transfer_id}")
    return transfer


def _answered_transfer(uow: UnitOfWork, source: str, transfer_id: str) -> Transfer:
    transfer = _known_transfer(uow, transfer_id)
    if transfer.payee_bank != source:
        raise MessageRejected(f"{source} is not the payee's bank of {transfer_id}")
    return transfer


def _requested_before(uow: UnitOfWork, source: str, transfer_id: str) -> bool:
    earlier = uow.get(transfer_id_to_uuid(transfer_id), Transfer)
    if earlier is not None and earlier.payer_bank != source:
        raise MessageRejected(f"transfer id {transfer_id} is already used by {earlier.payer_bank}")
    return earlier is not None


def _credit_requested(message: TransferRequested) -> CreditRequested:
    return CreditRequested(
        transfer_id=message.transfer_id,
        payer_bank=message.payer_bank,
        payer=message.payer,
        payee=message.payee,
        minutes=message.minutes,
        memo=message.memo,
    )


class Coordinator:
    """Decides each transfer, once, on the clearing's own clock; keeps the index of transfers
    still waiting for an answer or an acknowledgement. Each handler is idempotent by
    transfer id: a message seen twice has no second effect."""

    def __init__(
        self,
        app: ServiceApplication,
        *,
        clock: Callable[[], datetime],
        deadline: timedelta,
        resend_after: timedelta,
    ) -> None:
        self._app = app
        self._clock = clock
        self._deadline = deadline
        self._resend_after = resend_after
        self._index = _TransferIndex()
        self._index.fold(event for _, event in app.follow_events(1, _TRANSFER_TOPICS))
        # Every save, tracked or not, keeps the index of work still to do.
        app.save_listeners.append(self._index.fold)

    def on_transfer_requested(
        self, source: str, message: TransferRequested, uow: UnitOfWork
    ) -> None:
        if message.payer_bank != source:
            raise MessageRejected(f"{source} may not request a transfer for {message.payer_bank}")
        if _requested_before(uow, source, message.transfer_id):
            return  # asked again: the first request is already being answered
        transfer = uow.add(
            Transfer(
                transfer_id=message.transfer_id,
                payer_bank=message.payer_bank,
                payer=message.payer,
                payee_bank=message.payee_bank,
                payee=message.payee,
                minutes=message.minutes,
                memo=message.memo,
                deadline=self._clock() + self._deadline,
            )
        )
        payer_bank = member_bank(uow.get, source)
        payee_bank = uow.get(bank_id_to_uuid(message.payee_bank), MemberBank)
        refusal = refusal_for(payer_bank, payee_bank, message.payee_bank, message.minutes)
        if refusal is not None:
            transfer.abort(refusal.reason, refusal.detail, payee_bank_asked=False, at=self._clock())
            tell_decision(uow, transfer)
            return
        payer_bank.reserve(message.transfer_id, message.minutes)
        uow.send(message.payee_bank, _credit_requested(message), sender=CLEARING)

    def on_credit_prepared(self, source: str, message: CreditPrepared, uow: UnitOfWork) -> None:
        transfer = _answered_transfer(uow, source, message.transfer_id)
        if transfer.is_decided:
            return  # too late (the deadline passed) or said twice: the decision stands
        transfer.commit(at=self._clock())
        member_bank(uow.get, transfer.payer_bank).debit(transfer.transfer_id)
        member_bank(uow.get, transfer.payee_bank).credit(transfer.transfer_id, transfer.minutes)
        tell_decision(uow, transfer)

    def on_credit_refused(self, source: str, message: CreditRefused, uow: UnitOfWork) -> None:
        transfer = _answered_transfer(uow, source, message.transfer_id)
        if transfer.is_decided:
            return
        reason = message.reason if message.reason in ABORT_REASONS else "payee_refused"
        self._abort(uow, transfer, reason, message.detail)

    def on_decision_applied(self, source: str, message: DecisionApplied, uow: UnitOfWork) -> None:
        transfer = _known_transfer(uow, message.transfer_id)
        if transfer.is_decided and message.committed != (transfer.reason is None):
            raise MessageRejected(
                f"{source} says it applied {'a commit' if message.committed else 'an abort'} "
                f"but transfer {message.transfer_id} is {transfer.status}"
            )
        try:
            transfer.acknowledge(source)
        except ProtocolViolation as e:
            raise MessageRejected(e.detail) from None

    def expire_overdue(self, now: datetime) -> list[str]:
        """Abort every transfer whose payee bank has not answered by ``now``."""
        overdue = [i for i, deadline in self._index.preparing.items() if deadline <= now]
        return [t for t in map(self._expire, overdue) if t is not None]

    def resend_unacknowledged(self, now: datetime) -> list[str]:
        """Send a decision again to each bank that has not acknowledged it within
        ``resend_after``: a decision is repeated until every bank told of it has applied it."""
        due = [i for i, a in self._index.awaiting.items() if a.due(now, self._resend_after)]
        return [t for t in (self._resend(i, now) for i in due) if t is not None]

    def _expire(self, aggregate_id: UUID) -> str | None:
        uow = UnitOfWork(self._app, CLEARING)
        transfer = uow.get(aggregate_id, Transfer)
        if transfer is None or transfer.is_decided:
            # Decided by another instance on the same store: stop looking at it.
            self._index.preparing.pop(aggregate_id, None)
            return None
        self._abort(uow, transfer, "deadline_exceeded", "the payee's bank did not answer")
        self._app.save(*uow.aggregates)
        return transfer.transfer_id

    def _resend(self, aggregate_id: UUID, now: datetime) -> str | None:
        uow = UnitOfWork(self._app, CLEARING)
        transfer = uow.get(aggregate_id, Transfer)
        waiting = transfer.awaiting_acknowledgement if transfer is not None else []
        if transfer is None or not waiting:
            self._index.awaiting.pop(aggregate_id, None)
            return None
        tell_decision(uow, transfer, to=waiting)
        if transfer.resend(waiting, now) >= MAX_RESENDS:
            log.warning(
                "transfer %s: %s did not apply its decision after %d re-sends; it is stuck",
                transfer.transfer_id,
                ", ".join(waiting),
                MAX_RESENDS,
                extra={
                    "transfer_id": transfer.transfer_id,
                    "bank": transfer.payer_bank,
                    "payee_bank": transfer.payee_bank,
                },
            )
        self._app.save(*uow.aggregates)
        return transfer.transfer_id

    def stuck(self) -> list[UUID]:
        """Decisions re-sent as often as they will be, still not applied by some bank."""
        return [i for i, a in self._index.awaiting.items() if a.stuck]

    def _abort(self, uow: UnitOfWork, transfer: Transfer, reason: str, detail: str) -> None:
        transfer.abort(reason, detail, at=self._clock())
        member_bank(uow.get, transfer.payer_bank).release(transfer.transfer_id)
        tell_decision(uow, transfer)
