"""A service's API docs: Swagger UI at /docs and ReDoc at /redoc, both served from the service
itself (the assets the fastapi-offline package ships), so they work without internet; and an
OpenAPI description that documents every problem a route can answer."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema

from services.common.problems import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PAYLOAD_TOO_LARGE,
    PROBLEM_JSON,
    PROBLEM_SCHEMA_REF,
    UNAUTHORIZED,
    UNSUPPORTED_MEDIA_TYPE,
    ProblemDetails,
    ProblemSource,
    problem_responses,
)

ASSETS_URL = "/docs-assets"
# The package and its folder that hold swagger-ui-bundle.js, swagger-ui.css,
# redoc.standalone.js and favicon.png.
ASSETS_PACKAGE = ("fastapi_offline", "static")
# Swagger UI would otherwise send the description to validator.swagger.io for its badge.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "options", "head", "trace"})
# FastAPI's shapes for a validation error, which these services never send.
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


class ServiceAPI(FastAPI):
    """A FastAPI app whose OpenAPI description documents problems as they are sent: see
    ``document_problems``."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = document_problems(super().openapi())
        return self.openapi_schema


def documented_app(**kwargs: Any) -> FastAPI:
    """A ``ServiceAPI`` (FastAPI's arguments) with its offline docs at /docs and /redoc."""
    app = ServiceAPI(docs_url=None, redoc_url=None, **kwargs)
    install_docs(app)
    return app


def install_docs(app: FastAPI) -> None:
    """Serve the docs' assets under ASSETS_URL, and the two pages that use them."""
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")

    def local(request: Request, path: str) -> str:
        # Behind a proxy that mounts the service under a prefix, the prefix comes first.
        return str(request.scope.get("root_path", "")).rstrip("/") + path

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=local(request, str(app.openapi_url)),
            title=f"{app.title}: Swagger UI",
            swagger_js_url=local(request, f"{ASSETS_URL}/swagger-ui-bundle.js"),
            swagger_css_url=local(request, f"{ASSETS_URL}/swagger-ui.css"),
            swagger_favicon_url=local(request, f"{ASSETS_URL}/favicon.png"),
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=local(request, str(app.openapi_url)),
            title=f"{app.title}: ReDoc",
            redoc_js_url=local(request, f"{ASSETS_URL}/redoc.standalone.js"),
            redoc_favicon_url=local(request, f"{ASSETS_URL}/favicon.png"),
            with_google_fonts=False,
        )


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Complete FastAPI's description with the problems every route can answer because of its
    shape, besides those its decorator names (its domain errors and roles): 401 when it takes
    a token, 413 and 415 when it takes a body, 422 when it takes a body or parameters (a
    problem, where FastAPI would document its own validation error), and 500. Each is
    application/problem+json with the ProblemDetails schema."""
    for path_item in schema.get("paths", {}).values():
        for method, operation in path_item.items():
            if method in HTTP_METHODS:
                _document_operation(operation)
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    _, definitions = models_json_schema(
        [(ProblemDetails, "serialization")], ref_template="#/components/schemas/{model}"
    )
    schemas.update(definitions["$defs"])
    for name in FASTAPI_VALIDATION_SCHEMAS:
        if f'"#/components/schemas/{name}"' not in json.dumps(schema):
            schemas.pop(name, None)
    return schema


def _document_operation(operation: dict[str, Any]) -> None:
    sources: list[ProblemSource] = []
    if operation.get("security"):
        sources.append(UNAUTHORIZED)
    if "requestBody" in operation:
        sources += [PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, INVALID_REQUEST]
    if operation.get("parameters"):
        sources.append(INVALID_REQUEST)
    sources.append(INTERNAL_ERROR)
    responses = operation.setdefault("responses", {})
    for status, response in problem_responses({}, *sources).items():
        # A problem the decorator named already says its codes; the rest (FastAPI's own 422
        # among them) is replaced.
        if PROBLEM_JSON not in responses.get(str(status), {}).get("content", {}):
            responses[str(status)] = response
    for status, response in responses.items():
        # An error a route describes in words only is sent as a problem too.
        if status.isdigit() and int(status) >= 400 and "content" not in response:
            response["content"] = {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}}
    operation["responses"] = dict(sorted(responses.items()))
