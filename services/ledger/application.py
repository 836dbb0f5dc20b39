"""The bank's ledger application: commands load accounts, call the domain, and save once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar
from uuid import UUID, uuid4

from eventsourcing.domain import Aggregate

from services.common.application import ServiceApplication
from services.common.inbox import Outcome, Received, receive_from
from services.common.outbox import Outbox, outbox_id
from services.common.stores import Store
from services.ledger import APPLICATION_NAME
from services.ledger.directory_index import DEFAULT_PAGE_SIZE, MemberDirectory
from services.ledger.domain import (
    Account,
    BankDirectory,
    CrossBankTransfer,
    post_hold_to_counterparty,
)
from services.ledger.domain_terms import (
    DEFAULT_MAX_EXCHANGE_MINUTES,
    DEFAULT_OVERDRAFT_MINUTES,
    FEDERATION_ACCOUNT,
    MEMBER_ID_PATTERN,
    EntryKind,
    InvalidRequest,
    MemberExists,
    MemberKind,
    Role,
    TransferStatus,
    UnknownBank,
    UnknownMember,
    UnknownTransfer,
    account_id,
    check_amount,
    check_memo,
    transfer_id_to_uuid,
)
from services.ledger.handlers import BankHandlers
from services.ledger.orders import ExchangeOrder, TransferOrder
from services.ledger.setup import open_system_accounts, record_policy
from services.ledger.views import (
    BankSummary,
    BankTotals,
    CrossBankTransferView,
    ExchangeReceipt,
    MemberPage,
    MemberView,
    Statement,
    StatementWindow,
    TransferReceipt,
    cross_bank_transfer_view,
    member_view,
    statement,
)
from services.ledger.writer import Command, Executed, IdempotencyKey, T, Writer
from shared.protocol import CLEARING, CheckpointPublished, Envelope, TransferRequested

A = TypeVar("A", bound=Aggregate)


class Ledger(ServiceApplication):
    """One bank's ledger. Commands go through one writer per process (writer.py): decided in
    arrival order on live accounts and saved together (group commit); a save that loses a race
    with another process is decided again on fresh state, so no rule sees a stale balance."""

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
        self._handlers = BankHandlers(bank_id, default_overdraft_minutes)
        self._totals = BankTotals()
        self._directory = MemberDirectory()
        store.prepare()
        super().__init__(env={**store.env, "AGGREGATE_CACHE_MAXSIZE": str(cache_size)})
        self._writer = Writer(self, working_set_size=cache_size)
        open_system_accounts(self)
        record_policy(self, self.default_overdraft_minutes)

    def find(self, aggregate_id: UUID, cls: type[A]) -> A | None:
        # A command being decided reads the writer's live aggregates: no re-read, no copy.
        if self._writer.deciding_here:
            return self._writer.working.get(aggregate_id, cls)
        return super().find(aggregate_id, cls)

    def get_member(self, member_id: str) -> MemberView:
        return self._view(self._account(member_id))

    def statement(self, member_id: str, window: StatementWindow | None = None) -> Statement:
        return statement(member_id, self.events.get(self._account(member_id).id), window)

    def summary(self) -> BankSummary:
        """Members and the sum of posted balances, folded from the log since the last call, to
        a whole-transaction boundary: no exchange is ever half-counted."""
        totals = self._totals
        with totals.lock:
            for position, event in self.follow_events(totals.next_position, totals.TOPICS):
                totals.fold(position, event)
            return BankSummary(
                bank=self.bank_id, members=totals.members, total_posted_minutes=totals.total_minutes
            )

    def members(
        self,
        query: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
        *,
        include_system: bool = False,
    ) -> MemberPage:
        """A page of members in id order, from the directory folded from the log."""
        ids, next_cursor = self._directory.page(
            self.follow_events, query, limit, cursor, include_system=include_system
        )
        return MemberPage(members=[self.get_member(m) for m in ids], next_cursor=next_cursor)

    def get_transfer(self, transfer_id: str) -> CrossBankTransferView:
        transfer = self.find(transfer_id_to_uuid(transfer_id), CrossBankTransfer)
        if transfer is None:
            raise UnknownTransfer(f"no transfer {transfer_id}", transfer_id=transfer_id)
        return cross_bank_transfer_view(transfer, self.bank_id)

    def known_banks(self) -> dict[str, dict[str, str]]:
        return dict(self._bank_directory().banks)

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

        return self._writer.execute(command, idempotency, MemberView)

    def exchange(
        self,
        payer: str,
        payee: str,
        minutes: int,
        memo: str,
        idempotency: IdempotencyKey | None = None,
    ) -> Executed[ExchangeReceipt]:
        """The payer received help and pays the payee, who gave it, in one atomic save."""
        command = self.exchange_command(payer, payee, minutes, memo)
        return self._writer.execute(command, idempotency, ExchangeReceipt)

    def exchange_all(
        self, orders: Sequence[ExchangeOrder]
    ) -> list[Executed[ExchangeReceipt] | Exception]:
        """Many exchanges, decided in this order and saved together: each is accepted or
        refused on its own, with the answer it would have had alone."""
        commands = [
            (self.exchange_command(o.payer, o.payee, o.minutes, o.memo), o.idempotency)
            for o in orders
        ]
        return self._writer.execute_all(commands, ExchangeReceipt)

    def exchange_command(
        self, payer: str, payee: str, minutes: int, memo: str
    ) -> Command[ExchangeReceipt]:
        def command() -> tuple[Sequence[Aggregate], ExchangeReceipt]:
            check_amount(minutes, self.max_exchange_minutes)
            check_memo(memo)
            if payer == payee:
                raise InvalidRequest("payer and payee must be different members")
            payer_account = self._member_account(payer)
            payee_account = self._member_account(payee)
            payee_account.check_active()
            exchange_id = str(uuid4())
            payer_account.debit(
                exchange_id,
                minutes,
                payee,
                memo,
                EntryKind.EXCHANGE,
                self.default_overdraft_minutes,
            )
            payee_account.credit(exchange_id, minutes, payer, memo, EntryKind.EXCHANGE)
            receipt = ExchangeReceipt(
                exchange_id=exchange_id,
                payer=payer,
                payee=payee,
                minutes=minutes,
                memo=memo,
                recorded_at=payer_account.modified_on,
            )
            return [payer_account, payee_account], receipt

        return command

    def run(
        self, command: Command[T], idempotency: IdempotencyKey | None, result_type: type[T]
    ) -> Executed[T]:
        """Decide and save a command composed elsewhere (an offer's, a coordinator's act)."""
        return self._writer.execute(command, idempotency, result_type)

    def place_hold(
        self,
        member_id: str,
        hold_id: str,
        minutes: int,
        counterparty: str,
        memo: str,
        kind: str = EntryKind.TRANSFER,
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

        return self._writer.execute(command, None, MemberView).value

    def change_member(self, member_id: str, change: Callable[[Account], object]) -> MemberView:
        """A coordinator's change to a member: one of Account's methods, one event."""

        def command() -> tuple[Sequence[Aggregate], MemberView]:
            account = self._member_account(member_id)
            change(account)
            return [account], self._view(account)

        return self._writer.execute(command, None, MemberView).value

    def post_hold(self, member_id: str, hold_id: str) -> MemberView:
        """Post an open hold: the held minutes move to the hold's counterparty, atomically."""

        def command() -> tuple[Sequence[Aggregate], MemberView]:
            account = self._account(member_id)
            other = post_hold_to_counterparty(account, hold_id, self._account)
            return [account, other], self._view(account)

        return self._writer.execute(command, None, MemberView).value

    def void_hold(self, member_id: str, hold_id: str) -> MemberView:
        def command() -> tuple[Sequence[Aggregate], MemberView]:
            account = self._account(member_id)
            account.void_hold(hold_id)
            return [account], self._view(account)

        return self._writer.execute(command, None, MemberView).value

    # Cross-bank transfers: this bank's side of the clearing house's protocol (handlers.py).

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
        command = self.transfer_command(payer, to_bank, payee, minutes, memo)
        return self._writer.execute(command, idempotency, TransferReceipt)

    def request_transfer_all(
        self, orders: Sequence[TransferOrder]
    ) -> list[Executed[TransferReceipt] | Exception]:
        """Many transfers, decided in this order and saved together, each on its own."""
        commands = [
            (self.transfer_command(o.payer, o.to_bank, o.payee, o.minutes, o.memo), o.idempotency)
            for o in orders
        ]
        return self._writer.execute_all(commands, TransferReceipt)

    def transfer_command(
        self, payer: str, to_bank: str, payee: str, minutes: int, memo: str
    ) -> Command[TransferReceipt]:
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
                EntryKind.TRANSFER,
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

        return command

    def send_checkpoint(self, checkpoint: CheckpointPublished) -> None:
        """Queue a signed checkpoint of this bank's log for the clearing house."""

        def command() -> tuple[list[Aggregate], None]:
            outbox = self._outbox()
            outbox.queue(checkpoint)
            return [outbox], None

        self._writer.execute(command, None, type(None))

    def receive(self, envelopes: Sequence[Envelope]) -> list[Received]:
        """Apply what the clearing house sent, in sequence, once, in one transaction."""
        foreign = [
            Received(e, Outcome.REJECTED, f"not from the clearing house to {self.bank_id}")
            for e in envelopes
            if e.source != CLEARING or e.destination != self.bank_id
        ]
        ours = [e for e in envelopes if e.source == CLEARING and e.destination == self.bank_id]
        with self._writer.lock:
            # On the writer's live accounts: the handlers' changes are the commands' state.
            received = receive_from(
                self, CLEARING, ours, self._handlers.handle, self._writer.working
            )
            return foreign + received

    # Plumbing.

    def _bank_directory(self) -> BankDirectory:
        return self.find(BankDirectory.create_id(), BankDirectory) or BankDirectory()

    def _outbox(self) -> Outbox:
        outbox = self.find(outbox_id(self.bank_id, CLEARING), Outbox)
        return outbox or Outbox(source=self.bank_id, destination=CLEARING)

    def _account(self, member_id: str) -> Account:
        account = self.find(account_id(member_id), Account)
        if account is None:
            detail = f"no member {member_id} in bank {self.bank_id}"
            raise UnknownMember(detail, member_id=member_id)
        return account

    def _member_account(self, member_id: str) -> Account:
        account = self._account(member_id)
        if account.is_system:
            raise InvalidRequest(f"{member_id} is a system account and cannot take part")
        return account

    def _view(self, account: Account) -> MemberView:
        return member_view(account, self.default_overdraft_minutes)
