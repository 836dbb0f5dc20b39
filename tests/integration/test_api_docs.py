"""Both services' API docs: Swagger UI and ReDoc served from the service itself (no other host),
the bearer scheme on the routes that need a token, and every problem a route answers
documented as application/problem+json with the ProblemDetails schema."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from services.clearing import service as clearing_service
from services.clearing.settings import ClearingSettings
from services.common.problems import (
    FORBIDDEN,
    PROBLEM_JSON,
    PROBLEM_SCHEMA_REF,
    problem_responses,
)
from services.ledger import service as ledger_service
from tests.helpers import AUDITOR_TOKEN, OPERATOR_TOKEN, assert_problem, make_settings

ADMIN_TOKEN = "admin-" + "x" * 24
JSON = {"Content-Type": "application/json"}
TEXT = {"Content-Type": "text/plain"}
METHODS = ("get", "put", "post", "delete", "patch")
Operation = dict[str, Any]


@dataclass
class Service:
    name: str
    client: TestClient
    writer: dict[str, str]
    reader: dict[str, str]


@pytest.fixture(params=["ledger", "clearing"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    reader = {"Authorization": f"Bearer {AUDITOR_TOKEN}"}
    if request.param == "ledger":
        app = ledger_service.create_app(make_settings(f"sqlite:///{tmp_path}/bank.db"))
        writer = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    else:
        settings = ClearingSettings.build(
            {"TIMEBANK_ADMIN_TOKEN": ADMIN_TOKEN, "TIMEBANK_AUDITOR_TOKEN": AUDITOR_TOKEN},
            store_url=f"sqlite:///{tmp_path}/clearing.db",
        )
        app = clearing_service.create_app(settings)
        writer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with TestClient(app) as client:
        yield Service(request.param, client, writer, reader)


def openapi(service: Service) -> dict[str, Any]:
    response = service.client.get("/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, Operation]]:
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def is_health(operation: Operation) -> bool:
    return "health" in operation.get("tags", [])


def problem_validator(doc: dict[str, Any]) -> Draft202012Validator:
    """Checks a body against the ProblemDetails schema as the description publishes it."""
    return Draft202012Validator({**doc, "$ref": PROBLEM_SCHEMA_REF})


def call(service: Service, path: str, method: str, op: Operation, **kw: Any) -> httpx.Response:
    """The operation with every path parameter "1", and {} as its body if it takes one."""
    url = re.sub(r"\{[^}]+\}", "1", path)
    if "requestBody" in op:
        kw["json"] = {}
    return service.client.request(method.upper(), url, **kw)


# The pages and their assets.


class PageLinks(HTMLParser):
    """Every URL a page loads: scripts, styles, icons, and ReDoc's description."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src", "redoc": "spec-url"}.get(tag)
        self.urls += [value for name, value in attrs if name == wanted and value]


ASSET_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
    ".json": ("application/json",),
}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_everything_from_the_service_itself(service: Service, page: str) -> None:
    response = service.client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    links = PageLinks()
    links.feed(response.text)
    # Swagger UI is told its description in a script, not an attribute.
    links.urls += re.findall(r"url: '([^']*)'", response.text)
    assert not re.search(r"https?:|['\"(]//", response.text), "the page names another host"
    assert any(url.endswith(".js") for url in links.urls)
    assert "/openapi.json" in links.urls

    for url in links.urls:
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == ("", ""), url
        assert url.startswith("/"), url
        asset = service.client.get(url)
        assert asset.status_code == 200, url
        content_type = asset.headers["content-type"].split(";")[0]
        assert content_type in ASSET_TYPES[Path(parts.path).suffix], (url, content_type)
        assert len(asset.content) > 1000, url


def test_swagger_ui_does_not_send_the_description_to_an_online_validator(
    service: Service,
) -> None:
    assert '"validatorUrl": null' in service.client.get("/docs").text


def test_a_missing_docs_asset_is_a_404_problem(service: Service) -> None:
    assert_problem(service.client.get("/docs-assets/nothing.js"), 404, "not_found")


# The bearer scheme.


def test_the_description_names_the_bearer_scheme_and_healthz_needs_none(
    service: Service,
) -> None:
    doc = openapi(service)

    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "security" not in doc["paths"]["/healthz"]["get"]
    secured = [op for _, _, op in operations(doc) if op.get("security")]
    assert secured
    assert all(op["security"] == [{"bearer": []}] for op in secured)


def test_exactly_the_routes_that_refuse_a_request_without_a_token_say_they_need_one(
    service: Service,
) -> None:
    doc = openapi(service)
    validator = problem_validator(doc)

    for path, method, op in operations(doc):
        response = call(service, path, method, op)
        where = f"{method.upper()} {path}"
        assert (response.status_code == 401) == bool(op.get("security")), where
        if response.status_code == 401:
            assert "401" in op["responses"], where
            validator.validate(assert_problem(response, 401, "unauthorized"))


def test_every_problem_a_route_answers_a_reader_is_documented_for_that_route(
    service: Service,
) -> None:
    doc = openapi(service)
    validator = problem_validator(doc)

    answered = set()
    for path, method, op in operations(doc):
        if not op.get("security"):
            continue
        response = call(service, path, method, op, headers=service.reader)
        if response.status_code >= 400:
            where = f"{method.upper()} {path}"
            documented = op["responses"].get(str(response.status_code))
            assert documented, f"{where} answered {response.status_code}, not documented"
            body = assert_problem(response, response.status_code, response.json()["code"])
            assert f"`{body['code']}`" in documented["description"], where
            validator.validate(body)
            answered.add(response.status_code)
    # A reader is refused the writes, and asks about things that do not exist.
    assert {403, 404} <= answered


# The problem responses.


def test_every_error_response_is_documented_as_problem_json_with_the_schema(
    service: Service,
) -> None:
    doc = openapi(service)

    for path, method, op in operations(doc):
        where = f"{method.upper()} {path}"
        errors = {s: r for s, r in op["responses"].items() if s.isdigit() and int(s) >= 400}
        for status, response in errors.items():
            assert response["content"] == {
                PROBLEM_JSON: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}
            }, f"{where} {status}"
        assert "500" in errors, where
        if "requestBody" in op:
            assert {"413", "415", "422"} <= errors.keys(), where
        if op.get("parameters"):
            assert "422" in errors, where
        if not is_health(op) and op.get("security"):
            assert "401" in errors, where
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert "ValidationError" not in schemas
    assert set(schemas["ProblemDetails"]["required"]) == {
        "type",
        "title",
        "status",
        "code",
        "detail",
        "instance",
    }


def test_the_routes_document_their_domain_errors(service: Service) -> None:
    paths = openapi(service)["paths"]

    if service.name == "ledger":
        exchange = paths["/v1/exchanges"]["post"]["responses"]
        assert "`unknown_member`" in exchange["404"]["description"]
        assert "`overdraft_limit_exceeded`" in exchange["409"]["description"]
        assert "`busy`" in exchange["503"]["description"]
        assert "`member_exists`" in paths["/v1/members"]["post"]["responses"]["409"]["description"]
    else:
        confirm = paths["/v1/settlements/{settlement_id}/obligations/{number}/confirm"]["post"]
        assert "`not_creditor`" in confirm["responses"]["403"]["description"]
        assert "`bad_signature`" in confirm["responses"]["403"]["description"]
        assert "`bank_exists`" in paths["/v1/banks"]["post"]["responses"]["409"]["description"]


LENT = {"payer": "ann", "payee": "bob", "minutes": 5, "memo": "lift"}
# (method, route, what is sent): each refused with a different problem.
LEDGER_REFUSALS: list[tuple[str, str, dict[str, Any]]] = [
    ("post", "/v1/exchanges", {"json": {**LENT, "minutes": 600}}),  # past the overdraft limit
    ("post", "/v1/exchanges", {"json": {**LENT, "minutes": 6001}}),  # a rule's 422
    ("post", "/v1/exchanges", {"json": {"minutes": "5"}}),  # a validation 422, with errors
    ("post", "/v1/exchanges", {"content": b"{", "headers": JSON}),
    ("post", "/v1/exchanges", {"content": b"x", "headers": TEXT}),
    ("post", "/v1/exchanges", {"content": b"[" * 70_000, "headers": JSON}),
    ("get", "/v1/members/{member_id}", {}),
]


def test_the_ledgers_problems_match_the_published_schema_and_their_routes_docs(
    tmp_path: Path,
) -> None:
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    app = ledger_service.create_app(make_settings(f"sqlite:///{tmp_path}/bank.db"))
    with TestClient(app) as client:
        doc = openapi(Service("ledger", client, operator, {}))
        for member in ("ann", "bob"):
            new = {"member_id": member, "name": member, "kind": "person"}
            assert client.post("/v1/members", json=new, headers=operator).status_code == 201
        assert client.post("/v1/exchanges", json=LENT, headers=operator).status_code == 201

        seen = set()
        for method, route, sent in LEDGER_REFUSALS:
            url = route.replace("{member_id}", "zed")
            headers = operator | sent.get("headers", {})
            content = {k: v for k, v in sent.items() if k != "headers"}
            response = client.request(method.upper(), url, headers=headers, **content)
            body = assert_problem(response, response.status_code, response.json()["code"])
            problem_validator(doc).validate(body)
            documented = doc["paths"][route][method]["responses"][str(body["status"])]
            assert f"`{body['code']}`" in documented["description"], (route, body)
            seen.add((body["status"], body["code"]))
    assert seen == {
        (409, "overdraft_limit_exceeded"),
        (422, "invalid_request"),
        (415, "unsupported_media_type"),
        (413, "payload_too_large"),
        (404, "unknown_member"),
    }


def test_a_validation_problem_lists_its_errors_as_the_schema_says(service: Service) -> None:
    doc = openapi(service)
    path = "/v1/exchanges" if service.name == "ledger" else "/v1/banks"

    response = service.client.post(path, json={"minutes": "5"}, headers=service.writer)

    body = assert_problem(response, 422, "invalid_request")
    assert body["errors"]
    problem_validator(doc).validate(body)
    # The schema does check: an error without its location is not a problem's error.
    body["errors"][0].pop("location")
    assert not problem_validator(doc).is_valid(body)


def test_problem_responses_group_a_routes_codes_by_status() -> None:
    class Missing(Exception):
        pass

    class Taken(Exception):
        pass

    errors: dict[type[Exception], tuple[int, str]] = {
        Missing: (404, "missing"),
        Taken: (409, "taken"),
    }

    responses = problem_responses(errors, Taken, FORBIDDEN, Missing, (409, "other"), Taken)

    assert list(responses) == [403, 404, 409]
    assert responses[409]["description"] == "Conflict: `taken`, `other`"
    assert responses[404]["content"] == {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}}
