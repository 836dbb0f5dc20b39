"""A cross-bank transfer as its coordinator, the clearing house, sees it: requested, then
decided once, then acknowledged by each bank told of the decision."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from services.clearing.domain_base import ProtocolViolation, TransferDecided, TransferPhase

_TRANSFER_NAMESPACE = uuid5(NAMESPACE_URL, "urn:timebank-federation:clearing:transfer")


def transfer_id_to_uuid(transfer_id: str) -> UUID:
    return uuid5(_TRANSFER_NAMESPACE, transfer_id)


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
