"""Prometheus metrics of one service: a registry of its own (several services can run in one
process, as in the tests), HTTP requests counted by route template, what its bus worker
reports, and its outbox's lag, read from the store when scraped."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.application import SavedEvents, ServiceApplication
from services.common.bus_worker import BusWorker
from services.common.outbox import QUEUED_TOPIC

log = logging.getLogger(__name__)

# Anything else is counted as "other", so odd methods cannot add label values without end.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A path no route matches: counted under one label value, whatever the path was.
UNMATCHED_ROUTE = "unmatched"
# The outbox's lag is counted up to this many messages (a scrape must stay cheap).
OUTBOX_LAG_LIMIT = 10_000


class ServiceMetrics:
    """Every metric of one service, in its own registry.

    Counters that follow saved events are counted by ``saved``, a save listener: it hears
    only of saves that committed, once each, so a batch that is retried or undone is never
    counted twice. Each service's subclass counts its own events there.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "timebank_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "timebank_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ["method", "route"],
            registry=self.registry,
        )
        self.inbox_gaps = Counter(
            "timebank_inbox_gaps",
            "Messages put back (NAK) because an earlier one from their sender is missing.",
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "timebank_dead_letters",
            "Messages set aside in the dead-letter stream, by why: undecodable, "
            "not_authentic or rejected.",
            ["kind"],
            registry=self.registry,
        )
        self.application: ServiceApplication | None = None
        self.worker: BusWorker | None = None
        self.registry.register(_OutboxLag(self))

    # What the bus worker reports (services.common.bus_worker.BusObserver).

    def inbox_gap(self) -> None:
        self.inbox_gaps.inc()

    def dead_letter(self, kind: str) -> None:
        self.dead_letters.labels(kind).inc()

    def saved(self, events: SavedEvents) -> None:
        """Told of every committed save, from the saving thread; a service's subclass counts
        its own events."""

    def attach(self, application: ServiceApplication, worker: BusWorker | None) -> None:
        """Start counting what this application saves and what its bus worker sees."""
        self.application = application
        self.worker = worker
        application.save_listeners.append(self.saved)
        if worker is not None:
            worker.observer = self

    def detach(self) -> None:
        if self.application is not None and self.saved in self.application.save_listeners:
            self.application.save_listeners.remove(self.saved)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in HTTP_METHODS else "other"
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(seconds)


class _OutboxLag(Collector):
    """Messages saved in the outbox but not yet published, read when scraped: the queued
    messages in the store's log after the relay's recorded position."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        # Nothing to check at registration: reading the store waits for a scrape.
        return []

    def collect(self) -> Iterator[Metric]:
        application = self._metrics.application
        worker = self._metrics.worker
        relay = worker.relay if worker is not None else None
        if application is None or relay is None:
            return
        position = relay.position
        try:
            waiting = application.recorder.select_notifications(
                position + 1, OUTBOX_LAG_LIMIT, topics=[QUEUED_TOPIC]
            )
        except Exception as e:
            log.warning("the outbox's lag could not be read (%s)", e)
            return
        yield GaugeMetricFamily(
            "timebank_outbox_lag_messages",
            f"Messages saved in the outbox, not yet published (counted up to {OUTBOX_LAG_LIMIT}).",
            value=len(waiting),
        )
        yield GaugeMetricFamily(
            "timebank_outbox_relay_position",
            "The position in the store's log up to which the relay has published.",
            value=position,
        )


def problem_code(error: BaseException, errors: Mapping[type[Exception], tuple[int, str]]) -> str:
    """The problem code an error is answered with (services.common.problems.error_problem)."""
    mapped = (errors[cls][1] for cls in type(error).__mro__ if cls in errors)
    return next(mapped, "internal_error")


def template_pattern(template: str) -> re.Pattern[str]:
    """A regular expression for the paths of a route template (``/v1/members/{member_id}``)."""
    parts = re.split(r"\{[^}]*\}", template)
    return re.compile("[^/]+".join(re.escape(part) for part in parts))


class HTTPMetrics:
    """ASGI middleware: counts every HTTP request by method, route template and status, and
    times it. A request that fails with an exception is counted as the 500 it becomes."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._templates: list[tuple[re.Pattern[str], str]] | None = None

    def route_template(self, scope: Scope) -> str:
        """The template of the route that answered (``/v1/members/{member_id}``), never the
        raw path, so ids do not become label values."""
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str) and path:
            return path
        # Answered before routing (a body the guard refused), or by no route at all: the
        # documented route whose template the path fits, if any.
        if self._templates is None:
            self._templates = self._documented_templates(scope.get("app"))
        requested = str(scope.get("path", ""))
        fits = (t for pattern, t in self._templates if pattern.fullmatch(requested))
        return next(fits, UNMATCHED_ROUTE)

    @staticmethod
    def _documented_templates(app: object) -> list[tuple[re.Pattern[str], str]]:
        if not isinstance(app, FastAPI):
            return []
        try:
            paths = app.openapi().get("paths", {})
        except Exception as e:
            log.warning("the routes' templates could not be read (%s)", e)
            return []
        # A literal segment before a parameter: /v1/transfers/batch is not a transfer's id.
        return [(template_pattern(t), t) for t in sorted(paths, key=lambda t: t.count("{"))]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            route = self.route_template(scope)
            self.metrics.observe_request(scope["method"], route, status, seconds)


router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(request: Request) -> Response:
    """The service's metrics, in Prometheus's text format. Needs no token: counts only, no
    member, bank or transfer ids."""
    registry: CollectorRegistry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def install_metrics(app: FastAPI, metrics: ServiceMetrics) -> None:
    """``/metrics``, and the middleware that counts requests (outermost, so it also counts
    what other middleware answers)."""
    app.state.metrics = metrics
    app.include_router(router)
    app.add_middleware(HTTPMetrics, metrics=metrics)
