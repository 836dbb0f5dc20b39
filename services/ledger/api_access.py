"""Logging in at a bank: invitations (a coordinator's for a member, the operator's for a
coordinator), accepting one with a passphrase, sessions (a bearer token for the API, the same
token in an HTTP-only cookie for the dashboard), and what coordinators did for members."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import Field

from services.common.auth import bearer_token
from services.common.deps import WritingCaller, callers
from services.common.problems import FORBIDDEN, Problem
from services.common.sessions import (
    SESSION_COOKIE,
    LoginFailed,
    LoginThrottled,
    OpenedSession,
    Principal,
)
from services.common.ui.session import client_address, set_session_cookie
from services.ledger.access import (
    MAX_PASSPHRASE,
    Act,
    Invitation,
    acts_for_member,
    acts_of,
    invite_coordinator,
    invite_member,
    log_in,
    login_role,
    revoke,
    take_invitation,
)
from services.ledger.acts_index import ActFor
from services.ledger.api import LedgerDep, RequestBody, problems
from services.ledger.domain_access import InvitationRefused, LoginExists, LoginRole
from services.ledger.domain_terms import MAX_NAME_LENGTH, InvalidRequest, UnknownMember

access = APIRouter(tags=["access"])
LOGIN_FAILED = (401, "login_failed")
THROTTLED = (429, "too_many_attempts")
Operator = callers("operator", "admin")
Person = Annotated[Principal, callers("member", "coordinator")]


class Credentials(RequestBody):
    login: str = Field(min_length=1, max_length=64, description="A member id or coordinator id.")
    passphrase: str = Field(min_length=1, max_length=MAX_PASSPHRASE)


class Acceptance(RequestBody):
    login: str = Field(min_length=1, max_length=64)
    code: str = Field(min_length=1, max_length=64, examples=["K7QM-X2PD-9RTA"])
    passphrase: str = Field(min_length=1, max_length=MAX_PASSPHRASE)


class NewCoordinator(RequestBody):
    coordinator_id: str = Field(min_length=1, max_length=64, examples=["sam.coordinator"])
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, examples=["Sam Reid"])


class Session(RequestBody):
    token: str = Field(description="Send as `Authorization: Bearer <token>`.")
    expires_at: datetime
    role: str
    login: str
    name: str


def start_session(
    request: Request, response: Response, opened: OpenedSession, who: Principal
) -> Session:
    """The session's token in the answer (for the API) and in an HTTP-only cookie (for the
    dashboard: no script can read it, and no other site's form sends it)."""
    set_session_cookie(response, request, opened.token)
    return Session(
        token=opened.token,
        expires_at=opened.expires_at,
        role=who.role,
        login=who.login,
        name=who.name,
    )


@contextmanager
def login_problems() -> Iterator[None]:
    """The problems a refused login or code gets: 401 (the same whatever was wrong), or 429
    after too many."""
    try:
        yield
    except LoginThrottled as e:
        raise Problem(
            429, "too_many_attempts", str(e), headers={"Retry-After": str(e.retry_after)}
        ) from e
    except LoginFailed as e:
        raise Problem(401, "login_failed", str(e)) from e


@access.post(
    "/v1/sessions", status_code=201, responses=problems(LOGIN_FAILED, THROTTLED, InvalidRequest)
)
def open_session(
    body: Credentials, request: Request, response: Response, ledger: LedgerDep
) -> Session:
    """Log in with a login and its passphrase. A wrong login and a wrong passphrase get the
    same answer; after 5 failures for a login (or 30 from one address) in 15 minutes, 429."""
    state = request.app.state
    credentials, address = (body.login, body.passphrase), client_address(request)
    with login_problems():
        opened, who = log_in(ledger, state.sessions, state.login_throttle, credentials, address)
    return start_session(request, response, opened, who)


@access.delete("/v1/sessions/current", status_code=204, responses=problems(FORBIDDEN))
def close_session(request: Request, _who: Person) -> Response:
    """Log out: this session's token stops working at once."""
    token = bearer_token(request)
    request.app.state.sessions.close(token)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@access.post(
    "/v1/invitations/accept",
    status_code=201,
    responses=problems(InvitationRefused, InvalidRequest, THROTTLED),
)
def accept(body: Acceptance, request: Request, response: Response, ledger: LedgerDep) -> Session:
    """Set a passphrase with an invitation code (once; the code then stops working) and log
    in. Wrong codes count as failed logins."""
    state = request.app.state
    acceptance, address = (body.login, body.code, body.passphrase), client_address(request)
    with login_problems():
        opened, who = take_invitation(
            ledger, state.sessions, state.login_throttle, acceptance, address
        )
    return start_session(request, response, opened, who)


@access.post(
    "/v1/members/{member_id}/invitation",
    status_code=201,
    tags=["members"],
    responses=problems(FORBIDDEN, UnknownMember, LoginExists, InvalidRequest),
)
def invite(member_id: str, ledger: LedgerDep, caller: WritingCaller) -> Invitation:
    """A code for the member to set a passphrase with (at `/ui/welcome`, or
    `POST /v1/invitations/accept`), valid for 14 days and shown only now: hand it over on
    paper or read it out. Asking again replaces the code, and ends the old passphrase."""
    return invite_member(ledger, member_id, caller)


@access.post(
    "/v1/coordinators",
    status_code=201,
    tags=["coordinators"],
    responses=problems(FORBIDDEN, LoginExists, InvalidRequest),
)
def add_coordinator(
    body: NewCoordinator, ledger: LedgerDep, caller: Annotated[Principal, Operator]
) -> Invitation:
    """Invite a coordinator (the operator's token only): a coordinator does what the operator
    does over the API and the dashboard, under their own name."""
    return invite_coordinator(ledger, body.coordinator_id, body.name, caller)


@access.get(
    "/v1/coordinators/{coordinator_id}/acts",
    tags=["coordinators"],
    dependencies=[callers("operator", "auditor", "admin", "coordinator")],
    responses=problems(UnknownMember),
)
def coordinator_acts(coordinator_id: str, ledger: LedgerDep) -> list[Act]:
    """Everything the coordinator did for a member (invited them, paid for them), oldest
    first, each with the id of what it made."""
    return acts_of(ledger, coordinator_id)


@access.get(
    "/v1/members/{member_id}/acts",
    tags=["members"],
    dependencies=[callers("operator", "auditor", "admin", "coordinator")],
    responses=problems(UnknownMember),
)
def member_acts(member_id: str, ledger: LedgerDep) -> list[ActFor]:
    """What coordinators did for the member (invited them, paid for them, posted for them),
    oldest first, each with the coordinator and the id of what it made."""
    return acts_for_member(ledger, member_id)


@access.post(
    "/v1/logins/{login}/revoke",
    status_code=204,
    tags=["access"],
    responses=problems(FORBIDDEN, UnknownMember),
)
def revoke_login(login: str, request: Request, ledger: LedgerDep, caller: WritingCaller) -> None:
    """End a login and its sessions (a coordinator may end members' logins; the operator
    anyone's). Inviting again gives it a new code."""
    if caller.role == LoginRole.COORDINATOR and login_role(ledger, login) != LoginRole.MEMBER:
        raise Problem(403, "forbidden", "a coordinator may revoke only members' logins")
    revoke(ledger, request.app.state.sessions, login, caller)
