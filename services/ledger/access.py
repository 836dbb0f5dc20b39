"""Invitations, passphrases and logins at a bank, and a coordinator's acts for a member.

A coordinator invites a member (or the operator a coordinator): the invitation code, shown
once, is handed over on paper or read out on the phone; only its digest is kept. The member
sets a passphrase with it (argon2id, hashed here, outside the ledger's writer) and logs in. A
failed login says only that it failed, costs the same time whether or not the login exists, and
counts against the login and the address it came from (services/common/sessions.py)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from eventsourcing.domain import Aggregate

from services.common.sessions import (
    LoginFailed,
    LoginThrottle,
    OpenedSession,
    Principal,
    Sessions,
)
from services.ledger.acts_index import ActFor, ActsIndex
from services.ledger.application import Ledger
from services.ledger.domain import Account
from services.ledger.domain_access import (
    InvitationRefused,
    Login,
    LoginExists,
    LoginRole,
    LoginStatus,
    login_id,
)
from services.ledger.domain_terms import InvalidRequest, MemberStatus, UnknownMember, account_id
from services.ledger.writer import Command

T = TypeVar("T")

INVITATION_LIFETIME = timedelta(days=14)
# Read out or copied from paper: no 0/O, 1/I/L; 12 characters of 31 (about 59 bits), tried
# only through the throttled routes.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_GROUPS = 3
MIN_PASSPHRASE = 10
MAX_PASSPHRASE = 256

_hasher = PasswordHasher()


@dataclass(frozen=True)
class Invitation:
    login: str
    role: str
    code: str
    expires_at: datetime


@dataclass(frozen=True)
class Act:
    """One thing a coordinator did for a member."""

    at: datetime
    member_id: str
    action: str
    reference: str


def new_code() -> str:
    groups = ("".join(secrets.choice(CODE_ALPHABET) for _ in range(4)) for _ in range(CODE_GROUPS))
    return "-".join(groups)


def code_digest(code: str) -> str:
    """The stored form of a code, read as typed: any case, spaces and dashes ignored."""
    normal = "".join(c for c in code.upper() if c.isalnum())
    return hashlib.sha256(normal.encode()).hexdigest()


def check_passphrase(login: str, passphrase: str) -> None:
    if not MIN_PASSPHRASE <= len(passphrase) <= MAX_PASSPHRASE:
        raise InvalidRequest(
            f"a passphrase must be {MIN_PASSPHRASE}-{MAX_PASSPHRASE} characters "
            "(three or four words you will remember are a good one)"
        )
    if passphrase.strip().lower() == login.lower():
        raise InvalidRequest("a passphrase must not be the login itself")


def _invite(
    ledger: Ledger, login: str, role: str, name: str, by: Principal
) -> tuple[list[Aggregate], Invitation]:
    """Inside a command: a new login, or a new code for an existing one of the same role."""
    code = new_code()
    expires_at = datetime.now(UTC) + INVITATION_LIFETIME
    existing = ledger.find(login_id(login), Login)
    if existing is not None and (existing.role != role or existing.login != login):
        raise LoginExists(f"{login} is already a {existing.role}'s login", login=login)
    if existing is None:
        existing = Login.invite(login, role, name, code_digest(code), expires_at, by.login)
    else:
        existing.reinvite(code_digest(code), expires_at, by.login)
    return [existing], Invitation(login, role, code, expires_at)


def invite_member(ledger: Ledger, member_id: str, by: Principal) -> Invitation:
    """An invitation for a member to log in (a new code if it had one: the old one, and any
    passphrase, stop working)."""

    def command() -> tuple[Sequence[Aggregate], Invitation]:
        account = ledger.find(account_id(member_id), Account)
        if account is None or account.is_system:
            raise UnknownMember(f"no member {member_id} in bank {ledger.bank_id}")
        if account.status == MemberStatus.CLOSED:
            raise InvalidRequest(f"{member_id} is closed: it cannot be invited")
        changed, invitation = _invite(ledger, member_id, LoginRole.MEMBER, account.name, by)
        changed += acts_for(ledger, by, member_id, "invited", "")
        return changed, invitation

    return ledger.run(command, None, Invitation).value


def invite_coordinator(ledger: Ledger, coordinator: str, name: str, by: Principal) -> Invitation:
    def command() -> tuple[Sequence[Aggregate], Invitation]:
        if ledger.find(account_id(coordinator), Account) is not None:
            raise LoginExists(f"{coordinator} is a member's id", login=coordinator)
        return _invite(ledger, coordinator, LoginRole.COORDINATOR, name, by)

    return ledger.run(command, None, Invitation).value


def accept_invitation(ledger: Ledger, login: str, code: str, passphrase: str) -> Principal:
    """Set the login's passphrase with its invitation code; the code then stops working."""
    check_passphrase(login, passphrase)
    hashed = _hasher.hash(passphrase)  # slow on purpose: before the writer, not inside it
    digest = code_digest(code)

    def command() -> tuple[Sequence[Aggregate], Principal]:
        found = ledger.find(login_id(login), Login)
        if found is None:
            raise InvitationRefused("this invitation code is not valid: ask for a new one")
        found.check_invitation(digest, datetime.now(UTC))
        found.set_passphrase(hashed)
        return [found], Principal(role=found.role, login=found.login, name=found.name)

    return ledger.run(command, None, Principal).value


@cache
def _decoy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def authenticate(ledger: Ledger, login: str, passphrase: str) -> Principal | None:
    """Who this is, if the passphrase is the login's; the same work either way."""
    found = ledger.find(login_id(login), Login) if login else None
    stored = found.passphrase_hash if found is not None else None
    try:
        _hasher.verify(stored or _decoy_hash(), passphrase)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if found is None or stored is None or found.status != LoginStatus.ACTIVE:
        return None
    if found.role == LoginRole.MEMBER:
        account = ledger.find(account_id(found.login), Account)
        if account is None or account.status == MemberStatus.CLOSED:
            return None
    return Principal(role=found.role, login=found.login, name=found.name)


def log_in(
    ledger: Ledger,
    sessions: Sessions,
    throttle: LoginThrottle,
    credentials: tuple[str, str],
    address: str,
) -> tuple[OpenedSession, Principal]:
    """A session for the login, if its passphrase is right and it has not failed too often
    (LoginThrottled); LoginFailed, counted, if not."""
    login, passphrase = credentials

    def check() -> Principal:
        principal = authenticate(ledger, login, passphrase)
        if principal is None:
            raise LoginFailed("the login or the passphrase is not right")
        return principal

    principal = throttle.attempt((login, address), check)
    return sessions.open(principal), principal


def take_invitation(
    ledger: Ledger,
    sessions: Sessions,
    throttle: LoginThrottle,
    acceptance: tuple[str, str, str],
    address: str,
) -> tuple[OpenedSession, Principal]:
    """Set the login's passphrase with its code (a wrong code counts as a failed login) and
    open its one session: any it had end."""
    login, code, passphrase = acceptance
    who = throttle.attempt(
        (login, address),
        lambda: accept_invitation(ledger, login, code, passphrase),
        failures=(InvitationRefused,),
    )
    sessions.close_all_of(who.login)
    return sessions.open(who), who


def login_role(ledger: Ledger, login: str) -> str | None:
    found = ledger.find(login_id(login), Login)
    return found.role if found is not None else None


def revoke(ledger: Ledger, sessions: Sessions, login: str, by: Principal) -> None:
    """End a login for good (until invited again), and every session it has open."""

    def command() -> tuple[Sequence[Aggregate], None]:
        found = ledger.find(login_id(login), Login)
        if found is None:
            raise UnknownMember(f"no login {login} at bank {ledger.bank_id}")
        found.revoke(by.login)
        return [found], None

    ledger.run(command, None, type(None))
    sessions.close_all_of(login)


def acts_for(
    ledger: Ledger, caller: Principal | None, member_id: str, action: str, reference: str
) -> list[Aggregate]:
    """Inside a command: the coordinator's login, with the act recorded, to save with it
    (nothing when the caller is no coordinator)."""
    if caller is None or caller.role != LoginRole.COORDINATOR:
        return []
    coordinator = ledger.find(login_id(caller.login), Login)
    if coordinator is None or coordinator.status != LoginStatus.ACTIVE:
        raise InvalidRequest(f"{caller.login} is no longer a coordinator here")
    coordinator.acted_for(member_id, action, reference)
    return [coordinator]


def acting(
    ledger: Ledger,
    command: Command[T],
    caller: Principal,
    member_id: str,
    action: str,
    reference: Callable[[T], str],
) -> Command[T]:
    """``command``, recorded (when a coordinator runs it) as done by that coordinator for the
    member, in the same save: no act without its record, no record without its act."""

    def recorded() -> tuple[Sequence[Aggregate], T]:
        changed, value = command()
        extra = acts_for(ledger, caller, member_id, action, reference(value))
        return [*changed, *extra], value

    return recorded


def acts_of(ledger: Ledger, coordinator: str) -> list[Act]:
    """What a coordinator did for members, oldest first."""
    found = ledger.find(login_id(coordinator), Login)
    if found is None or found.role != LoginRole.COORDINATOR:
        raise UnknownMember(f"no coordinator {coordinator} at bank {ledger.bank_id}")
    return [
        Act(e.timestamp, e.member_id, e.action, e.reference)
        for e in ledger.events.get(found.id)
        if isinstance(e, Login.ActedFor)
    ]


def acts_for_member(ledger: Ledger, member_id: str) -> list[ActFor]:
    """What coordinators did for a member, oldest first, each with who did it."""
    ledger.get_member(member_id)  # UnknownMember if there is none
    return ledger.read_model(ActsIndex).for_member(ledger.follow_events, member_id)


def recorded_by(ledger: Ledger, references: list[str]) -> dict[str, str]:
    """Which of these exchanges and transfers a coordinator recorded, and who."""
    return ledger.read_model(ActsIndex).recorded_by(ledger.follow_events, references)
