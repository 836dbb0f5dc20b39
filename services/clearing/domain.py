"""The clearing house's books: member banks (limit, position, reservations), transfers, the
directory, and the banks' signed checkpoints.

The aggregates stay in this module: its path is part of every stored event's topic."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from services.clearing.domain_terms import (
    BankStatus,
    CheckpointConflict,
    InvalidRequest,
    ProtocolViolation,
    Refusal,
    ReservationRefused,
    SettlementBlocked,
    TransferDecided,
    TransferPhase,
    bank_id_to_uuid,
    checkpoint_log_id,
    directory_id,
    transfer_id_to_uuid,
)


class MemberBank(Aggregate):
    """A bank in the federation.

    ``position_minutes`` is what the federation owes the bank (negative: what the bank owes).
    Its net debit position after every reserved transfer commits, ``reserved - position``,
    may never exceed ``limit_minutes``.
    """

    @staticmethod
    def create_id(bank_id: str, **_: Any) -> UUID:
        return bank_id_to_uuid(bank_id)

    @classmethod
    def admit(
        cls,
        bank_id: str,
        name: str,
        limit_minutes: int,
        token_digest: str = "",
        public_key: str = "",
        nats_key: str = "",
    ) -> MemberBank:
        if not name.strip() or len(name) > 200:
            raise InvalidRequest("name must be 1-200 characters")
        if isinstance(limit_minutes, bool) or not isinstance(limit_minutes, int):
            raise InvalidRequest("limit_minutes must be a whole number of minutes")
        if limit_minutes < 0:
            raise InvalidRequest("limit_minutes must be >= 0")
        return cls(
            bank_id=bank_id,
            name=name,
            limit_minutes=limit_minutes,
            token_digest=token_digest,
            public_key=public_key,
            nats_key=nats_key,
        )

    class Admitted(Aggregate.Created):
        bank_id: str
        name: str
        limit_minutes: int
        # SHA-256 (hex) of the token the bank uses at the clearing house's API (to confirm
        # settlement receipts); the token itself is shown once, at admission.
        token_digest: str = ""
        # The bank's Ed25519 public key (base64), for its signed log checkpoints.
        public_key: str = ""
        # The bank's NATS user (its public nkey): the server's config gives it the bank's
        # permissions. Empty: its NATS user is set up by other means.
        nats_key: str = ""

    @event(Admitted)
    def __init__(
        self,
        bank_id: str,
        name: str,
        limit_minutes: int,
        token_digest: str = "",
        public_key: str = "",
        nats_key: str = "",
    ) -> None:
        self.bank_id = bank_id
        self.name = name
        self.limit_minutes = limit_minutes
        self.token_digest = token_digest
        self.public_key = public_key
        self.nats_key = nats_key
        # Keys the bank signed with before its current one: [key, the last sequence number of
        # its messages to the clearing house that key signed], oldest first.
        self.retired_keys: list[list[Any]] = []
        self.status = BankStatus.ACTIVE
        self.position_minutes = 0
        self.reserved_minutes = 0
        # Credit an open settlement cycle will pay this bank outside the system: it leaves
        # the position when the cycle completes, so it cannot be spent inside meanwhile.
        self.settling_minutes = 0
        self.reservations: dict[str, int] = {}

    @property
    def net_debit_after_reservations(self) -> int:
        return self.reserved_minutes + self.settling_minutes - self.position_minutes

    class TokenIssued(Aggregate.Event):
        token_digest: str

    def issue_token(self, token_digest: str) -> None:
        """A new clearing-house token for the bank (the old one stops working)."""
        self._token_issued(token_digest=token_digest)

    @event(TokenIssued)
    def _token_issued(self, token_digest: str) -> None:
        self.token_digest = token_digest

    class KeyRotated(Aggregate.Event):
        public_key: str
        previous_key: str
        previous_key_until_seq: int

    def rotate_key(self, public_key: str, previous_key_until_seq: int) -> None:
        """The bank signs with ``public_key`` from now on; its messages numbered up to
        ``previous_key_until_seq`` were signed with the key it had until now."""
        if not self.public_key:
            raise InvalidRequest(f"bank {self.bank_id} has no key to rotate")
        if public_key == self.public_key:
            raise InvalidRequest("the new key is the key the bank has now")
        last = self.retired_keys[-1][1] if self.retired_keys else 0
        if previous_key_until_seq < last:
            raise InvalidRequest(
                f"the previous key's last message cannot come before {last}, where the key "
                "before it ended"
            )
        self._key_rotated(
            public_key=public_key,
            previous_key=self.public_key,
            previous_key_until_seq=previous_key_until_seq,
        )

    @event(KeyRotated)
    def _key_rotated(self, public_key: str, previous_key: str, previous_key_until_seq: int) -> None:
        self.retired_keys.append([previous_key, previous_key_until_seq])
        self.public_key = public_key

    def keys_for(self, seq: int) -> list[str]:
        """The keys that may sign the bank's message numbered ``seq``: the one it held then
        and any it rotated to since (a message queued before a rotation but published after
        it is signed with the newer key); only the current key past the last rotation."""
        for n, (_key, until) in enumerate(self.retired_keys):
            if seq <= until:
                return [str(key) for key, _ in self.retired_keys[n:]] + [self.public_key]
        return [self.public_key]

    @property
    def keys_held(self) -> list[str]:
        """Every key the bank has signed with, oldest first."""
        return [str(key) for key, _ in self.retired_keys] + [self.public_key]

    class TermsChanged(Aggregate.Event):
        name: str
        limit_minutes: int

    def change_terms(self, name: str | None = None, limit_minutes: int | None = None) -> bool:
        """A new name or limit (None: keep it); whether anything changed. A lower limit
        refuses new transfers that would pass it; those already reserved stand."""
        new_name = self.name if name is None else name
        new_limit = self.limit_minutes if limit_minutes is None else limit_minutes
        if not new_name.strip() or len(new_name) > 200:
            raise InvalidRequest("name must be 1-200 characters")
        if isinstance(new_limit, bool) or not isinstance(new_limit, int) or new_limit < 0:
            raise InvalidRequest("limit_minutes must be a whole number of minutes, >= 0")
        if (new_name, new_limit) == (self.name, self.limit_minutes):
            return False
        self._terms_changed(name=new_name, limit_minutes=new_limit)
        return True

    @event(TermsChanged)
    def _terms_changed(self, name: str, limit_minutes: int) -> None:
        self.name = name
        self.limit_minutes = limit_minutes

    class Suspended(Aggregate.Event):
        pass

    def suspend(self) -> None:
        if self.status != BankStatus.SUSPENDED:
            self._suspended()

    @event(Suspended)
    def _suspended(self) -> None:
        self.status = BankStatus.SUSPENDED

    class Reinstated(Aggregate.Event):
        pass

    def reinstate(self) -> None:
        if self.status != BankStatus.ACTIVE:
            self._reinstated()

    @event(Reinstated)
    def _reinstated(self) -> None:
        self.status = BankStatus.ACTIVE

    class Reserved(Aggregate.Event):
        transfer_id: str
        minutes: int

    def would_exceed_limit(self, minutes: int) -> bool:
        """Whether ``minutes`` more owed would take the bank past its limit."""
        return self.net_debit_after_reservations + minutes > self.limit_minutes

    def reservation_refusal(self, minutes: int) -> Refusal | None:
        """Why this bank may not reserve ``minutes`` for a transfer it pays, if it may not."""
        if self.status != BankStatus.ACTIVE:
            return Refusal("bank_suspended", f"bank {self.bank_id} is suspended")
        if self.would_exceed_limit(minutes):
            return Refusal(
                "bank_limit_exceeded",
                f"bank {self.bank_id} would owe more than its limit of "
                f"{self.limit_minutes} minutes",
                {
                    "position_minutes": self.position_minutes,
                    "reserved_minutes": self.reserved_minutes,
                    "limit_minutes": self.limit_minutes,
                },
            )
        return None

    def reserve(self, transfer_id: str, minutes: int) -> None:
        refusal = self.reservation_refusal(minutes)
        if refusal is not None:
            raise ReservationRefused(refusal.reason, refusal.detail, **refusal.extra)
        if transfer_id in self.reservations:
            raise ProtocolViolation(f"transfer {transfer_id} is already reserved")
        self._reserved(transfer_id=transfer_id, minutes=minutes)

    @event(Reserved)
    def _reserved(self, transfer_id: str, minutes: int) -> None:
        self.reservations[transfer_id] = minutes
        self.reserved_minutes += minutes

    class Released(Aggregate.Event):
        transfer_id: str
        minutes: int

    def release(self, transfer_id: str) -> None:
        """An aborted transfer gives its reservation back."""
        self._released(transfer_id=transfer_id, minutes=self._reservation(transfer_id))

    @event(Released)
    def _released(self, transfer_id: str, minutes: int) -> None:
        del self.reservations[transfer_id]
        self.reserved_minutes -= minutes

    class Debited(Aggregate.Event):
        transfer_id: str
        minutes: int

    def debit(self, transfer_id: str) -> None:
        """A committed transfer turns the payer bank's reservation into position."""
        self._debited(transfer_id=transfer_id, minutes=self._reservation(transfer_id))

    @event(Debited)
    def _debited(self, transfer_id: str, minutes: int) -> None:
        del self.reservations[transfer_id]
        self.reserved_minutes -= minutes
        self.position_minutes -= minutes

    class Credited(Aggregate.Event):
        transfer_id: str
        minutes: int

    def credit(self, transfer_id: str, minutes: int) -> None:
        """A committed transfer adds to the payee bank's position."""
        self._credited(transfer_id=transfer_id, minutes=minutes)

    @event(Credited)
    def _credited(self, transfer_id: str, minutes: int) -> None:
        self.position_minutes += minutes

    class SettlementExpected(Aggregate.Event):
        settlement_id: int
        minutes: int

    def expect_settlement(self, settlement_id: int, minutes: int) -> None:
        """An open cycle will pay this creditor bank ``minutes`` outside the system: from now
        on that credit counts as gone for its limit. Refused if transfers already reserved
        would then take it past its limit."""
        if self.would_exceed_limit(minutes):
            raise SettlementBlocked(
                f"bank {self.bank_id} has {self.reserved_minutes} minutes reserved for "
                "transfers not yet decided; once its credit is settled they could take it past "
                f"its limit of {self.limit_minutes}. Open the cycle when they are decided.",
                bank_id=self.bank_id,
                reserved_minutes=self.reserved_minutes,
            )
        self._settlement_expected(settlement_id=settlement_id, minutes=minutes)

    @event(SettlementExpected)
    def _settlement_expected(self, settlement_id: int, minutes: int) -> None:
        self.settling_minutes += minutes

    class Settled(Aggregate.Event):
        settlement_id: int
        minutes: int

    def settle(self, settlement_id: int, minutes: int) -> None:
        """A completed settlement cycle: the bank paid (``minutes`` > 0) or was paid (< 0)
        outside the system, so its position moves by that much towards zero."""
        if minutes:
            self._settled(settlement_id=settlement_id, minutes=minutes)

    @event(Settled)
    def _settled(self, settlement_id: int, minutes: int) -> None:
        self.position_minutes += minutes
        if minutes < 0:  # the credit it expected is paid: no longer held back
            self.settling_minutes += minutes

    def _reservation(self, transfer_id: str) -> int:
        try:
            return self.reservations[transfer_id]
        except KeyError:
            raise ProtocolViolation(
                f"no reservation for transfer {transfer_id} at bank {self.bank_id}"
            ) from None


class Transfer(Aggregate):
    """One cross-bank transfer as the coordinator sees it: requested, then decided once."""

    @staticmethod
    def create_id(transfer_id: str, **_: Any) -> UUID:
        return transfer_id_to_uuid(transfer_id)

    class Requested(Aggregate.Created):
        transfer_id: str
        payer_bank: str
        payer: str
        payee_bank: str
        payee: str
        minutes: int
        memo: str
        deadline: datetime

    @event(Requested)
    def __init__(
        self,
        transfer_id: str,
        payer_bank: str,
        payer: str,
        payee_bank: str,
        payee: str,
        minutes: int,
        memo: str,
        deadline: datetime,
    ) -> None:
        self.transfer_id = transfer_id
        self.payer_bank = payer_bank
        self.payer = payer
        self.payee_bank = payee_bank
        self.payee = payee
        self.minutes = minutes
        self.memo = memo
        self.deadline = deadline
        self.status = TransferPhase.PREPARING
        self.reason: str | None = None
        self.detail = ""
        self.acknowledged_by: list[str] = []
        self.resends = 0
        # The banks told of the decision: both, unless it was refused before the payee's
        # bank was ever asked.
        self.informed: list[str] = []

    @property
    def parties(self) -> tuple[str, str]:
        return (self.payer_bank, self.payee_bank)

    @property
    def is_decided(self) -> bool:
        return self.status != TransferPhase.PREPARING

    @property
    def awaiting_acknowledgement(self) -> list[str]:
        return [b for b in self.informed if b not in self.acknowledged_by]

    def _check_undecided(self) -> None:
        if self.is_decided:
            raise TransferDecided(f"transfer {self.transfer_id} is already {self.status}")

    class Committed(Aggregate.Event):
        # When the coordinator decided, by its own clock (which also sets deadlines).
        decided_at: datetime | None = None

    def commit(self, at: datetime | None = None) -> None:
        self._check_undecided()
        self._committed(decided_at=at)

    @event(Committed)
    def _committed(self, decided_at: datetime | None) -> None:
        self.status = TransferPhase.COMMITTED
        self.informed = list(self.parties)

    class Aborted(Aggregate.Event):
        reason: str
        detail: str
        informed: list[str]
        decided_at: datetime | None = None

    def abort(
        self,
        reason: str,
        detail: str = "",
        *,
        payee_bank_asked: bool = True,
        at: datetime | None = None,
    ) -> None:
        self._check_undecided()
        informed = list(self.parties) if payee_bank_asked else [self.payer_bank]
        self._aborted(reason=reason, detail=detail, informed=informed, decided_at=at)

    @event(Aborted)
    def _aborted(
        self, reason: str, detail: str, informed: list[str], decided_at: datetime | None
    ) -> None:
        self.status = TransferPhase.ABORTED
        self.reason = reason
        self.detail = detail
        self.informed = informed

    class Acknowledged(Aggregate.Event):
        bank_id: str

    def acknowledge(self, bank_id: str) -> None:
        """A bank applied the decision; acknowledging twice changes nothing."""
        if not self.is_decided:
            raise ProtocolViolation(f"transfer {self.transfer_id} has no decision to acknowledge")
        if bank_id not in self.informed:
            raise ProtocolViolation(f"bank {bank_id} was not told of {self.transfer_id}'s decision")
        if bank_id not in self.acknowledged_by:
            self._acknowledged(bank_id=bank_id)

    @event(Acknowledged)
    def _acknowledged(self, bank_id: str) -> None:
        self.acknowledged_by.append(bank_id)

    class Resent(Aggregate.Event):
        # The banks told the decision again, when, and how many times it has been re-sent.
        to: list[str]
        at: datetime
        attempt: int

    def resend(self, to: list[str], at: datetime) -> int:
        """The decision is sent again to banks that have not acknowledged it; returns how
        many times it has been re-sent, this one included."""
        if not self.is_decided:
            raise ProtocolViolation(f"transfer {self.transfer_id} has no decision to send")
        self._resent(to=to, at=at, attempt=self.resends + 1)
        return self.resends

    @event(Resent)
    def _resent(self, to: list[str], at: datetime, attempt: int) -> None:
        self.resends = attempt


class Directory(Aggregate):
    """The ids of every admitted bank, in order of admission (there is one directory)."""

    @staticmethod
    def create_id(**_: Any) -> UUID:
        return directory_id()

    class Opened(Aggregate.Created):
        pass

    @event(Opened)
    def __init__(self) -> None:
        self.bank_ids: list[str] = []

    class Listed(Aggregate.Event):
        bank_id: str

    def list_bank(self, bank_id: str) -> None:
        if bank_id in self.bank_ids:
            raise InvalidRequest(f"bank {bank_id} is already in the directory")
        self._listed(bank_id=bank_id)

    @event(Listed)
    def _listed(self, bank_id: str) -> None:
        self.bank_ids.append(bank_id)


class CheckpointLog(Aggregate):
    """The signed checkpoints of one bank's hash chain, in log order (one log per bank)."""

    @staticmethod
    def create_id(bank_id: str, **_: Any) -> UUID:
        return checkpoint_log_id(bank_id)

    class Started(Aggregate.Created):
        bank_id: str

    @event(Started)
    def __init__(self, bank_id: str) -> None:
        self.bank_id = bank_id
        self.last_position = 0
        self.last_hash = ""

    class Recorded(Aggregate.Event):
        position: int
        chain_hash: str
        signature: str

    def record(self, position: int, chain_hash: str, signature: str) -> bool:
        """Keep a checkpoint (its signature already verified). One at or before the last is
        a repeat (ignored, False) unless it contradicts the last one, which is refused."""
        if position == self.last_position and chain_hash != self.last_hash:
            raise CheckpointConflict(
                f"bank {self.bank_id} signed two hashes for position {position}",
                bank_id=self.bank_id,
            )
        if position <= self.last_position:
            return False
        self._recorded(position=position, chain_hash=chain_hash, signature=signature)
        return True

    @event(Recorded)
    def _recorded(self, position: int, chain_hash: str, signature: str) -> None:
        self.last_position = position
        self.last_hash = chain_hash
