"""Bearer tokens with roles, kept only as SHA-256 digests and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.common.problems import Problem
from services.common.sessions import Principal, Sessions

MIN_TOKEN_LENGTH = 16
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]+")
PLACEHOLDER_TOKENS = frozenset({"changeme", "changethis", "secret", "password", "token"})
# What each role may do: read everything, and write (operator, admin). A coordinator (a person
# with a session at a bank, services/ledger/access.py) does what the operator does; a member's
# session opens only the member's own routes (services/ledger/api_self.py).
READ_ROLES = frozenset({"operator", "auditor", "admin", "coordinator"})
WRITE_ROLES = frozenset({"operator", "admin", "coordinator"})


class TokenError(ValueError):
    """A configured token is unusable."""


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def check_token(name: str, token: str) -> str:
    """Refuse tokens that are short, placeholders left in from an example, or that could not
    be sent in an Authorization header as they are (RFC 6750's token characters only)."""
    if not TOKEN_PATTERN.fullmatch(token):
        raise TokenError(
            f"{name} may hold only letters, digits and '-._~+/=' (no spaces or quotes)"
        )
    if token.lower() in PLACEHOLDER_TOKENS or len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(
            f"{name} must be a secret of at least {MIN_TOKEN_LENGTH} characters "
            "(for example: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


AUDITOR_TOKEN_VAR = "TIMEBANK_AUDITOR_TOKEN"  # noqa: S105 (a variable's name, not a secret)


def tokens_from_environ(
    environ: Mapping[str, str], role: str, variable: str, service: str
) -> TokenRegistry:
    """The service's required token for ``role`` from ``variable``, plus the optional
    read-only auditor token; raises TokenError saying what to set."""
    token = environ.get(variable, "")
    if not token:
        raise TokenError(
            f"{variable} is not set: the {service} needs an {role} token "
            f"(for example: export {variable}="
            "$(python -c 'import secrets; print(secrets.token_urlsafe(32))'))"
        )
    tokens = {role: check_token(variable, token)}
    auditor = environ.get(AUDITOR_TOKEN_VAR, "")
    if auditor:
        tokens["auditor"] = check_token(AUDITOR_TOKEN_VAR, auditor)
        if auditor == token:
            raise TokenError(f"{AUDITOR_TOKEN_VAR} must differ from the {role}'s")
    return TokenRegistry.from_tokens(tokens)


@dataclass(frozen=True)
class TokenRegistry:
    """Role -> digest of its token."""

    digests: Mapping[str, bytes]

    @classmethod
    def from_tokens(cls, tokens: Mapping[str, str | None]) -> TokenRegistry:
        return cls({role: digest(token) for role, token in tokens.items() if token})

    def role_of(self, token: str) -> str | None:
        presented = digest(token)
        found = None
        # Compare against every role, always, so timing says nothing about which matched.
        for role, expected in self.digests.items():
            if hmac.compare_digest(presented, expected):
                found = role
        return found


# How the OpenAPI description names the token (so Swagger UI's Authorize button sends it). It
# refuses nothing itself: every guard that takes it checks the token, and answers a problem.
BEARER_SCHEME = HTTPBearer(
    scheme_name="bearer",
    description="A token of this service: at a ledger the operator's or an auditor's, or a "
    "person's session token (POST /v1/sessions); at the clearing house the admin's, an "
    "auditor's, or a member bank's clearing token.",
    auto_error=False,
)
BearerScheme = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER_SCHEME)]


def bearer_token(request: Request) -> str:
    """The request's bearer token, or "" when it has none."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def session_principal(request: Request, token: str) -> Principal | None:
    """The person whose session ``token`` is, at this service, or None."""
    sessions: Sessions | None = getattr(request.app.state, "sessions", None)
    return sessions.principal_of(token) if sessions is not None and token else None


def caller_of(request: Request, registry: TokenRegistry) -> Principal:
    """Who is calling: a service token's role (its login is the role's name), or a person's
    session; 401 for anyone else."""
    token = bearer_token(request)
    role = registry.role_of(token) if token else None
    if role is not None:
        return Principal(role=role, login=role)
    principal = session_principal(request, token)
    if principal is None:
        raise Problem(
            401,
            "unauthorized",
            "a valid bearer token is required",
            headers={"WWW-Authenticate": 'Bearer realm="timebank"'},
        )
    return principal


def principal_guard(
    allowed: frozenset[str], registry_of: Callable[[Request], TokenRegistry]
) -> Callable[[Request, HTTPAuthorizationCredentials | None], Principal]:
    """A FastAPI dependency: who is calling, if their role is one of ``allowed``."""

    def guard(request: Request, _scheme: BearerScheme) -> Principal:
        principal = caller_of(request, registry_of(request))
        if principal.role not in allowed:
            raise Problem(403, "forbidden", f"the {principal.role} role may not do this")
        return principal

    return guard


def role_guard(
    allowed: frozenset[str], registry_of: Callable[[Request], TokenRegistry]
) -> Callable[[Request, HTTPAuthorizationCredentials | None], str]:
    """A FastAPI dependency: the caller's role, if it is one of ``allowed``."""
    check = principal_guard(allowed, registry_of)

    def guard(request: Request, scheme: BearerScheme) -> str:
        return check(request, scheme).role

    return guard
