"""The clearing house application: admits banks, coordinates every cross-bank transfer
(reserve, ask the payee's bank, decide durably, tell both), and keeps the banks' positions."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial

from services.clearing import APPLICATION_NAME
from services.clearing.coordinator import Coordinator
from services.clearing.domain import (
    CheckpointLog,
    Directory,
    MemberBank,
    Transfer,
)
from services.clearing.domain_rules import (
    member_bank,
)
from services.clearing.domain_terms import (
    DEFAULT_DEADLINE_SECONDS,
    DEFAULT_RESEND_SECONDS,
    BadSignature,
    BankExists,
    InvalidRequest,
    UnknownTransfer,
    bank_id_to_uuid,
    transfer_id_to_uuid,
)
from services.clearing.handlers import handle
from services.clearing.settlement import SettlementBook
from services.clearing.settlements import confirm_receipt, open_cycle, settlement_cycle
from services.clearing.views import (
    BankView,
    SettlementView,
    TransferView,
    bank_view,
    settlement_view,
    transfer_view,
)
from services.common.application import ServiceApplication
from services.common.inbox import (
    LiveAggregates,
    Outcome,
    Received,
    UnitOfWork,
    receive_from,
)
from services.common.stores import Store
from shared.identifiers import InvalidBankId, check_bank_id
from shared.nats_users import InvalidNatsKey, check_user_nkey
from shared.protocol import CLEARING, BankEntry, DirectoryChanged, Envelope
from shared.signing import (
    SigningKeyError,
    check_public_key,
    confirmation_payload,
    rotation_payload,
    verify_any,
)


def _check_signed(bank: MemberBank, payload: bytes, signature: str, what: str) -> None:
    """An act that binds the bank must be signed with its current key."""
    if not verify_any([bank.public_key], payload, signature):
        raise BadSignature(
            f"{what} is not signed with {bank.bank_id}'s current key", bank_id=bank.bank_id
        )


def utc_now() -> datetime:
    return datetime.now(UTC)


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
        self._coordinator = Coordinator(
            self, clock=clock, deadline=self.deadline, resend_after=self.resend_after
        )
        self._handle = partial(handle, self._coordinator)
        # What received batches change stays in memory between them (one process, one lock).
        self._live = LiveAggregates(self)

    # The directory.

    def admit_bank(
        self,
        bank_id: str,
        name: str,
        limit_minutes: int,
        token_digest: str = "",
        public_key: str = "",
        nats_key: str = "",
    ) -> BankView:
        try:
            check_bank_id(bank_id)
            if nats_key:
                check_user_nkey(nats_key)
        except (InvalidBankId, InvalidNatsKey) as e:
            raise InvalidRequest(str(e)) from None
        with self._lock:
            if self.find(bank_id_to_uuid(bank_id), MemberBank) is not None:
                raise BankExists(f"bank {bank_id} is already a member", bank_id=bank_id)
            if public_key:
                try:
                    check_public_key(public_key)
                except SigningKeyError as e:
                    raise InvalidRequest(str(e)) from None
            bank = MemberBank.admit(
                bank_id, name, limit_minutes, token_digest, public_key, nats_key
            )
            directory = self._directory()
            directory.list_bank(bank_id)
            uow = UnitOfWork(self, CLEARING)
            uow.add(bank)
            uow.add(directory)
            self._announce_directory(uow, directory)
            self.save(*uow.aggregates)
            return bank_view(bank)

    def suspend_bank(self, bank_id: str) -> BankView:
        return self._change_status(bank_id, MemberBank.suspend)

    def change_bank(
        self, bank_id: str, name: str | None = None, limit_minutes: int | None = None
    ) -> BankView:
        """A bank's new name or limit. A new name is announced to every bank, as admissions
        are; the same values again change nothing and write nothing."""
        with self._lock:
            uow = UnitOfWork(self, CLEARING)
            bank = member_bank(uow.get, bank_id)
            renamed = name is not None and name != bank.name
            if bank.change_terms(name, limit_minutes):
                if renamed:
                    self._announce_directory(uow, uow.add(self._directory()))
                self.save(*uow.aggregates)
            return bank_view(bank)

    def reinstate_bank(self, bank_id: str) -> BankView:
        return self._change_status(bank_id, MemberBank.reinstate)

    def bank_ids(self) -> list[str]:
        """Every admitted bank's id, in order of admission."""
        return list(self._directory().bank_ids)

    def banks(self) -> list[BankView]:
        with self._lock:
            return [bank_view(member_bank(self.find, b)) for b in self._directory().bank_ids]

    def positions(self) -> dict[str, int]:
        return {b.bank_id: b.position_minutes for b in self.banks()}

    def get_transfer(self, transfer_id: str) -> TransferView:
        transfer = self.find(transfer_id_to_uuid(transfer_id), Transfer)
        if transfer is None:
            raise UnknownTransfer(f"no transfer {transfer_id}", transfer_id=transfer_id)
        return transfer_view(transfer)

    def issue_token(self, bank_id: str, token_digest: str) -> None:
        """Give a bank a new clearing-house token (lost, leaked, or never issued)."""
        with self._lock:
            bank = member_bank(self.find, bank_id)
            bank.issue_token(token_digest)
            self.save(bank)

    def keys_of(self, bank_id: str, seq: int) -> list[str]:
        """The keys a member bank's message numbered ``seq`` may be signed with: the key it
        was admitted with, or those it rotated to since (none if it has no key)."""
        with self._lock:
            bank = self._live.get(bank_id_to_uuid(bank_id), MemberBank)
            if bank is None or not bank.public_key:
                return []
            return bank.keys_for(seq)

    def rotate_key(
        self, bank_id: str, public_key: str, previous_key_until_seq: int, signature: str
    ) -> BankView:
        """A bank's new key, registered by a request signed with its current key
        (shared.signing.rotation_payload): its messages numbered after
        ``previous_key_until_seq`` must be signed with the new key."""
        try:
            check_public_key(public_key)
        except SigningKeyError as e:
            raise InvalidRequest(str(e)) from None
        with self._lock:
            bank = member_bank(self.find, bank_id)
            payload = rotation_payload(bank_id, public_key, previous_key_until_seq)
            _check_signed(bank, payload, signature, "the new key")
            bank.rotate_key(public_key, previous_key_until_seq)
            self.save(bank)
            return bank_view(bank)

    def bank_with_token_digest(self, token_digest: str) -> str | None:
        """The bank whose clearing-house token has this SHA-256 digest (hex), if any. Every
        bank is compared, always, so timing says nothing about which matched."""
        found = None
        with self._lock:
            for bank_id in self._directory().bank_ids:
                expected = member_bank(self.find, bank_id).token_digest
                if expected and hmac.compare_digest(expected, token_digest):
                    found = bank_id
        return found

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

    # Settlement.

    def open_settlement(self) -> SettlementView:
        """Close a cycle now: every bank's position from the transfers committed so far, and
        the fewest obligations that settle them. What commits later is the next cycle's."""
        with self._lock:
            uow = UnitOfWork(self, CLEARING)
            cycle = open_cycle(uow, self._directory().bank_ids, self.clock)
            self.save(*uow.aggregates)
            return settlement_view(cycle)

    def confirm_obligation(
        self, settlement_id: int, number: int, bank_id: str, signature: str
    ) -> SettlementView:
        """The creditor bank ``bank_id`` received what obligation ``number`` owes it, as it
        says with a signature by its own key (shared.signing.confirmation_payload), so that
        no administrator or reissued token can say it for the bank. When the last obligation
        is confirmed, the cycle completes and every bank is told."""
        with self._lock:
            # What does not exist is said first (404), then whether the bank signed (403).
            settlement_cycle(self.find, settlement_id).obligation(number)
            payload = confirmation_payload(bank_id, settlement_id, number)
            _check_signed(member_bank(self.find, bank_id), payload, signature, "the confirmation")
            uow = UnitOfWork(self, CLEARING)
            cycle = confirm_receipt(uow, settlement_id, number, bank_id, self.clock)
            self.save(*uow.aggregates)
            return settlement_view(cycle)

    def get_settlement(self, settlement_id: int) -> SettlementView:
        return settlement_view(settlement_cycle(self.find, settlement_id))

    def settlements(self) -> list[SettlementView]:
        book = self.find(SettlementBook.create_id(), SettlementBook)
        count = book.count if book is not None else 0
        return [self.get_settlement(n) for n in range(1, count + 1)]

    # Receiving from banks, and the transfers' deadlines and resends.

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
                results += receive_from(self, source, group, self._handle, self._live)
            return results

    def expire_overdue(self) -> list[str]:
        """Abort every transfer whose payee bank has not answered by its deadline."""
        now = self.clock()
        with self._lock:
            return self._coordinator.expire_overdue(now)

    def stuck_transfers(self) -> list[TransferView]:
        """Decided transfers some bank has still not applied after every re-send."""
        with self._lock:
            found = (self.find(i, Transfer) for i in self._coordinator.stuck())
            return [transfer_view(t) for t in found if t is not None]

    def resend_unacknowledged(self) -> list[str]:
        """Send a decision again to each bank that has not acknowledged it: first after
        ``resend_after``, then twice as long each time, up to a bound; then it is stuck."""
        now = self.clock()
        with self._lock:
            return self._coordinator.resend_unacknowledged(now)

    # Plumbing.

    def _announce_directory(self, uow: UnitOfWork, directory: Directory) -> None:
        entries = []
        for bank_id in directory.bank_ids:
            bank = member_bank(uow.get, bank_id)
            entries.append(BankEntry(bank_id=bank_id, name=bank.name, status=bank.status))
        for bank_id in directory.bank_ids:
            uow.send(bank_id, DirectoryChanged(banks=entries), sender=CLEARING)

    def _change_status(self, bank_id: str, change: Callable[[MemberBank], None]) -> BankView:
        with self._lock:
            uow = UnitOfWork(self, CLEARING)
            bank = member_bank(uow.get, bank_id)
            change(bank)
            self._announce_directory(uow, uow.add(self._directory()))
            self.save(*uow.aggregates)
            return bank_view(bank)

    def _directory(self) -> Directory:
        return self.find(Directory.create_id(), Directory) or Directory()
