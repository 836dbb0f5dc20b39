"""RFC 9457 problem details: every error a service returns, in one shape, with a stable code."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:timebank-federation:problem:"


class Problem(Exception):
    """An HTTP error raised by an adapter (auth, headers), rendered as problem details."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra


def problem_body(
    status: int, code: str, detail: str, instance: str, **extra: Any
) -> dict[str, Any]:
    return {
        "type": TYPE_PREFIX + code,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "code": code,
        "detail": detail,
        "instance": instance,
        **extra,
    }


def problem_response(
    request: Request,
    status: int,
    code: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = problem_body(status, code, detail, request.url.path, **extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def error_problem(
    exc: BaseException, domain_errors: Mapping[type[Exception], tuple[int, str]], instance: str
) -> dict[str, Any]:
    """The problem details for an error a command raised: its mapped status and code, its
    ``detail`` and ``extra``; any other error is a 500 (logged), its detail not shown."""
    for cls in type(exc).__mro__:
        if cls in domain_errors:
            status, code = domain_errors[cls]
            extra = getattr(exc, "extra", {})
            return problem_body(status, code, getattr(exc, "detail", str(exc)), instance, **extra)
    log.error("unexpected error on %s", instance, exc_info=exc)
    return problem_body(500, "internal_error", "the service failed to handle this", instance)


def validation_problem(
    raw_errors: Sequence[Mapping[str, Any]], instance: str, *, skip: int = 1
) -> dict[str, Any]:
    """A 422 invalid_request problem for pydantic's errors; the first one is the detail.
    ``skip``: how many leading parts of each error's location to leave out of the detail
    (the request's "body", for a whole body)."""
    errors = [
        {
            "location": [str(part) for part in err.get("loc", ())],
            "message": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in raw_errors
    ]
    first = errors[0] if errors else {"location": [], "message": "invalid request"}
    if first.get("type") == "json_invalid":
        detail = "the request body is not valid JSON"
    else:
        where = ".".join(first["location"][skip:]) or "body"
        detail = f"{where}: {first['message']}"
    return problem_body(422, "invalid_request", detail, instance, errors=errors)


_STATUS_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def install_problem_handlers(
    app: FastAPI, domain_errors: Mapping[type[Exception], tuple[int, str]]
) -> None:
    """Map the service's domain errors, validation errors and HTTP errors to problem details.

    Each domain error class maps to (status, code); its ``detail`` and ``extra`` attributes
    (when present) become the problem's detail and extension members.
    """

    async def on_domain_error(request: Request, exc: Exception) -> JSONResponse:
        body = error_problem(exc, domain_errors, request.url.path)
        return JSONResponse(body, status_code=body["status"], media_type=PROBLEM_JSON)

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(
            request, exc.status, exc.code, exc.detail, headers=exc.headers, **exc.extra
        )

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        body = validation_problem(exc.errors(), request.url.path)
        return JSONResponse(body, status_code=422, media_type=PROBLEM_JSON)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        return problem_response(request, exc.status_code, code, str(exc.detail), exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem_response(
            request, 500, "internal_error", "the service failed to handle this request"
        )

    for cls in domain_errors:
        app.add_exception_handler(cls, on_domain_error)
    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
