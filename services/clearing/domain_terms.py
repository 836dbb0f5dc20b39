"""The clearing house's vocabulary: statuses, timings, the ids of its aggregates, and the errors
its rules raise."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

# How long the payee's bank has to answer, and how long a decision waits for acknowledgement
# before it is sent again.
DEFAULT_DEADLINE_SECONDS = 30.0
DEFAULT_RESEND_SECONDS = 10.0


class BankStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class TransferPhase(StrEnum):
    """Where a cross-bank transfer stands at the clearing house (its coordinator)."""

    PREPARING = "preparing"
    COMMITTED = "committed"
    ABORTED = "aborted"


class ClearingError(Exception):
    """A rule of the clearing house refused a command; nothing was written."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidRequest(ClearingError):
    """The command's values break a rule."""


class ProtocolViolation(ClearingError):
    """A step of the transfer protocol came when the transfer's state does not allow it."""


class ReservationRefused(ClearingError):
    """The payer's bank may not reserve these minutes; ``reason`` is the abort code."""

    def __init__(self, reason: str, detail: str, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.reason = reason


class SettlementBlocked(ClearingError):
    """A settlement cycle cannot open yet: transfers in flight could break a limit."""


class TransferDecided(ClearingError):
    """The transfer already has its decision; it cannot change."""


class CheckpointConflict(ClearingError):
    """A bank signed two different hashes for one position of its log: a fork or a rewrite."""


class BadSignature(ClearingError):
    """An act that binds a bank is not signed with the key the bank was admitted with."""


class UnknownBank(ClearingError):
    pass


class BankExists(ClearingError):
    pass


class UnknownTransfer(ClearingError):
    pass


@dataclass(frozen=True)
class Refusal:
    """Why a transfer is aborted before the payee's bank is asked: ``reason`` is the abort
    code banks are told, ``extra`` the figures behind it."""

    reason: str
    detail: str
    extra: Mapping[str, int] = field(default_factory=dict)


_BANK_NAMESPACE = uuid5(NAMESPACE_URL, "urn:timebank-federation:clearing:bank")
_TRANSFER_NAMESPACE = uuid5(NAMESPACE_URL, "urn:timebank-federation:clearing:transfer")


# Looked up for nearly every message (its sender's record) and every transfer (twice).
@lru_cache(maxsize=4_096)
def bank_id_to_uuid(bank_id: str) -> UUID:
    return uuid5(_BANK_NAMESPACE, bank_id)


@lru_cache(maxsize=4_096)
def transfer_id_to_uuid(transfer_id: str) -> UUID:
    return uuid5(_TRANSFER_NAMESPACE, transfer_id)


def directory_id() -> UUID:
    """The id of the federation's one directory."""
    return uuid5(_BANK_NAMESPACE, "directory")


def checkpoint_log_id(bank_id: str) -> UUID:
    return uuid5(_BANK_NAMESPACE, f"checkpoints:{bank_id}")
