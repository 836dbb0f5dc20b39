"""The FastAPI dependencies both services' routes use: the application a service runs, and the
caller's role from its bearer token, checked against the service's settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, Request

from services.common.application import ServiceApplication
from services.common.auth import (
    READ_ROLES,
    WRITE_ROLES,
    TokenRegistry,
    principal_guard,
    role_guard,
)
from services.common.sessions import Principal

App = TypeVar("App", bound=ServiceApplication)


class HasTokens(Protocol):
    @property
    def tokens(self) -> TokenRegistry: ...


def service_tokens(request: Request) -> TokenRegistry:
    """The bearer tokens of the service serving the request (from its settings)."""
    settings: HasTokens = request.app.state.settings
    return settings.tokens


def application(cls: type[App]) -> Callable[[Request], App]:
    """A dependency: the running service's application, which must be a ``cls``."""

    def running(request: Request) -> App:
        app = request.app.state.application
        if not isinstance(app, cls):
            raise TypeError(f"this service runs a {type(app).__name__}, not a {cls.__name__}")
        return app

    return running


# Route dependencies: anyone with a token of the service may read; operators and admins write.
Reader = Depends(role_guard(READ_ROLES, service_tokens))
Writer = Depends(role_guard(WRITE_ROLES, service_tokens))


def callers(*roles: str) -> Any:
    """A route parameter's dependency: who is calling, if their role is one of ``roles``."""
    return Depends(principal_guard(frozenset(roles), service_tokens))


# Who writes, for routes that record it (a coordinator acting for a member).
WritingCaller = Annotated[Principal, Depends(principal_guard(WRITE_ROLES, service_tokens))]
