"""How the command line says what went wrong: an API's refusal and a service's failed start,
each in one line."""

from __future__ import annotations

from pathlib import Path

import httpx2 as httpx
import pytest

from services.cli.federation import one_line
from services.local.client import FederationClient, RequestFailed, problem_of

URL = "http://127.0.0.1:8000/v1/settlements/1/obligations/1/confirm"


def answer(status: int, **kwargs: object) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", URL), **kwargs)  # type: ignore[arg-type]


def test_a_problem_is_its_code_and_detail_on_one_line() -> None:
    problem = {"code": "not_creditor", "detail": "gp is not\nthe creditor", "status": 409}
    assert problem_of(answer(409, json=problem)) == "not_creditor: gp is not the creditor"


def test_an_answer_that_is_not_a_problem_is_its_text_on_one_line() -> None:
    assert problem_of(answer(502, text="Bad\n  gateway")) == "Bad gateway"


def test_a_refusal_names_the_request_and_the_problem() -> None:
    with pytest.raises(RequestFailed) as refused:
        FederationClient.ok(answer(409, json={"code": "not_creditor", "detail": "no"}))
    assert str(refused.value) == f"POST {URL}: 409 not_creditor: no"


def test_a_success_that_is_not_json_is_a_refusal_not_a_traceback() -> None:
    with pytest.raises(RequestFailed, match="not JSON"):
        FederationClient.ok(answer(200, text="<html>"))


def test_a_failed_start_keeps_its_first_words_and_last_line() -> None:
    message = "clearing did not start: 12:00 warning one\n12:01 warning two\n12:02 NATS refused"
    said = one_line(message, Path("data"))
    assert said == "clearing did not start: 12:02 NATS refused (more in data/logs)"


def test_a_one_line_failure_is_kept_as_it_is() -> None:
    assert one_line("gp exited at start-up: error: bad key", Path("d")) == (
        "gp exited at start-up: error: bad key"
    )
