"""/readyz beside /healthz: ready only while the store answers and, on the bus, NATS is
connected and the consumer fetching; otherwise a 503 problem naming what is not ready."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.ledger.application import Ledger
from services.ledger.service import create_app
from services.local.nats_server import NatsServer
from shared.bus import Bus
from tests.helpers import assert_problem, make_settings
from tests.integration.service_federation import served_federation, wait_until

pytestmark = pytest.mark.timeout(120)


def readiness(client: TestClient) -> tuple[int, dict[str, Any]]:
    response = client.get("/readyz")
    body: dict[str, Any] = response.json()
    return response.status_code, body


def answers(client: TestClient, status: int) -> bool:
    return client.get("/readyz").status_code == status


def test_a_bank_whose_store_answers_is_ready_without_a_token(client: TestClient) -> None:
    assert readiness(client) == (200, {"status": "ready"})


def test_a_store_that_does_not_answer_makes_the_service_not_ready_but_still_alive(
    store_url: str, ledger: Ledger
) -> None:
    with TestClient(create_app(make_settings(store_url), ledger)) as client:
        assert client.get("/readyz").status_code == 200
        ledger.close()  # the store stops answering
        body = assert_problem(client.get("/readyz"), 503, "not_ready")
        assert set(body["checks"]) == {"store"}
        assert body["checks"]["store"].startswith("the store did not answer")
        assert "store" in body["detail"]
        # Liveness is another question: the process is up.
        assert client.get("/healthz").status_code == 200


def test_stopping_nats_makes_services_not_ready_until_it_is_back(
    tmp_path: Path, nats_server: NatsServer, bus: Bus
) -> None:
    with served_federation(tmp_path, nats_server.url, bus) as federation:
        services = {"clearing": federation.clearing_client, **federation.clients}
        for name, client in services.items():
            wait_until(partial(answers, client, 200), what=f"{name} is ready")

        nats_server.stop()
        for name, client in services.items():
            wait_until(partial(answers, client, 503), what=f"{name} is not ready")
            body = assert_problem(client.get("/readyz"), 503, "not_ready")
            assert body["checks"] == {"bus": "not connected to NATS"}, name
            assert client.get("/healthz").status_code == 200

        nats_server.start()
        for name, client in services.items():
            wait_until(partial(answers, client, 200), what=f"{name} is ready again")
            assert readiness(client) == (200, {"status": "ready"})
