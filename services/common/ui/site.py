"""The dashboard's pieces every service's pages use: pages rendered on the server with Jinja2,
its stylesheet and htmx served by the service itself (no CDN, no build step), and the forms
working without JavaScript (htmx only refreshes parts of a page). A service describes its
site (``UISite``: its name, its pages, who may log in and how) and calls ``install_ui``; the
login, the logout, the session cookie and the CSRF checks are the same for every service."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

from services.common.sessions import SESSION_COOKIE, Principal, Sessions
from services.common.ui.charts import hours_text

UI_PREFIX = "/ui"
STATIC_URL = f"{UI_PREFIX}/static"
HERE = Path(__file__).parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
# Every page: its own scripts and styles only (no inline script or style), never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class LoginAttempt:
    """What the login form sent: a login (empty where the site asks only for a secret) and the
    secret (a passphrase, or a service token)."""

    login: str
    secret: str


@dataclass(frozen=True)
class UISite:
    """One service's dashboard."""

    service: str  # shown in the header and the title of every page
    nav: Sequence[tuple[str, str]]  # (path, label), in order
    # Who the login form's answer is, or None when wrong (never saying which part was).
    authenticate: Callable[[Request, LoginAttempt], Principal | None]
    roles: frozenset[str]  # whose sessions may see these pages
    templates_dir: Path | None = None  # the service's own templates, before the common ones
    asks_login: bool = True  # False: the form asks only for the secret (a token)
    login_label: str = "Login"
    secret_label: str = "Passphrase"  # noqa: S105 (a label, not a secret)
    home: str = f"{UI_PREFIX}/"
    globals: Mapping[str, Any] = field(default_factory=dict)
    # A role's own pages, where they differ from ``nav`` (a member's, a coordinator's).
    nav_by_role: Mapping[str, Sequence[tuple[str, str]]] = field(default_factory=dict)
    # The service's name as its people know it, when it can change (a bank's, from the
    # federation's directory); ``service`` otherwise.
    name_of: Callable[[Request], str] | None = None

    def name(self, request: Request) -> str:
        return (self.name_of(request) if self.name_of else "") or self.service

    def nav_for(self, principal: Principal) -> Sequence[tuple[str, str]]:
        """The pages the navigation offers to ``principal``."""
        return self.nav_by_role.get(principal.role, self.nav)


@dataclass(frozen=True)
class UISession:
    """Who is looking at a page, and the CSRF token their forms carry."""

    principal: Principal
    csrf: str
    token: str


def session_of(request: Request) -> UISession | None:
    """The request's live session at this site, if it has one (its role let in here)."""
    token = request.cookies.get(SESSION_COOKIE, "")
    sessions: Sessions = request.app.state.sessions
    found = sessions.session_of(token)
    site: UISite = request.app.state.ui_site
    if found is None or found[0].role not in site.roles:
        return None
    return UISession(found[0], found[1], token)


class UIError(Exception):
    """A page cannot be shown (not found, not allowed, a rule refused a form): answered as an
    HTML page with the status, never as JSON."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


class LoginRequired(Exception):
    """The request has no live session for this site: go to the login page, then back."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def templates_for(site: UISite) -> Jinja2Templates:
    """The site's templates, then the common ones (base.html, login.html, the macros)."""
    dirs = [site.templates_dir] if site.templates_dir is not None else []
    env = Environment(
        loader=ChoiceLoader([FileSystemLoader([*map(str, dirs), str(TEMPLATES_DIR)])]),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["hours"] = hours_text
    env.globals.update(site=site, static_url=STATIC_URL, **site.globals)
    return Jinja2Templates(env=env)


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """A page of the request's site, with the security headers every page carries."""
    templates: Jinja2Templates = request.app.state.ui_templates
    site: UISite = request.app.state.ui_site
    page = {"service_name": site.name(request), **(context or {})}
    response = templates.TemplateResponse(request, template, page, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def see_other(path: str) -> RedirectResponse:
    """The answer to a form that worked (POST-redirect-GET): reloading does not resend it."""
    return RedirectResponse(path, status_code=303, headers={"Cache-Control": "no-store"})


def safe_next(path: str | None, site: UISite) -> str:
    """Where to go after logging in: a page of this site, never another host."""
    if path and path.startswith(f"{UI_PREFIX}/") and not path.startswith("//") and "\\" not in path:
        return path
    return site.home


def install_error_pages(app: FastAPI) -> None:
    async def on_ui_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, UIError)
        context = {
            "title": exc.title,
            "message": exc.message,
            "status": exc.status,
            "session": session_of(request),
        }
        return render(request, "error.html", context, status_code=exc.status)

    async def on_login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        site: UISite = request.app.state.ui_site
        target = f"{UI_PREFIX}/login?" + urlencode({"next": safe_next(exc.next_path, site)})
        if request.headers.get("HX-Request"):
            # htmx follows this header with a full page load, not a fragment swap.
            return Response(status_code=204, headers={"HX-Redirect": target})
        return see_other(target)

    app.add_exception_handler(UIError, on_ui_error)
    app.add_exception_handler(LoginRequired, on_login_required)
