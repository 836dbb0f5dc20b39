"""The ledger's vocabulary: member kinds, system accounts, statuses and roles, limits, the ids
of its aggregates, and the errors its rules raise."""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

# A bank's defaults: how far below zero a member may go, and the largest single exchange.
DEFAULT_OVERDRAFT_MINUTES = 10 * 60
DEFAULT_MAX_EXCHANGE_MINUTES = 100 * 60


class MemberStatus(StrEnum):
    ACTIVE = "active"
    # Neither pays nor is paid until reinstated (a coordinator's pause).
    SUSPENDED = "suspended"
    # For good: its balance stays, and is reported.
    CLOSED = "closed"


class MemberKind(StrEnum):
    PERSON = "person"
    ORGANISATION = "organisation"
    SYSTEM = "system"  # the bank's own accounts


MEMBER_KINDS = (MemberKind.PERSON, MemberKind.ORGANISATION)
# The bank's side of the clearing house, and where settled amounts land.
FEDERATION_ACCOUNT = "federation"
SETTLEMENT_ACCOUNT = "settlement"
SYSTEM_ACCOUNTS = (FEDERATION_ACCOUNT, SETTLEMENT_ACCOUNT)


class EntryKind(StrEnum):
    """What a posted entry records, as its statement shows it."""

    EXCHANGE = "exchange"  # a local exchange between two members
    TRANSFER = "transfer"  # a cross-bank transfer
    SETTLEMENT = "settlement"  # a completed settlement cycle


MEMBER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_NAME_LENGTH = 200
MAX_MEMO_LENGTH = 500

_ACCOUNT_NAMESPACE = uuid5(NAMESPACE_URL, "urn:timebank-federation:account")


class LedgerError(Exception):
    """A rule of the ledger refused a command; nothing was written."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class MemberInactive(LedgerError):
    """The member is suspended or closed: it can neither pay nor be paid."""


class HoldsOpen(LedgerError):
    """The account has minutes on hold (a transfer in flight): it cannot be closed yet."""


class MemberClosed(LedgerError):
    """The member is closed: nothing about its account changes any more."""


class UnknownMember(LedgerError):
    """No account with that member id in this bank."""


class MemberExists(LedgerError):
    """An account with that member id is already open in this bank."""


class UnknownBank(LedgerError):
    """The federation's directory, as last announced, has no such bank."""


class UnknownTransfer(LedgerError):
    """No cross-bank transfer with that id at this bank."""


class InvalidRequest(LedgerError):
    """The command's values break a rule that does not depend on any state."""


class OverdraftLimitExceeded(LedgerError):
    """The payer's available balance would fall below minus its overdraft limit."""


class UnknownHold(LedgerError):
    """No open hold with that id on the account (never placed, or already ended)."""


class HoldExists(LedgerError):
    """A hold with that id is already open on the account."""


@lru_cache(maxsize=100_000)
def account_id(member_id: str) -> UUID:
    """The aggregate id of a member's (or system) account: stable, derived from the id."""
    return uuid5(_ACCOUNT_NAMESPACE, member_id)


def check_amount(minutes: object, maximum: int | None = None) -> int:
    """Return minutes if it is a whole positive number of minutes within the maximum."""
    if not isinstance(minutes, int) or isinstance(minutes, bool):
        raise InvalidRequest("minutes must be a whole number of minutes")
    if minutes <= 0:
        raise InvalidRequest("minutes must be greater than zero")
    if maximum is not None and minutes > maximum:
        raise InvalidRequest(
            f"minutes must not exceed {maximum} for one exchange", maximum_minutes=maximum
        )
    return minutes


def check_memo(memo: str) -> str:
    if len(memo) > MAX_MEMO_LENGTH:
        raise InvalidRequest(f"memo must be at most {MAX_MEMO_LENGTH} characters")
    return memo


class TransferDecided(LedgerError):
    """The clearing house's decision for this transfer is already applied here."""


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


@lru_cache(maxsize=4_096)
def transfer_id_to_uuid(transfer_id: str) -> UUID:
    return uuid5(_TRANSFER_NAMESPACE, transfer_id)


_POLICY_ID = uuid5(NAMESPACE_URL, "urn:timebank-federation:bank-policy")


def policy_id() -> UUID:
    """The id of the bank's one policy."""
    return _POLICY_ID


def directory_id() -> UUID:
    """The id of the bank's one copy of the federation's directory."""
    return _DIRECTORY_ID
