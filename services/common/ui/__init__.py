"""The web dashboard every service can serve at /ui/: pages rendered on the server with Jinja2,
its stylesheet and htmx served by the service itself (no CDN, no build step), and the forms
working without JavaScript (htmx only refreshes parts of a page). A service describes its
site (``UISite``: its name, its pages, who may log in and how) and calls ``install_ui``; the
login, the logout, the session cookie and the CSRF checks are the same for every service."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from services.common.ui.session import Posted, Viewer, ui_session
from services.common.ui.session import router as session_router
from services.common.ui.site import (
    STATIC_DIR,
    STATIC_URL,
    UI_PREFIX,
    LoginAttempt,
    UIError,
    UISite,
    install_error_pages,
    render,
    see_other,
    templates_for,
)

__all__ = [
    "UI_PREFIX",
    "LoginAttempt",
    "Posted",
    "UIError",
    "UISite",
    "Viewer",
    "install_ui",
    "render",
    "see_other",
    "ui_session",
]


def install_ui(app: FastAPI, site: UISite, routers: Iterable[APIRouter]) -> None:
    """Serve ``site`` under /ui/: its static files, the login and logout, and ``routers``'
    pages (kept out of the OpenAPI description: they are pages, not the API)."""
    app.state.ui_site = site
    app.state.ui_templates = templates_for(site)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="ui-static")
    install_error_pages(app)
    for router in (session_router, *routers):
        app.include_router(router, include_in_schema=False)
