"""``/readyz``: whether a service can do its work now. Its store must answer a cheap query, and
its bus worker, when it has one, must be connected to NATS with its consumer fetching.
``/healthz`` only says the process is up (liveness)."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.common.application import ServiceApplication
from services.common.bus_worker import BusWorker
from services.common.problems import PROBLEM_JSON, problem_body

log = logging.getLogger(__name__)

# A store slower than this to answer one query is not ready.
STORE_TIMEOUT_SECONDS = 2.0


class RunningService(Protocol):
    """What readiness needs of a service's runtime (services.common.service.Runtime)."""

    @property
    def application(self) -> ServiceApplication: ...

    @property
    def worker(self) -> BusWorker | None: ...


async def store_problem(application: ServiceApplication) -> str | None:
    """Why the store does not answer, or None when it does."""
    try:
        await asyncio.wait_for(
            asyncio.to_thread(application.recorder.max_notification_id), STORE_TIMEOUT_SECONDS
        )
    except TimeoutError:
        return f"the store did not answer within {STORE_TIMEOUT_SECONDS:g}s"
    except Exception as e:
        # The error's text may name hosts or users: it goes to the log, not to the caller.
        log.warning("readiness: the store did not answer (%s: %s)", type(e).__name__, e)
        return f"the store did not answer ({type(e).__name__})"
    return None


async def problems(runtime: RunningService | None) -> dict[str, str]:
    """What is not ready, by part (``service``, ``store``, ``bus``); empty when all is."""
    if runtime is None:
        return {"service": "starting"}
    found: dict[str, str] = {}
    if (store := await store_problem(runtime.application)) is not None:
        found["store"] = store
    if runtime.worker is not None and (bus := runtime.worker.not_ready()) is not None:
        found["bus"] = bus
    return found


class Ready(BaseModel):
    status: str = "ready"


router = APIRouter(tags=["health"])


@router.get(
    "/readyz",
    response_model=Ready,
    responses={503: {"description": "Not ready: the problem names what is not, under `checks`"}},
)
async def readyz(request: Request) -> Ready | JSONResponse:
    """Readiness: 200 once the store answers and, on the bus, NATS is connected and the
    consumer fetching; otherwise 503 ``not_ready``, naming what is not. Needs no token."""
    found = await problems(getattr(request.app.state, "runtime", None))
    if not found:
        return Ready()
    detail = "not ready: " + "; ".join(f"{part}: {why}" for part, why in found.items())
    body = problem_body(503, "not_ready", detail, request.url.path, checks=found)
    return JSONResponse(body, status_code=503, media_type=PROBLEM_JSON)
