"""Logging in and out of the dashboard, and who a page's request is: the session token lives in
an HTTP-only, SameSite=Strict cookie (no script reads it, no other site's form sends it), and
every form a page posts carries the session's CSRF token, checked before anything is done.

The login form carries a token of its own (also in a cookie, compared with what the form
sent), so another site cannot log a browser in as someone else. Failed logins are throttled
per login and per address (services.common.sessions.LoginThrottle), and a failure says nothing
about which part was wrong."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from services.common.sessions import (
    SESSION_COOKIE,
    LoginFailed,
    LoginThrottle,
    LoginThrottled,
    Principal,
    Sessions,
)
from services.common.ui.site import (
    UI_PREFIX,
    LoginAttempt,
    LoginRequired,
    UIError,
    UISession,
    UISite,
    render,
    safe_next,
    see_other,
    session_of,
)

LOGIN_CSRF_COOKIE = "timebank_login_csrf"
MAX_FIELD = 1000
LOGIN_FAILED = "That did not work. Check what you typed and try again."

router = APIRouter()


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _site(request: Request) -> UISite:
    site: UISite = request.app.state.ui_site
    return site


def ui_session(request: Request) -> UISession:
    """The live session of the request's cookie, for a role this site lets in; else to the
    login page (and back here afterwards)."""
    session = session_of(request)
    if session is None:
        raise LoginRequired(request.url.path)
    return session


Viewer = Annotated[UISession, Depends(ui_session)]


def same_token(presented: object, expected: str) -> bool:
    """Whether a form sent the token expected of it. No token expected (no cookie) matches
    nothing, an empty one sent included."""
    return (
        bool(expected)
        and isinstance(presented, str)
        and hmac.compare_digest(presented.encode(), expected.encode())
    )


@dataclass(frozen=True)
class PostedForm:
    """A form the session's own page sent (its CSRF token checked), and who sent it."""

    session: UISession
    form: FormData

    def text(self, name: str) -> str:
        value = self.form.get(name, "")
        return value.strip()[:MAX_FIELD] if isinstance(value, str) else ""


async def posted_form(request: Request, session: Viewer) -> PostedForm:
    """The posted form, if it carries the session's CSRF token; else a 403 page."""
    form = await request.form()
    if not same_token(form.get("csrf"), session.csrf):
        raise UIError(
            403,
            "This form has expired",
            "The form was not sent from this session's page. Go back, reload it, and try again.",
        )
    return PostedForm(session, form)


Posted = Annotated[PostedForm, Depends(posted_form)]


def set_session_cookie(response: Response, request: Request, token: str) -> None:
    """The session's token for the dashboard: HTTP-only (no script reads it), SameSite=Strict
    (no other site's page sends it), for the session's lifetime."""
    sessions: Sessions = request.app.state.sessions
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(sessions.lifetime.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def set_form_cookie(
    response: Response, request: Request, cookie: str, token: str, path: str
) -> None:
    """A form's own token (a form used before there is a session: logging in, setting a
    passphrase), in a cookie only that form's address gets; the form sends it back too."""
    response.set_cookie(
        cookie,
        token,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=path,
    )


def _login_page(request: Request, next_path: str, status: int = 200, message: str = "") -> Response:
    """The login form, with a fresh login token in the form and in a cookie."""
    login_csrf = secrets.token_urlsafe(16)
    context = {"title": "Log in", "next": next_path, "login_csrf": login_csrf, "message": message}
    response = render(request, "login.html", context, status_code=status)
    set_form_cookie(response, request, LOGIN_CSRF_COOKIE, login_csrf, f"{UI_PREFIX}/login")
    return response


@router.get(f"{UI_PREFIX}/login")
def login_page(request: Request, next: str = "") -> Response:
    """The login form; someone already logged in goes straight on."""
    site = _site(request)
    if session_of(request) is not None:
        return see_other(safe_next(next, site))
    return _login_page(request, safe_next(next, site))


def _field(form: FormData, name: str) -> str:
    value = form.get(name, "")
    return value[:MAX_FIELD] if isinstance(value, str) else ""


@router.post(f"{UI_PREFIX}/login")
async def log_in(request: Request) -> Response:
    """Check the form; open a session and go where the person was going."""
    site = _site(request)
    form = await request.form()
    next_path = safe_next(_field(form, "next"), site)
    if not same_token(_field(form, "login_csrf"), request.cookies.get(LOGIN_CSRF_COOKIE, "")):
        message = "The login form had expired. Please try again."
        return _login_page(request, next_path, 403, message)
    attempt = LoginAttempt(_field(form, "login").strip(), _field(form, "secret").strip())
    address = client_address(request)
    # A site that asks only for a token has no login to count failures against: the address.
    login = attempt.login if site.asks_login else f"token@{address}"
    throttle: LoginThrottle = request.app.state.login_throttle

    def check() -> Principal:
        principal = site.authenticate(request, attempt)
        if principal is None or principal.role not in site.roles:
            raise LoginFailed(LOGIN_FAILED)
        return principal

    try:
        principal = throttle.attempt((login, address), check)
    except LoginThrottled as e:
        message = f"Too many failed attempts. Try again in {(e.retry_after + 59) // 60} minute(s)."
        response = _login_page(request, next_path, 429, message)
        response.headers["Retry-After"] = str(e.retry_after)
        return response
    except LoginFailed:
        return _login_page(request, next_path, 401, LOGIN_FAILED)
    sessions: Sessions = request.app.state.sessions
    opened = sessions.open(principal)
    response = see_other(next_path)
    set_session_cookie(response, request, opened.token)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=f"{UI_PREFIX}/login")
    return response


@router.post(f"{UI_PREFIX}/logout")
def log_out(request: Request, posted: Posted) -> Response:
    """End the session (its token stops working at once) and show the login form."""
    request.app.state.sessions.close(posted.session.token)
    response = see_other(f"{UI_PREFIX}/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def done(request: Request, session: UISession, path: str, message: str) -> Response:
    """A form worked: go to ``path`` (POST-redirect-GET), which shows ``message`` once."""
    sessions: Sessions = request.app.state.sessions
    sessions.flash(session.token, message)
    return see_other(path)


def flashed(request: Request, session: UISession) -> str:
    """The message the last form left for this page, once."""
    sessions: Sessions = request.app.state.sessions
    return sessions.take_flash(session.token)
