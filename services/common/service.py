"""One running service: its application, its link to the bus and its periodic jobs, started in
that order behind its ASGI app and stopped in reverse, so nothing still uses the store when it
closes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI

from services.common.application import ServiceApplication
from services.common.bus_worker import BusWorker
from services.common.docs import documented_app
from services.common.http import JSONBodyGuard
from services.common.metrics import ServiceMetrics, install_metrics
from services.common.offload import Periodic
from services.common.problems import install_problem_handlers
from services.common.readiness import router as readiness_router
from services.common.sessions import LoginThrottle, Sessions
from shared.bus import StreamSetupError


@dataclass
class Runtime:
    """What a service runs besides its routes."""

    application: ServiceApplication
    worker: BusWorker | None = None
    jobs: Sequence[Periodic] = field(default_factory=list)
    # An application handed in by its caller is closed by that caller.
    owns_application: bool = True

    async def start(self) -> None:
        if self.worker is not None:
            await self.worker.start()
        for job in self.jobs:
            job.start()

    async def stop(self) -> None:
        for job in self.jobs:
            await job.stop()
        if self.worker is not None:
            await self.worker.stop()
        if self.owns_application:
            self.application.close()


@dataclass(frozen=True)
class HTTPFace:
    """What a service shows over HTTP: its OpenAPI title, its routes, its domain errors."""

    title: str
    summary: str
    routers: Iterable[APIRouter]
    errors: Mapping[type[Exception], tuple[int, str]]


def asgi_app(
    face: HTTPFace,
    settings: Any,
    start_runtime: Callable[[], Runtime],
    metrics: ServiceMetrics | None = None,
) -> FastAPI:
    """The service's ASGI app: at start-up it builds its runtime and starts it; at shut-down it
    stops it. Routes find the application in ``app.state.application``; ``metrics`` (the
    service's own, or the common ones) count what the runtime does."""
    metrics = metrics or ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = start_runtime()
        app.state.application = runtime.application
        observe(app, metrics, runtime)
        try:
            await runtime.start()
        except StreamSetupError as e:
            # A setting NATS refuses (3 replicas on one server): said once, in one line, and
            # the server is asked to stop; the command exits with it (cli/serve.py).
            refuse_start(app, str(e))
        try:
            yield
        finally:
            await runtime.stop()
            metrics.detach()

    app = documented_app(title=face.title, summary=face.summary, version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.sessions = Sessions()
    app.state.login_throttle = LoginThrottle()
    app.add_middleware(JSONBodyGuard)
    install_problem_handlers(app, face.errors)
    for router in face.routers:
        app.include_router(router)
    install_observability(app, metrics)
    return app


def refuse_start(app: FastAPI, reason: str) -> None:
    """Record why the service cannot run and stop its server (given by whoever serves it as
    ``app.state.stop_server``); without one (a test's client), raise."""
    app.state.refused = reason
    stop: Callable[[], None] | None = getattr(app.state, "stop_server", None)
    if stop is None:
        raise StartupRefused(reason)
    stop()


class StartupRefused(RuntimeError):
    """The service cannot start as configured; the message says why, in one line."""


def observe(app: FastAPI, metrics: ServiceMetrics, runtime: Runtime) -> None:
    """Let the metrics count what the runtime does, and /readyz check it."""
    app.state.runtime = runtime
    metrics.attach(runtime.application, runtime.worker)


def install_observability(app: FastAPI, metrics: ServiceMetrics) -> None:
    """``/metrics`` and the middleware counting requests; ``/readyz`` beside ``/healthz``."""
    install_metrics(app, metrics)
    app.include_router(readiness_router)
