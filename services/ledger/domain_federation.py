"""This bank's side of the federation: its part in each cross-bank transfer, and the
directory of member banks as the clearing house last announced it."""

from __future__ import annotations

from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from services.ledger.domain import (
    FEDERATION_ACCOUNT,
    LedgerError,
)


class TransferStatus(StrEnum):
    """A cross-bank transfer at this bank: held, then committed or aborted by the clearing."""

    PENDING = "pending"
    COMMITTED = "committed"
    ABORTED = "aborted"


class Role(StrEnum):
    """This bank's part in a cross-bank transfer."""

    PAYER = "payer"
    PAYEE = "payee"


_TRANSFER_NAMESPACE = uuid5(NAMESPACE_URL, "urn:timebank-federation:bank-transfer")
_DIRECTORY_ID = uuid5(NAMESPACE_URL, "urn:timebank-federation:bank-directory")


class TransferDecided(LedgerError):
    """The clearing house's decision for this transfer is already applied here."""


def transfer_id_to_uuid(transfer_id: str) -> UUID:
    return uuid5(_TRANSFER_NAMESPACE, transfer_id)


class CrossBankTransfer(Aggregate):
    """This bank's side of one cross-bank transfer: as the payer's bank or the payee's.

    It is keyed by the transfer id, so the same transfer can never hold minutes twice here,
    and it changes only on the clearing house's decision, once.
    """

    @staticmethod
    def create_id(transfer_id: str, **_: Any) -> UUID:
        return transfer_id_to_uuid(transfer_id)

    class Started(Aggregate.Created):
        transfer_id: str
        role: str
        member_id: str
        other_bank: str
        other_member: str
        minutes: int
        memo: str

    @event(Started)
    def __init__(
        self,
        transfer_id: str,
        role: str,
        member_id: str,
        other_bank: str,
        other_member: str,
        minutes: int,
        memo: str,
    ) -> None:
        self.transfer_id = transfer_id
        self.role = role
        self.member_id = member_id
        self.other_bank = other_bank
        self.other_member = other_member
        self.minutes = minutes
        self.memo = memo
        self.status = TransferStatus.PENDING
        self.reason: str | None = None

    @property
    def party(self) -> str:
        return f"{self.other_bank}/{self.other_member}"

    @property
    def held_on(self) -> str:
        """The account whose hold carries this transfer until the decision."""
        return self.member_id if self.role == Role.PAYER else FEDERATION_ACCOUNT

    def _check_pending(self) -> None:
        if self.status != TransferStatus.PENDING:
            raise TransferDecided(f"transfer {self.transfer_id} is already {self.status}")

    class Committed(Aggregate.Event):
        pass

    def commit(self) -> None:
        self._check_pending()
        self._committed()

    @event(Committed)
    def _committed(self) -> None:
        self.status = TransferStatus.COMMITTED

    class Aborted(Aggregate.Event):
        reason: str

    def abort(self, reason: str) -> None:
        self._check_pending()
        self._aborted(reason=reason)

    @event(Aborted)
    def _aborted(self, reason: str) -> None:
        self.status = TransferStatus.ABORTED
        self.reason = reason


class BankDirectory(Aggregate):
    """The federation's member banks as the clearing house last announced them."""

    @staticmethod
    def create_id(**_: Any) -> UUID:
        return _DIRECTORY_ID

    class Opened(Aggregate.Created):
        pass

    @event(Opened)
    def __init__(self) -> None:
        self.banks: dict[str, dict[str, str]] = {}

    class Replaced(Aggregate.Event):
        banks: list[dict[str, str]]

    def replace(self, banks: list[dict[str, str]]) -> None:
        self._replaced(banks=banks)

    @event(Replaced)
    def _replaced(self, banks: list[dict[str, str]]) -> None:
        self.banks = {b["bank_id"]: b for b in banks}
