"""Where a bank's ledger service is assembled, for the CLI and the tests alike: settings ->
ledger -> bus worker -> checkpoints -> ASGI app."""

from __future__ import annotations

import ssl
from pathlib import Path

from fastapi import FastAPI

from services.common.authenticity import Authenticator
from services.common.bus_worker import BusWorker
from services.common.offload import Periodic
from services.common.service import HTTPFace, Runtime, asgi_app
from services.common.stores import parse_store_url
from services.common.ui import install_ui
from services.ledger.api import LEDGER_ERRORS, ROUTERS
from services.ledger.api_access import access
from services.ledger.api_members import member_changes
from services.ledger.api_offers import ROUTERS as OFFER_ROUTERS
from services.ledger.api_reports import reports
from services.ledger.api_self import for_member, me
from services.ledger.application import (
    Ledger,
)
from services.ledger.checkpoints import Checkpointer
from services.ledger.observability import LedgerMetrics
from services.ledger.settings import LedgerSettings
from services.ledger.ui import ledger_site
from services.ledger.ui_pages import UI_ROUTERS
from shared.bus import Bus, bank_consumer
from shared.protocol import CLEARING
from shared.signing import SigningKey


def open_ledger(settings: LedgerSettings) -> Ledger:
    """The bank's ledger on the settings' store (created when new)."""
    return Ledger(
        settings.bank_id,
        parse_store_url(settings.store_url),
        default_overdraft_minutes=settings.default_overdraft_minutes,
        max_exchange_minutes=settings.max_exchange_minutes,
    )


def ledger_bus_worker(
    ledger: Ledger,
    nats_url: str,
    bus: Bus,
    *,
    signer: SigningKey,
    clearing_key: str,
    seed_file: Path | None = None,
    tls: ssl.SSLContext | None = None,
) -> BusWorker:
    """The bank's link to the clearing house: its outbox out, signed with the bank's key; its
    inbox in, from the clearing house only, as its key (learnt at admission) attests."""

    def keys_of(source: str, _seq: int) -> list[str]:
        return [clearing_key] if source == CLEARING else []

    return BusWorker(
        ledger,
        nats_url=nats_url,
        bus=bus,
        name=f"bank-{ledger.bank_id}",
        stream=bus.to_banks_stream,
        durable=bank_consumer(ledger.bank_id),
        filter_subject=bus.to_bank(ledger.bank_id),
        receive=ledger.receive,
        signer=signer,
        authenticator=Authenticator(bus, ledger.bank_id, keys_of),
        seed_file=seed_file,
        tls=tls,
    )


def ledger_runtime(settings: LedgerSettings, ledger: Ledger | None = None) -> Runtime:
    """The ledger (opened here unless given) and, with NATS, its bus worker and its signed
    checkpoints."""
    owned = ledger is None
    ledger = ledger or open_ledger(settings)
    runtime = Runtime(ledger, owns_application=owned)
    if settings.bus_link is not None:
        nats_url, key, clearing_key = settings.bus_link
        runtime.worker = ledger_bus_worker(
            ledger,
            nats_url,
            settings.bus,
            signer=key,
            clearing_key=clearing_key,
            seed_file=settings.nats_seed,
            tls=settings.nats_tls,
        )
        checkpointer = Checkpointer(ledger, key)
        every = settings.checkpoint_seconds
        runtime.jobs = [Periodic("checkpoints", checkpointer.checkpoint_and_log, every)]
    return runtime


def create_app(settings: LedgerSettings, ledger: Ledger | None = None) -> FastAPI:
    """One bank's ASGI app. Without ``ledger``, it opens the settings' store at start-up."""
    face = HTTPFace(
        title=f"timebank ledger: {settings.bank_id}",
        summary="One time bank's event-sourced ledger, in integer minutes.",
        routers=(*ROUTERS, member_changes, access, me, for_member, reports, *OFFER_ROUTERS),
        errors=LEDGER_ERRORS,
    )
    metrics = LedgerMetrics(settings.bank_id, LEDGER_ERRORS)
    app = asgi_app(face, settings, lambda: ledger_runtime(settings, ledger), metrics)
    install_ui(app, ledger_site(settings.bank_id), UI_ROUTERS)
    return app
