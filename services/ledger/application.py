"""The bank's ledger application: commands load accounts, call the domain, and save once."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial
from typing import Any, Generic, TypeVar
from uuid import uuid4

import msgspec
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic

from services.common.application import ServiceApplication
from services.common.idempotency import IdempotencyConflict, IdempotencyRecord, record_id
from services.common.inbox import MessageRejected, Outcome, Received, UnitOfWork, receive_from
from services.common.outbox import Outbox, outbox_id
from services.common.stores import Store
from services.ledger import APPLICATION_NAME
from services.ledger.domain import (
    DEFAULT_MAX_EXCHANGE_MINUTES,
    DEFAULT_OVERDRAFT_MINUTES,
    FEDERATION_ACCOUNT,
    MEMBER_ID_PATTERN,
    SETTLEMENT_ACCOUNT,
    SYSTEM_ACCOUNTS,
    Account,
    BankPolicy,
    InvalidRequest,
    LedgerError,
    MemberKind,
    account_id,
    check_amount,
    check_memo,
    post_hold_to_counterparty,
    post_settlement,
)
from services.ledger.domain_federation import (
    BankDirectory,
    CrossBankTransfer,
    Role,
    TransferStatus,
    transfer_id_to_uuid,
)
from shared.protocol import (
    CLEARING,
    AnyMessage,
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

log = logging.getLogger(__name__)

T = TypeVar("T")

# A command that loses a race with another process re-reads and decides again, this often.
MAX_ATTEMPTS = 10
RETRY_PAUSE_SECONDS = 0.001
_SUMMARY_TOPICS = [
    get_topic(cls)
    for cls in (Account.Opened, Account.Credited, Account.Debited, Account.HoldPosted)
]


class UnknownMember(LedgerError):
    """No account with that member id in this bank."""


class MemberExists(LedgerError):
    """An account with that member id is already open in this bank."""


class UnknownBank(LedgerError):
    """The federation's directory, as last announced, has no such bank."""


class UnknownTransfer(LedgerError):
    """No cross-bank transfer with that id at this bank."""


class StoreBusy(LedgerError):
    """Other writers kept winning the race for the same accounts; the command can be retried."""


@dataclass(frozen=True)
class MemberView:
    member_id: str
    name: str
    kind: str
    balance_minutes: int
    held_minutes: int
    available_minutes: int
    overdraft_limit_minutes: int | None


@dataclass(frozen=True)
class ExchangeReceipt:
    exchange_id: str
    payer: str
    payee: str
    minutes: int
    memo: str
    recorded_at: datetime


@dataclass(frozen=True)
class StatementEntry:
    at: datetime
    minutes: int
    counterparty: str
    memo: str
    kind: str
    entry_id: str


@dataclass(frozen=True)
class Statement:
    member_id: str
    balance_minutes: int
    entries: list[StatementEntry]


@dataclass(frozen=True)
class BankSummary:
    bank: str
    members: int
    total_posted_minutes: int


@dataclass(frozen=True)
class TransferReceipt:
    transfer_id: str
    status: str


@dataclass(frozen=True)
class TransferView:
    transfer_id: str
    status: str
    reason: str | None
    role: str
    member_id: str
    other_bank: str
    other_member: str
    minutes: int
    memo: str


@dataclass(frozen=True)
class IdempotencyKey:
    key: str
    fingerprint: str


@dataclass(frozen=True)
class Executed(Generic[T]):
    """A command's result, and whether it is the stored result of an earlier identical request."""

    value: T
    replayed: bool = False


class Ledger(ServiceApplication):
    """One bank's ledger.

    Concurrency: within a process every command runs under one write lock, so decisions are
    made on the latest state and SQLite sees one writer. A second process writing the same
    store is still safe: each save is checked by the store's optimistic concurrency control
    (a unique aggregate version), and a command that loses the race is decided again on
    fresh state. Either way no update is lost and no rule is checked against stale balances.
    """

    name = APPLICATION_NAME
    snapshotting_intervals = {Account: 200}  # noqa: RUF012 (eventsourcing's class attribute)

    def __init__(
        self,
        bank_id: str,
        store: Store,
        *,
        default_overdraft_minutes: int = DEFAULT_OVERDRAFT_MINUTES,
        max_exchange_minutes: int = DEFAULT_MAX_EXCHANGE_MINUTES,
        cache_size: int = 10_000,
    ) -> None:
        self.bank_id = bank_id
        self.default_overdraft_minutes = default_overdraft_minutes
        self.max_exchange_minutes = max_exchange_minutes
        self._write_lock = threading.RLock()
        self._summary_lock = threading.Lock()
        self._summary_next = 1
        self._summary_members = 0
        self._summary_total = 0
        store.prepare()
        super().__init__(env={**store.env, "AGGREGATE_CACHE_MAXSIZE": str(cache_size)})
        self._open_system_accounts()
        self._record_policy()

    # Queries.

    def get_member(self, member_id: str) -> MemberView:
        return self._view(self._account(member_id))

    def statement(self, member_id: str) -> Statement:
        account = self._account(member_id)
        entries = []
        for ev in self.events.get(account.id):
            if isinstance(ev, Account.Credited):
                sign, entry_id = 1, ev.entry_id
            elif isinstance(ev, Account.Debited):
                sign, entry_id = -1, ev.entry_id
            elif isinstance(ev, Account.HoldPosted):
                sign, entry_id = -1, ev.hold_id
            else:
                continue
            entries.append(
                StatementEntry(
                    at=ev.timestamp,
                    minutes=sign * ev.minutes,
                    counterparty=ev.party or ev.counterparty,
                    memo=ev.memo,
                    kind=ev.kind,
                    entry_id=entry_id,
                )
            )
        # The balance is the sum of the entries read, so the two always agree.
        return Statement(
            member_id=member_id,
            balance_minutes=sum(e.minutes for e in entries),
            entries=entries,
        )

    def summary(self) -> BankSummary:
        """Members and the sum of all posted balances, folded from the log's postings.

        The store commits transactions in notification order, so reading on until nothing
        is left ends on a whole-transaction boundary: no exchange is ever half-counted, even
        while another process writes. Each call reads only what was recorded since the last.
        """
        with self._summary_lock:
            for position, event in self.follow_events(self._summary_next, _SUMMARY_TOPICS):
                match event:
                    case Account.Opened(kind=kind) if kind != MemberKind.SYSTEM:
                        self._summary_members += 1
                    case Account.Credited(minutes=minutes):
                        self._summary_total += minutes
                    case Account.Debited(minutes=minutes) | Account.HoldPosted(minutes=minutes):
                        self._summary_total -= minutes
                self._summary_next = position + 1
            return BankSummary(
                bank=self.bank_id,
                members=self._summary_members,
                total_posted_minutes=self._summary_total,
            )

    # Commands.

    def open_member(
        self,
        member_id: str,
        name: str,
        kind: str,
        overdraft_limit_minutes: int | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> Executed[MemberView]:
        def command() -> tuple[Sequence[Aggregate], MemberView]:
            if kind == MemberKind.SYSTEM:
                raise InvalidRequest("system accounts are opened by the bank itself")
            # Checked first: an id that is taken (a system account's too) is taken, whatever
            # else is wrong with the request.
            if self.exists(account_id(member_id)):
                raise MemberExists(f"member {member_id} already exists", member_id=member_id)
            account = Account.open(member_id, name, kind, overdraft_limit_minutes)
            return [account], self._view(account)

        return self._execute(command, idempotency, MemberView)

    def exchange(
        self,
        payer: str,
        payee: str,
        minutes: int,
        memo: str,
        idempotency: IdempotencyKey | None = None,
    ) -> Executed[ExchangeReceipt]:
        """The payer received help and pays the payee, who gave it, in one atomic save."""

        def command() -> tuple[Sequence[Aggregate], ExchangeReceipt]:
            check_amount(minutes, self.max_exchange_minutes)
            check_memo(memo)
            if payer == payee:
                raise InvalidRequest("payer and payee must be different members")
            payer_account = self._member_account(payer)
            payee_account = self._member_account(payee)
            exchange_id = str(uuid4())
            payer_account.debit(
                exchange_id, minutes, payee, memo, "exchange", self.default_overdraft_minutes
            )
            payee_account.credit(exchange_id, minutes, payer, memo, "exchange")
            receipt = ExchangeReceipt(
                exchange_id=exchange_id,
                payer=payer,
                payee=payee,
                minutes=minutes,
                memo=memo,
                recorded_at=payer_account.modified_on,
            )
            return [payer_account, payee_account], receipt

        return self._execute(command, idempotency, ExchangeReceipt)

    def place_hold(
        self,
        member_id: str,
        hold_id: str,
        minutes: int,
        counterparty: str,
        memo: str,
        kind: str = "transfer",
    ) -> MemberView:
        """Reserve minutes on an account, to be posted to the counterparty or voided later."""

        def command() -> tuple[Sequence[Aggregate], MemberView]:
            check_amount(minutes, self.max_exchange_minutes)
            check_memo(memo)
            account = self._account(member_id)
            if counterparty == member_id:
                raise InvalidRequest("a hold's counterparty must be another account")
            self._account(counterparty)
            account.place_hold(
                hold_id, minutes, counterparty, memo, kind, self.default_overdraft_minutes
            )
            return [account], self._view(account)

        return self._execute(command, None, MemberView).value

    def post_hold(self, member_id: str, hold_id: str) -> MemberView:
        """Post an open hold: the held minutes move to the hold's counterparty, atomically."""

        def command() -> tuple[Sequence[Aggregate], MemberView]:
            account = self._account(member_id)
            other = post_hold_to_counterparty(account, hold_id, self._account)
            return [account, other], self._view(account)

        return self._execute(command, None, MemberView).value

    def void_hold(self, member_id: str, hold_id: str) -> MemberView:
        def command() -> tuple[Sequence[Aggregate], MemberView]:
            account = self._account(member_id)
            account.void_hold(hold_id)
            return [account], self._view(account)

        return self._execute(command, None, MemberView).value

    # Cross-bank transfers: this bank's side of the clearing house's protocol.

    def request_transfer(
        self,
        payer: str,
        to_bank: str,
        payee: str,
        minutes: int,
        memo: str,
        idempotency: IdempotencyKey | None = None,
    ) -> Executed[TransferReceipt]:
        """Hold the payer's minutes and ask the clearing house to move them to another bank."""

        def command() -> tuple[Sequence[Aggregate], TransferReceipt]:
            check_amount(minutes, self.max_exchange_minutes)
            check_memo(memo)
            if to_bank == self.bank_id:
                raise InvalidRequest("the payee is in this bank: record an exchange instead")
            if to_bank not in self._bank_directory().banks:
                raise UnknownBank(f"{to_bank} is not a bank of the federation", bank=to_bank)
            if not MEMBER_ID_PATTERN.fullmatch(payee):
                raise InvalidRequest("payee must be a member id")
            account = self._member_account(payer)
            transfer_id = str(uuid4())
            transfer = CrossBankTransfer(
                transfer_id=transfer_id,
                role=Role.PAYER,
                member_id=payer,
                other_bank=to_bank,
                other_member=payee,
                minutes=minutes,
                memo=memo,
            )
            account.place_hold(
                transfer_id,
                minutes,
                FEDERATION_ACCOUNT,
                memo,
                "transfer",
                self.default_overdraft_minutes,
                party=transfer.party,
            )
            outbox = self._outbox()
            outbox.queue(
                TransferRequested(
                    transfer_id=transfer_id,
                    payer_bank=self.bank_id,
                    payer=payer,
                    payee_bank=to_bank,
                    payee=payee,
                    minutes=minutes,
                    memo=memo,
                    requested_at=account.modified_on,
                )
            )
            receipt = TransferReceipt(transfer_id=transfer_id, status=TransferStatus.PENDING)
            return [account, transfer, outbox], receipt

        return self._execute(command, idempotency, TransferReceipt)

    def send_checkpoint(self, checkpoint: CheckpointPublished) -> None:
        """Queue a signed checkpoint of this bank's log for the clearing house."""

        def command() -> tuple[list[Aggregate], None]:
            outbox = self._outbox()
            outbox.queue(checkpoint)
            return [outbox], None

        self._execute(command, None, lambda **_: None)

    def get_transfer(self, transfer_id: str) -> TransferView:
        transfer = self.find(transfer_id_to_uuid(transfer_id), CrossBankTransfer)
        if transfer is None:
            raise UnknownTransfer(f"no transfer {transfer_id}", transfer_id=transfer_id)
        return TransferView(
            transfer_id=transfer.transfer_id,
            status=transfer.status,
            reason=transfer.reason,
            role=transfer.role,
            member_id=transfer.member_id,
            other_bank=transfer.other_bank,
            other_member=transfer.other_member,
            minutes=transfer.minutes,
            memo=transfer.memo,
        )

    def known_banks(self) -> dict[str, dict[str, str]]:
        return dict(self._bank_directory().banks)

    def receive(self, envelopes: Sequence[Envelope]) -> list[Received]:
        """Apply what the clearing house sent, in sequence, once, in one transaction."""
        foreign = [
            Received(e, Outcome.REJECTED, f"not from the clearing house to {self.bank_id}")
            for e in envelopes
            if e.source != CLEARING or e.destination != self.bank_id
        ]
        ours = [e for e in envelopes if e.source == CLEARING and e.destination == self.bank_id]
        with self._write_lock:
            return foreign + receive_from(self, CLEARING, ours, self._handle)

    def _handle(self, source: str, message: AnyMessage, uow: UnitOfWork) -> None:
        match message:
            case DirectoryChanged(banks=banks):
                directory = uow.get(BankDirectory.create_id(), BankDirectory)
                directory = directory or uow.add(BankDirectory())
                directory.replace([msgspec.to_builtins(b) for b in banks])
            case CreditRequested():
                self._on_credit_requested(message, uow)
            case TransferCommitted() | TransferAborted():
                self._on_decision(message, uow)
            case SettlementCompleted(
                settlement_id=settlement_id, paid_minutes=paid, received_minutes=received
            ):
                post_settlement(
                    self._uow_account(uow, FEDERATION_ACCOUNT),
                    self._uow_account(uow, SETTLEMENT_ACCOUNT),
                    settlement_id,
                    paid - received,
                )
            case _:
                raise MessageRejected(f"a bank does not accept {type(message).__name__}")

    def _on_credit_requested(self, message: CreditRequested, uow: UnitOfWork) -> None:
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
        if payee is None or payee.is_system:
            transfer.abort("unknown_payee")
            uow.send(
                CLEARING,
                CreditRefused(
                    transfer_id=message.transfer_id,
                    reason="unknown_payee",
                    detail=f"no member {message.payee} in bank {self.bank_id}",
                ),
                sender=self.bank_id,
            )
            return
        federation = self._uow_account(uow, transfer.held_on)
        # The pending credit: a hold on the federation account, posted to the payee on commit.
        federation.place_hold(
            message.transfer_id,
            message.minutes,
            message.payee,
            message.memo,
            "transfer",
            self.default_overdraft_minutes,
            party=transfer.party,
        )
        uow.send(CLEARING, CreditPrepared(transfer_id=message.transfer_id), sender=self.bank_id)

    def _on_decision(self, message: TransferCommitted | TransferAborted, uow: UnitOfWork) -> None:
        transfer = uow.get(transfer_id_to_uuid(message.transfer_id), CrossBankTransfer)
        if transfer is None:
            raise MessageRejected(f"no transfer {message.transfer_id} at {self.bank_id}")
        committed = isinstance(message, TransferCommitted)
        if transfer.status == TransferStatus.PENDING:
            held_on = self._uow_account(uow, transfer.held_on)
            if committed:
                post_hold_to_counterparty(
                    held_on, transfer.transfer_id, partial(self._uow_account, uow)
                )
                transfer.commit()
            else:
                held_on.void_hold(transfer.transfer_id)
                transfer.abort(message.reason if isinstance(message, TransferAborted) else "")
        elif (transfer.status == TransferStatus.COMMITTED) != committed:
            raise MessageRejected(
                f"transfer {transfer.transfer_id} is {transfer.status} here; "
                f"the clearing house says {'committed' if committed else 'aborted'}"
            )
        # Said again on a repeated decision too, so the clearing house stops re-sending.
        uow.send(
            CLEARING,
            DecisionApplied(transfer_id=transfer.transfer_id, committed=committed),
            sender=self.bank_id,
        )

    def _uow_account(self, uow: UnitOfWork, member_id: str) -> Account:
        account = uow.get(account_id(member_id), Account)
        if account is None:
            raise MessageRejected(f"no account {member_id} in bank {self.bank_id}")
        return account

    def _bank_directory(self) -> BankDirectory:
        return self.find(BankDirectory.create_id(), BankDirectory) or BankDirectory()

    def _outbox(self) -> Outbox:
        outbox = self.find(outbox_id(self.bank_id, CLEARING), Outbox)
        return outbox or Outbox(source=self.bank_id, destination=CLEARING)

    # Plumbing.

    def _execute(
        self,
        command: Callable[[], tuple[Sequence[Aggregate], T]],
        idempotency: IdempotencyKey | None,
        result_type: Callable[..., T],
    ) -> Executed[T]:
        with self._write_lock:
            for attempt in range(MAX_ATTEMPTS):
                if idempotency is not None:
                    earlier = self._recorded(idempotency)
                    if earlier is not None:
                        return Executed(result_type(**earlier), replayed=True)
                aggregates, result = command()
                to_save: list[Aggregate] = list(aggregates)
                if idempotency is not None:
                    to_save.append(
                        IdempotencyRecord(
                            key=idempotency.key,
                            fingerprint=idempotency.fingerprint,
                            response=asdict(result),  # type: ignore[call-overload]
                        )
                    )
                try:
                    self.save(*to_save)
                except IntegrityError:
                    log.info("lost a race with another writer; deciding again on fresh state")
                    # Jitter, so two writers that collided do not collide again in lockstep.
                    time.sleep(random.uniform(0, RETRY_PAUSE_SECONDS * 2**attempt))  # noqa: S311
                    continue
                return Executed(result)
        raise StoreBusy("the store is busy with other writers to the same accounts; retry")

    def _recorded(self, idempotency: IdempotencyKey) -> dict[str, Any] | None:
        record = self.find(record_id(idempotency.key), IdempotencyRecord)
        if record is None:
            return None
        if record.fingerprint != idempotency.fingerprint:
            raise IdempotencyConflict(idempotency.key)
        return dict(record.response)

    def _open_system_accounts(self) -> None:
        for member_id in SYSTEM_ACCOUNTS:
            if not self.exists(account_id(member_id)):
                # Another process may open it first; then it exists, which is all we need.
                with contextlib.suppress(IntegrityError):
                    self.save(Account.open(member_id, member_id.title(), MemberKind.SYSTEM))

    def _record_policy(self) -> None:
        """Record the default overdraft limit in the log when it is new or has changed."""
        policy = self.find(BankPolicy.create_id(), BankPolicy)
        policy = policy or BankPolicy(self.default_overdraft_minutes)
        policy.set_default_overdraft(self.default_overdraft_minutes)
        # Another process may record it first; then the policy is recorded, which is enough.
        with contextlib.suppress(IntegrityError):
            self.save(policy)

    def _account(self, member_id: str) -> Account:
        account = self.find(account_id(member_id), Account)
        if account is None:
            raise UnknownMember(
                f"no member {member_id} in bank {self.bank_id}", member_id=member_id
            )
        return account

    def _member_account(self, member_id: str) -> Account:
        account = self._account(member_id)
        if account.is_system:
            raise InvalidRequest(f"{member_id} is a system account and cannot take part")
        return account

    def _view(self, account: Account) -> MemberView:
        return MemberView(
            member_id=account.member_id,
            name=account.name,
            kind=account.kind,
            balance_minutes=account.balance_minutes,
            held_minutes=account.held_minutes,
            available_minutes=account.available_minutes,
            overdraft_limit_minutes=account.effective_limit(self.default_overdraft_minutes),
        )
