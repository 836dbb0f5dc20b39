"""Where the clearing house's service is assembled, for the CLI and the tests alike: settings ->
clearing -> bus worker -> housekeeping -> ASGI app."""

from __future__ import annotations

import logging
import ssl
from functools import partial
from pathlib import Path

from fastapi import FastAPI

from services.clearing import ui
from services.clearing.api import CLEARING_ERRORS, ROUTERS
from services.clearing.api_reports import reports
from services.clearing.application import Clearing
from services.clearing.observability import ClearingMetrics
from services.clearing.settings import ClearingSettings
from services.common.authenticity import Authenticator
from services.common.bus_worker import BusWorker
from services.common.offload import Periodic
from services.common.service import HTTPFace, Runtime, asgi_app
from services.common.stores import parse_store_url
from services.common.ui import install_ui
from shared.bus import CLEARING_CONSUMER, Bus
from shared.protocol import CLEARING
from shared.signing import SigningKey

log = logging.getLogger(__name__)

# How often transfers past their deadline are looked for.
EXPIRY_INTERVAL_SECONDS = 1.0


def open_clearing(settings: ClearingSettings) -> Clearing:
    """The clearing house on the settings' store (created when new)."""
    return Clearing(parse_store_url(settings.store_url), deadline_seconds=settings.deadline_seconds)


def clearing_bus_worker(
    clearing: Clearing,
    nats_url: str,
    bus: Bus,
    *,
    signer: SigningKey,
    seed_file: Path | None = None,
    tls: ssl.SSLContext | None = None,
) -> BusWorker:
    """The clearing house's link to every bank: its outboxes out, signed with its own key;
    every bank's messages in, each verified against the key the bank was admitted with."""
    return BusWorker(
        clearing,
        nats_url=nats_url,
        bus=bus,
        name="clearing",
        stream=bus.to_clearing_stream,
        durable=CLEARING_CONSUMER,
        filter_subject=bus.to_clearing("*"),
        receive=clearing.receive,
        signer=signer,
        authenticator=Authenticator(bus, CLEARING, clearing.keys_of),
        seed_file=seed_file,
        tls=tls,
        administered=clearing.bank_ids,
    )


def housekeeping(clearing: Clearing) -> None:
    """Abort transfers past their deadline; repeat decisions not yet acknowledged."""
    expired = clearing.expire_overdue()
    if expired:
        log.info("aborted %d transfer(s) past their deadline", len(expired))
    resent = clearing.resend_unacknowledged()
    if resent:
        log.info("sent %d unacknowledged decision(s) again", len(resent))


def clearing_runtime(settings: ClearingSettings, clearing: Clearing | None = None) -> Runtime:
    """The clearing house (opened here unless given) and, with NATS, its bus worker and its
    housekeeping."""
    owned = clearing is None
    clearing = clearing or open_clearing(settings)
    runtime = Runtime(clearing, owns_application=owned)
    if settings.bus_link is not None:
        nats_url, key = settings.bus_link
        runtime.worker = clearing_bus_worker(
            clearing,
            nats_url,
            settings.bus,
            signer=key,
            seed_file=settings.nats_seed,
            tls=settings.nats_tls,
        )
        chores = partial(housekeeping, clearing)
        runtime.jobs = [Periodic("clearing-housekeeping", chores, EXPIRY_INTERVAL_SECONDS)]
    return runtime


def create_app(settings: ClearingSettings, clearing: Clearing | None = None) -> FastAPI:
    """The clearing house's ASGI app; without ``clearing`` it opens the settings' store."""
    face = HTTPFace(
        title="timebank clearing house",
        summary="Coordinates transfers between linked time banks and keeps their positions.",
        routers=(*ROUTERS, reports),
        errors=CLEARING_ERRORS,
    )
    metrics = ClearingMetrics()
    app = asgi_app(face, settings, lambda: clearing_runtime(settings, clearing), metrics)
    install_ui(app, ui.SITE, ui.UI_ROUTERS)
    return app
