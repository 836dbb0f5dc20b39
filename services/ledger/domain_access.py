"""Who may log in at a bank: its coordinators, and members who took up an invitation. A login
holds a digest of its invitation code and, once accepted, an argon2 hash of its passphrase
(hashed before the command runs; the domain only keeps it). A coordinator's login also records
every act done for a member, in the same transaction as the act itself.

The aggregate stays in this module: its path is part of every stored event's topic."""

from __future__ import annotations

import hmac
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from services.ledger.domain_terms import (
    MAX_NAME_LENGTH,
    MEMBER_ID_PATTERN,
    InvalidRequest,
    LedgerError,
)

_LOGIN_NAMESPACE = uuid5(NAMESPACE_URL, "urn:timebank-federation:login")
MAX_ACTION_LENGTH = 64


class LoginRole(StrEnum):
    MEMBER = "member"
    COORDINATOR = "coordinator"


class LoginStatus(StrEnum):
    INVITED = "invited"
    ACTIVE = "active"
    REVOKED = "revoked"


class LoginExists(LedgerError):
    """The login id is taken (by a coordinator, or by a member's login)."""


class InvitationRefused(LedgerError):
    """The invitation code is wrong, used or out of date, or the login was revoked."""


def login_id(login: str) -> UUID:
    """The aggregate id of a login: stable, derived from the login's name."""
    return uuid5(_LOGIN_NAMESPACE, login.lower())


class Login(Aggregate):
    """A person's way in: a member (its login is its member id) or a coordinator."""

    @staticmethod
    def create_id(login: str, **_: Any) -> UUID:
        return login_id(login)

    @classmethod
    def invite(
        cls,
        login: str,
        role: str,
        name: str,
        code_digest: str,
        expires_at: datetime,
        invited_by: str,
    ) -> Login:
        if not MEMBER_ID_PATTERN.fullmatch(login):
            raise InvalidRequest("a login must be 1-64 letters, digits, '.', '_' or '-'")
        if role not in tuple(LoginRole):
            raise InvalidRequest(f"role must be one of {', '.join(LoginRole)}")
        if not name.strip() or len(name) > MAX_NAME_LENGTH:
            raise InvalidRequest(f"name must be 1-{MAX_NAME_LENGTH} characters")
        return cls(
            login=login,
            role=role,
            name=name,
            code_digest=code_digest,
            expires_at=expires_at,
            invited_by=invited_by,
        )

    class Invited(Aggregate.Created):
        login: str
        role: str
        name: str
        code_digest: str
        expires_at: datetime
        invited_by: str

    @event(Invited)
    def __init__(
        self,
        login: str,
        role: str,
        name: str,
        code_digest: str,
        expires_at: datetime,
        invited_by: str,
    ) -> None:
        self.login = login
        self.role = role
        self.name = name
        self.code_digest: str | None = code_digest
        self.expires_at = expires_at
        self.invited_by = invited_by
        self.passphrase_hash: str | None = None
        self.status = LoginStatus.INVITED

    class Reinvited(Aggregate.Event):
        code_digest: str
        expires_at: datetime
        invited_by: str

    def reinvite(self, code_digest: str, expires_at: datetime, invited_by: str) -> None:
        """A new code (the old one, and the passphrase, stop working): for a member who
        forgot theirs, or a revoked login given back."""
        self._reinvited(code_digest=code_digest, expires_at=expires_at, invited_by=invited_by)

    @event(Reinvited)
    def _reinvited(self, code_digest: str, expires_at: datetime, invited_by: str) -> None:
        self.code_digest = code_digest
        self.expires_at = expires_at
        self.invited_by = invited_by
        self.passphrase_hash = None
        self.status = LoginStatus.INVITED

    def check_invitation(self, code_digest: str, now: datetime) -> None:
        """InvitationRefused unless the code is this login's live invitation."""
        expected = self.code_digest or ""
        matches = hmac.compare_digest(expected.encode(), code_digest.encode())
        if not matches or self.status != LoginStatus.INVITED or now >= self.expires_at:
            raise InvitationRefused("this invitation code is not valid: ask for a new one")

    class PassphraseSet(Aggregate.Event):
        passphrase_hash: str

    def set_passphrase(self, passphrase_hash: str) -> None:
        if self.status == LoginStatus.REVOKED:
            raise InvitationRefused("this login was revoked")
        self._passphrase_set(passphrase_hash=passphrase_hash)

    @event(PassphraseSet)
    def _passphrase_set(self, passphrase_hash: str) -> None:
        self.passphrase_hash = passphrase_hash
        self.code_digest = None
        self.status = LoginStatus.ACTIVE

    class Revoked(Aggregate.Event):
        revoked_by: str

    def revoke(self, revoked_by: str) -> None:
        if self.status != LoginStatus.REVOKED:
            self._revoked(revoked_by=revoked_by)

    @event(Revoked)
    def _revoked(self, revoked_by: str) -> None:
        self.passphrase_hash = None
        self.code_digest = None
        self.status = LoginStatus.REVOKED

    class ActedFor(Aggregate.Event):
        member_id: str
        action: str
        reference: str

    def acted_for(self, member_id: str, action: str, reference: str) -> None:
        """Record that this coordinator did ``action`` for the member (``reference``: the
        exchange's or transfer's id)."""
        if self.role != LoginRole.COORDINATOR:
            raise InvalidRequest("only a coordinator acts for a member")
        self._acted_for(member_id=member_id, action=action[:MAX_ACTION_LENGTH], reference=reference)

    @event(ActedFor)
    def _acted_for(self, member_id: str, action: str, reference: str) -> None:
        pass
