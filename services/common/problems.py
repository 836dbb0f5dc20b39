"""RFC 9457 problem details: every error a service returns, in one shape, with a stable code."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:timebank-federation:problem:"
PROBLEM_SCHEMA_REF = "#/components/schemas/ProblemDetails"

# Problems that come from the request's shape or its token rather than from a domain rule.
UNAUTHORIZED = (401, "unauthorized")
FORBIDDEN = (403, "forbidden")
PAYLOAD_TOO_LARGE = (413, "payload_too_large")
UNSUPPORTED_MEDIA_TYPE = (415, "unsupported_media_type")
INVALID_REQUEST = (422, "invalid_request")
INTERNAL_ERROR = (500, "internal_error")


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


class ProblemError(BaseModel):
    """One thing wrong with a request, as a validation problem lists it."""

    location: list[str] = Field(description="Where, outermost first, e.g. body, minutes.")
    message: str
    type: str = Field(description="pydantic's name for the error, e.g. missing, int_type.")


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class ProblemDetails(BaseModel):
    """An RFC 9457 problem: how every error is answered, as application/problem+json. A
    problem may carry more members: the figures behind a refusal (available_minutes,
    overdraft_limit_minutes, requested_minutes, ...) or the id it is about."""

    model_config = ConfigDict(extra="allow")

    # No examples: one problem's would show as the sample of every status.
    type: str = Field(description=f"{TYPE_PREFIX}<code>")
    title: str = Field(description="The HTTP status's phrase.")
    status: int
    code: str = Field(description="Stable, for programs to act on.")
    detail: str = Field(description="For people: what went wrong with this request.")
    instance: str = Field(description="The request's path.")
    # Absent rather than null when there is none, hence no null in the schema.
    errors: list[ProblemError] | SkipJsonSchema[None] = Field(
        default=None,
        description="Validation problems only: every error found, the first one in detail.",
        json_schema_extra=_drop_default,
    )


Responses = dict[int | str, dict[str, Any]]
ProblemSource = type[Exception] | tuple[int, str]


def problem_responses(
    domain_errors: Mapping[type[Exception], tuple[int, str]], *sources: ProblemSource
) -> Responses:
    """OpenAPI ``responses`` for the problems a route can answer: each status with its codes,
    as application/problem+json. A source is a domain error (its status and code from
    ``domain_errors``) or a (status, code) pair."""
    codes: dict[int, list[str]] = {}
    for source in sources:
        status, code = source if isinstance(source, tuple) else domain_errors[source]
        if code not in codes.setdefault(status, []):
            codes[status].append(code)
    return {
        status: {
            "description": HTTPStatus(status).phrase + ": " + ", ".join(f"`{c}`" for c in found),
            "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}},
        }
        for status, found in sorted(codes.items())
    }


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
