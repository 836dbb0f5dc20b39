"""Where a bank's ledger service is assembled, for the CLI and the tests alike: settings ->
ledger -> bus worker -> checkpoints -> ASGI app."""

from __future__ import annotations

from fastapi import FastAPI

from services.common.bus_worker import BusWorker
from services.common.offload import Periodic
from services.common.service import HTTPFace, Runtime, asgi_app
from services.common.stores import parse_store_url
from services.ledger.api import LEDGER_ERRORS, ROUTERS
from services.ledger.application import (
    Ledger,
)
from services.ledger.checkpoints import Checkpointer
from services.ledger.settings import LedgerSettings
from shared.bus import Bus, bank_consumer


def open_ledger(settings: LedgerSettings) -> Ledger:
    """The bank's ledger on the settings' store (created when new)."""
    return Ledger(
        settings.bank_id,
        parse_store_url(settings.store_url),
        default_overdraft_minutes=settings.default_overdraft_minutes,
        max_exchange_minutes=settings.max_exchange_minutes,
    )


def ledger_bus_worker(ledger: Ledger, nats_url: str, bus: Bus) -> BusWorker:
    """The bank's link to the clearing house: its outbox out, its inbox in."""
    return BusWorker(
        ledger,
        nats_url=nats_url,
        bus=bus,
        name=f"bank-{ledger.bank_id}",
        stream=bus.to_banks_stream,
        durable=bank_consumer(ledger.bank_id),
        filter_subject=bus.to_bank(ledger.bank_id),
        receive=ledger.receive,
    )


def ledger_runtime(settings: LedgerSettings, ledger: Ledger | None = None) -> Runtime:
    """The ledger (opened here unless given) and, with NATS, its bus worker and, with a
    signing key, its checkpoints."""
    owned = ledger is None
    ledger = ledger or open_ledger(settings)
    runtime = Runtime(ledger, owns_application=owned)
    if settings.nats_url:
        runtime.worker = ledger_bus_worker(ledger, settings.nats_url, settings.bus)
        if settings.signing_key is not None:
            checkpointer = Checkpointer(ledger, settings.signing_key)
            job = Periodic(
                "checkpoints", checkpointer.checkpoint_and_log, settings.checkpoint_seconds
            )
            runtime.jobs = [job]
    return runtime


def create_app(settings: LedgerSettings, ledger: Ledger | None = None) -> FastAPI:
    """One bank's ASGI app. Without ``ledger``, it opens the settings' store at start-up."""
    face = HTTPFace(
        title=f"timebank ledger: {settings.bank_id}",
        summary="One time bank's event-sourced ledger, in integer minutes.",
        routers=ROUTERS,
        errors=LEDGER_ERRORS,
    )
    return asgi_app(face, settings, lambda: ledger_runtime(settings, ledger))
