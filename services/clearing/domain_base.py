"""What the clearing house's domain modules share: its statuses, its errors and its timings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

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
