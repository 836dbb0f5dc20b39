"""The clearing house application: admits banks, coordinates every cross-bank transfer
(reserve, ask the payee's bank, decide durably, tell both), and keeps the banks' positions."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from services.clearing import APPLICATION_NAME
from services.clearing.domain import (
    ACTIVE,
    DEFAULT_DEADLINE_SECONDS,
    DEFAULT_RESEND_SECONDS,
    PREPARING,
    CheckpointConflict,
    CheckpointLog,
    ClearingError,
    Directory,
    InvalidRequest,
    MemberBank,
    ReservationRefused,
    Transfer,
    bank_id_to_uuid,
    transfer_id_to_uuid,
)
from services.clearing.settlement import (
    CONFIRMED,
    PENDING,
    SettlementBook,
    SettlementCycle,
    settlement_uuid,
)
from services.common.application import ServiceApplication
from services.common.inbox import MessageRejected, Outcome, Received, UnitOfWork, receive_from
from services.common.stores import Store
from shared.identifiers import InvalidBankId, check_bank_id
from shared.protocol import (
    ABORT_REASONS,
    CLEARING,
    AnyMessage,
    BankEntry,
    CheckpointPublished,
    CreditPrepared,
    CreditRefused,
    CreditRequested,
    DecisionApplied,
    DirectoryChanged,
    Envelope,
    SettlementCompleted,
    TransferAborted,
    TransferCommitted,
    TransferRequested,
)
from shared.signing import SigningKeyError, check_public_key, checkpoint_payload, verify

_TRANSFER_TOPICS = [
    get_topic(t)
    for t in (Transfer.Requested, Transfer.Committed, Transfer.Aborted, Transfer.Acknowledged)
]

A = TypeVar("A", bound=Aggregate)


class UnknownBank(ClearingError):
    pass


class BankExists(ClearingError):
    pass


class UnknownTransfer(ClearingError):
    pass


class UnknownSettlement(ClearingError):
    pass


def member_bank(uow: UnitOfWork, bank_id: str) -> MemberBank:
    bank = uow.get(bank_id_to_uuid(bank_id), MemberBank)
    if bank is None:
        raise UnknownBank(f"bank {bank_id} is not a member", bank_id=bank_id)
    return bank


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class BankView:
    bank_id: str
    name: str
    status: str
    limit_minutes: int
    position_minutes: int
    reserved_minutes: int


@dataclass(frozen=True)
class TransferView:
    transfer_id: str
    status: str
    reason: str | None
    detail: str
    payer_bank: str
    payer: str
    payee_bank: str
    payee: str
    minutes: int
    memo: str
    deadline: datetime
    acknowledged_by: list[str]


@dataclass(frozen=True)
class ObligationView:
    number: int
    debtor: str
    creditor: str
    minutes: int
    status: str
    confirmed_at: datetime | None


@dataclass(frozen=True)
class SettlementView:
    settlement_id: int
    status: str
    cut_off_at: datetime
    completed_at: datetime | None
    positions: dict[str, int]
    obligations: list[ObligationView]


@dataclass
class _Awaiting:
    informed: list[str]
    acknowledged: set[str]
    sent_at: datetime


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
                    awaiting = self.awaiting.get(i)
                    if awaiting is not None:
                        awaiting.acknowledged.add(bank_id)
                        if set(awaiting.informed) <= awaiting.acknowledged:
                            del self.awaiting[i]

    def _decided(self, aggregate_id: UUID, informed: list[str], at: datetime) -> None:
        self.preparing.pop(aggregate_id, None)
        self._parties.pop(aggregate_id, None)
        if informed:
            self.awaiting[aggregate_id] = _Awaiting(informed, set(), at)


class Clearing(ServiceApplication):
    """The clearing house. One process; commands and received batches run under one lock."""

    name = APPLICATION_NAME

    def __init__(
        self,
        store: Store,
        *,
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
        resend_after_seconds: float = DEFAULT_RESEND_SECONDS,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.deadline = timedelta(seconds=deadline_seconds)
        self.resend_after = timedelta(seconds=resend_after_seconds)
        self.clock = clock
        self._lock = threading.RLock()
        store.prepare()
        super().__init__(env={**store.env, "AGGREGATE_CACHE_MAXSIZE": "10000"})
        self._index = self._load_index()
        # Every save, tracked or not, keeps the index of work still to do.
        self.save_listeners.append(self._index.fold)

    # The directory.

    def admit_bank(
        self,
        bank_id: str,
        name: str,
        limit_minutes: int,
        token_digest: str = "",
        public_key: str = "",
    ) -> BankView:
        try:
            check_bank_id(bank_id)
        except InvalidBankId as e:
            raise InvalidRequest(str(e)) from None
        with self._lock:
            if self.find(bank_id_to_uuid(bank_id), MemberBank) is not None:
                raise BankExists(f"bank {bank_id} is already a member", bank_id=bank_id)
            if public_key:
                try:
                    check_public_key(public_key)
                except SigningKeyError as e:
                    raise InvalidRequest(str(e)) from None
            bank = MemberBank.admit(bank_id, name, limit_minutes, token_digest, public_key)
            directory = self._directory()
            directory.list_bank(bank_id)
            uow = UnitOfWork(self, CLEARING)
            uow.add(bank)
            uow.add(directory)
            self._announce_directory(uow, directory)
            self.save(*uow.aggregates)
            return self._bank_view(bank)

    def suspend_bank(self, bank_id: str) -> BankView:
        return self._change_status(bank_id, suspend=True)

    def reinstate_bank(self, bank_id: str) -> BankView:
        return self._change_status(bank_id, suspend=False)

    def banks(self) -> list[BankView]:
        with self._lock:
            return [self._bank_view(self._bank(b)) for b in self._directory().bank_ids]

    def positions(self) -> dict[str, int]:
        return {b.bank_id: b.position_minutes for b in self.banks()}

    def get_transfer(self, transfer_id: str) -> TransferView:
        transfer = self.find(transfer_id_to_uuid(transfer_id), Transfer)
        if transfer is None:
            raise UnknownTransfer(f"no transfer {transfer_id}", transfer_id=transfer_id)
        return TransferView(
            transfer_id=transfer.transfer_id,
            status=transfer.status,
            reason=transfer.reason,
            detail=transfer.detail,
            payer_bank=transfer.payer_bank,
            payer=transfer.payer,
            payee_bank=transfer.payee_bank,
            payee=transfer.payee,
            minutes=transfer.minutes,
            memo=transfer.memo,
            deadline=transfer.deadline,
            acknowledged_by=list(transfer.acknowledged_by),
        )

    def issue_token(self, bank_id: str, token_digest: str) -> None:
        """Give a bank a new clearing-house token (lost, leaked, or never issued)."""
        with self._lock:
            bank = self._bank(bank_id)
            bank.issue_token(token_digest)
            self.save(bank)

    def bank_with_token_digest(self, token_digest: str) -> str | None:
        """The bank whose clearing-house token has this SHA-256 digest (hex), if any. Every
        bank is compared, always, so timing says nothing about which matched."""
        found = None
        with self._lock:
            for bank_id in self._directory().bank_ids:
                expected = self._bank(bank_id).token_digest
                if expected and hmac.compare_digest(expected, token_digest):
                    found = bank_id
        return found

    # Settlement.

    def open_settlement(self) -> SettlementView:
        """Close a cycle now: every bank's position from the transfers committed so far, and
        the fewest obligations that settle them. What commits later is the next cycle's."""
        with self._lock:
            uow = UnitOfWork(self, CLEARING)
            book = uow.get(SettlementBook.create_id(), SettlementBook)
            book = book or uow.add(SettlementBook())
            settlement_id = book.open_next()
            positions = {
                bank_id: member_bank(uow, bank_id).position_minutes
                for bank_id in self._directory().bank_ids
            }
            cycle = uow.add(SettlementCycle.open(settlement_id, self.clock(), positions))
            for bank_id, moved in cycle.settled_minutes().items():
                if moved < 0:
                    member_bank(uow, bank_id).expect_settlement(settlement_id, -moved)
            if cycle.all_confirmed:  # nothing to settle: positions were square, or net out
                self._complete(uow, book, cycle)
            self.save(*uow.aggregates)
            return self._settlement_view(cycle)

    def confirm_obligation(self, settlement_id: int, number: int, bank_id: str) -> SettlementView:
        """The creditor bank ``bank_id`` received what obligation ``number`` owes it. When the
        last obligation is confirmed, the cycle completes and every bank is told."""
        with self._lock:
            uow = UnitOfWork(self, CLEARING)
            cycle = uow.get(settlement_uuid(settlement_id), SettlementCycle)
            if cycle is None:
                raise UnknownSettlement(f"no settlement {settlement_id}")
            if cycle.confirm(number, bank_id, self.clock()) and cycle.all_confirmed:
                book = uow.get(SettlementBook.create_id(), SettlementBook)
                self._complete(uow, book or uow.add(SettlementBook()), cycle)
            self.save(*uow.aggregates)
            return self._settlement_view(cycle)

    def get_settlement(self, settlement_id: int) -> SettlementView:
        cycle = self.find(settlement_uuid(settlement_id), SettlementCycle)
        if cycle is None:
            raise UnknownSettlement(f"no settlement {settlement_id}")
        return self._settlement_view(cycle)

    def settlements(self) -> list[SettlementView]:
        book = self.find(SettlementBook.create_id(), SettlementBook)
        count = book.count if book is not None else 0
        return [self.get_settlement(n) for n in range(1, count + 1)]

    def _complete(self, uow: UnitOfWork, book: SettlementBook, cycle: SettlementCycle) -> None:
        """Positions move by the settled amounts; each bank is told, to post the same."""
        cycle.complete(self.clock())
        book.close(cycle.settlement_id)
        for bank_id, (paid, received) in cycle.paid_and_received().items():
            if paid == received:
                continue
            member_bank(uow, bank_id).settle(cycle.settlement_id, paid - received)
            message = SettlementCompleted(
                settlement_id=cycle.settlement_id, paid_minutes=paid, received_minutes=received
            )
            uow.send(bank_id, message, sender=CLEARING)

    @staticmethod
    def _settlement_view(cycle: SettlementCycle) -> SettlementView:
        return SettlementView(
            settlement_id=cycle.settlement_id,
            status=cycle.status,
            cut_off_at=cycle.cut_off_at,
            completed_at=cycle.completed_at,
            positions=dict(cycle.positions),
            obligations=[
                ObligationView(
                    number=n,
                    debtor=o["debtor"],
                    creditor=o["creditor"],
                    minutes=o["minutes"],
                    status=CONFIRMED if n in cycle.confirmed_at else PENDING,
                    confirmed_at=cycle.confirmed_at.get(n),
                )
                for n, o in enumerate(cycle.obligations, start=1)
            ],
        )

    # Receiving from banks.

    def receive(self, envelopes: Sequence[Envelope]) -> list[Received]:
        """Apply a batch: each sender's messages in sequence, in one transaction per sender."""
        by_source: dict[str, list[Envelope]] = {}
        results: list[Received] = []
        for envelope in envelopes:
            if envelope.destination != CLEARING:
                reason = f"addressed to {envelope.destination}, not the clearing house"
                results.append(Received(envelope, Outcome.REJECTED, reason))
            else:
                by_source.setdefault(envelope.source, []).append(envelope)
        with self._lock:
            for source, group in by_source.items():
                results += receive_from(self, source, group, self._handle)
            return results

    def expire_overdue(self) -> list[str]:
        """Abort every transfer whose payee bank has not answered by its deadline."""
        now = self.clock()
        expired = []
        with self._lock:
            overdue = [i for i, deadline in self._index.preparing.items() if deadline <= now]
            for aggregate_id in overdue:
                uow = UnitOfWork(self, CLEARING)
                transfer = uow.get(aggregate_id, Transfer)
                if transfer is None or transfer.status != PREPARING:
                    # Decided by another instance on the same store: stop looking at it.
                    self._index.preparing.pop(aggregate_id, None)
                    continue
                self._abort(uow, transfer, "deadline_exceeded", "the payee's bank did not answer")
                self.save(*uow.aggregates)
                expired.append(transfer.transfer_id)
        return expired

    def resend_unacknowledged(self) -> list[str]:
        """Send a decision again to each bank that has not acknowledged it within
        ``resend_after``: a decision is repeated until every bank told of it has applied it."""
        now = self.clock()
        resent = []
        with self._lock:
            due = [
                i for i, a in self._index.awaiting.items() if now - a.sent_at >= self.resend_after
            ]
            for aggregate_id in due:
                uow = UnitOfWork(self, CLEARING)
                transfer = uow.get(aggregate_id, Transfer)
                waiting = transfer.awaiting_acknowledgement if transfer is not None else []
                if transfer is None or not waiting:
                    self._index.awaiting.pop(aggregate_id, None)
                    continue
                self._tell_decision(uow, transfer, to=waiting)
                self.save(*uow.aggregates)
                self._index.awaiting[aggregate_id].sent_at = now
                resent.append(transfer.transfer_id)
        return resent

    # Handlers: one per message a bank may send; each is idempotent by transfer id.

    def _handle(self, source: str, message: AnyMessage, uow: UnitOfWork) -> None:
        if self.find(bank_id_to_uuid(source), MemberBank) is None:
            raise MessageRejected(f"{source} is not a member bank")
        match message:
            case TransferRequested():
                self._on_transfer_requested(source, message, uow)
            case CreditPrepared():
                self._on_credit_prepared(source, message, uow)
            case CreditRefused():
                self._on_credit_refused(source, message, uow)
            case DecisionApplied():
                self._on_decision_applied(source, message, uow)
            case CheckpointPublished():
                self._on_checkpoint(source, message, uow)
            case _:
                raise MessageRejected(f"a bank may not send {type(message).__name__}")

    def _on_checkpoint(self, source: str, message: CheckpointPublished, uow: UnitOfWork) -> None:
        """Keep a bank's signed checkpoint of its log, if its signature verifies against the
        public key given at the bank's admission."""
        public_key = member_bank(uow, source).public_key
        if not public_key:
            raise MessageRejected(f"{source} has no public key here: its checkpoint is unsigned")
        payload = checkpoint_payload(source, message.position, message.chain_hash)
        if not verify(public_key, payload, message.signature):
            raise MessageRejected(
                f"the signature of {source}'s checkpoint at {message.position} does not verify"
            )
        log = uow.get(CheckpointLog.create_id(source), CheckpointLog)
        log = log or uow.add(CheckpointLog(source))
        try:
            log.record(message.position, message.chain_hash, message.signature)
        except CheckpointConflict as e:
            raise MessageRejected(e.detail) from None

    def checkpoints(self, bank_id: str) -> list[tuple[int, str, str]]:
        """A bank's signed checkpoints, oldest first: (log position, chain hash, signature)."""
        log = self.find(CheckpointLog.create_id(bank_id), CheckpointLog)
        if log is None:
            return []
        return [
            (ev.position, ev.chain_hash, ev.signature)
            for ev in self.events.get(log.id)
            if isinstance(ev, CheckpointLog.Recorded)
        ]

    def _on_transfer_requested(
        self, source: str, message: TransferRequested, uow: UnitOfWork
    ) -> None:
        if message.payer_bank != source:
            raise MessageRejected(f"{source} may not request a transfer for {message.payer_bank}")
        earlier = uow.get(transfer_id_to_uuid(message.transfer_id), Transfer)
        if earlier is not None:
            if earlier.payer_bank != source:
                raise MessageRejected(
                    f"transfer id {message.transfer_id} is already used by {earlier.payer_bank}"
                )
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
                deadline=self.clock() + self.deadline,
            )
        )
        payer_bank = member_bank(uow, source)
        payee_bank = uow.get(bank_id_to_uuid(message.payee_bank), MemberBank)
        refusal: tuple[str, str] | None = None
        if message.payee_bank == source:
            refusal = ("invalid_transfer", "payer and payee are in the same bank")
        elif payee_bank is None:
            refusal = ("unknown_bank", f"{message.payee_bank} is not a member bank")
        elif payee_bank.status != ACTIVE:
            refusal = ("bank_suspended", f"bank {message.payee_bank} is suspended")
        else:
            try:
                payer_bank.reserve(message.transfer_id, message.minutes)
            except ReservationRefused as e:
                refusal = (e.reason, e.detail)
        if refusal is not None:
            transfer.abort(*refusal, payee_bank_asked=False, at=self.clock())
            self._tell_decision(uow, transfer)
            return
        uow.send(
            message.payee_bank,
            CreditRequested(
                transfer_id=message.transfer_id,
                payer_bank=message.payer_bank,
                payer=message.payer,
                payee=message.payee,
                minutes=message.minutes,
                memo=message.memo,
            ),
            sender=CLEARING,
        )

    def _on_credit_prepared(self, source: str, message: CreditPrepared, uow: UnitOfWork) -> None:
        transfer = self._answered_transfer(source, message.transfer_id, uow)
        if transfer.is_decided:
            return  # too late (the deadline passed) or said twice: the decision stands
        transfer.commit(at=self.clock())
        member_bank(uow, transfer.payer_bank).debit(transfer.transfer_id)
        member_bank(uow, transfer.payee_bank).credit(transfer.transfer_id, transfer.minutes)
        self._tell_decision(uow, transfer)

    def _on_credit_refused(self, source: str, message: CreditRefused, uow: UnitOfWork) -> None:
        transfer = self._answered_transfer(source, message.transfer_id, uow)
        if transfer.is_decided:
            return
        reason = message.reason if message.reason in ABORT_REASONS else "payee_refused"
        self._abort(uow, transfer, reason, message.detail)

    def _on_decision_applied(self, source: str, message: DecisionApplied, uow: UnitOfWork) -> None:
        transfer = uow.get(transfer_id_to_uuid(message.transfer_id), Transfer)
        if transfer is None:
            raise MessageRejected(f"no transfer {message.transfer_id}")
        if transfer.is_decided and message.committed != (transfer.reason is None):
            raise MessageRejected(
                f"{source} says it applied {'a commit' if message.committed else 'an abort'} "
                f"but transfer {message.transfer_id} is {transfer.status}"
            )
        try:
            transfer.acknowledge(source)
        except InvalidRequest as e:
            raise MessageRejected(e.detail) from None

    # Plumbing.

    def _answered_transfer(self, source: str, transfer_id: str, uow: UnitOfWork) -> Transfer:
        transfer = uow.get(transfer_id_to_uuid(transfer_id), Transfer)
        if transfer is None:
            raise MessageRejected(f"no transfer {transfer_id}")
        if transfer.payee_bank != source:
            raise MessageRejected(f"{source} is not the payee's bank of {transfer_id}")
        return transfer

    def _abort(self, uow: UnitOfWork, transfer: Transfer, reason: str, detail: str) -> None:
        transfer.abort(reason, detail, at=self.clock())
        member_bank(uow, transfer.payer_bank).release(transfer.transfer_id)
        self._tell_decision(uow, transfer)

    def _tell_decision(
        self, uow: UnitOfWork, transfer: Transfer, to: Sequence[str] | None = None
    ) -> None:
        decision: AnyMessage
        if transfer.status == PREPARING:
            raise InvalidRequest(f"transfer {transfer.transfer_id} is not decided")
        if transfer.reason is None:
            decision = TransferCommitted(
                transfer_id=transfer.transfer_id,
                payer_bank=transfer.payer_bank,
                payee_bank=transfer.payee_bank,
                minutes=transfer.minutes,
            )
        else:
            decision = TransferAborted(
                transfer_id=transfer.transfer_id, reason=transfer.reason, detail=transfer.detail
            )
        for bank_id in transfer.informed if to is None else to:
            uow.send(bank_id, decision, sender=CLEARING)

    def _announce_directory(self, uow: UnitOfWork, directory: Directory) -> None:
        entries = []
        for bank_id in directory.bank_ids:
            bank = member_bank(uow, bank_id)
            entries.append(BankEntry(bank_id=bank_id, name=bank.name, status=bank.status))
        for bank_id in directory.bank_ids:
            uow.send(bank_id, DirectoryChanged(banks=entries), sender=CLEARING)

    def _change_status(self, bank_id: str, *, suspend: bool) -> BankView:
        with self._lock:
            uow = UnitOfWork(self, CLEARING)
            bank = uow.get(bank_id_to_uuid(bank_id), MemberBank)
            if bank is None:
                raise UnknownBank(f"bank {bank_id} is not a member", bank_id=bank_id)
            if suspend:
                bank.suspend()
            else:
                bank.reinstate()
            self._announce_directory(uow, uow.add(self._directory()))
            self.save(*uow.aggregates)
            return self._bank_view(bank)

    def _load_index(self) -> _TransferIndex:
        index = _TransferIndex()
        index.fold(event for _, event in self.follow_events(1, _TRANSFER_TOPICS))
        return index

    def _directory(self) -> Directory:
        return self.find(Directory.create_id(), Directory) or Directory()

    def _bank(self, bank_id: str) -> MemberBank:
        bank = self.find(bank_id_to_uuid(bank_id), MemberBank)
        if bank is None:
            raise UnknownBank(f"bank {bank_id} is not a member", bank_id=bank_id)
        return bank

    @staticmethod
    def _bank_view(bank: MemberBank) -> BankView:
        return BankView(
            bank_id=bank.bank_id,
            name=bank.name,
            status=bank.status,
            limit_minutes=bank.limit_minutes,
            position_minutes=bank.position_minutes,
            reserved_minutes=bank.reserved_minutes,
        )
