"""The clearing house's HTTP API: the directory of banks, positions and transfers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from services.clearing.application import (
    BankExists,
    Clearing,
    UnknownBank,
    UnknownTransfer,
)
from services.clearing.domain import InvalidRequest
from services.clearing.settings import ClearingSettings
from services.common.auth import READ_ROLES, WRITE_ROLES, TokenRegistry, role_guard
from services.common.bus_worker import BusWorker
from services.common.http import JSONBodyGuard
from services.common.problems import install_problem_handlers
from services.common.stores import parse_store_url
from shared.bus import CLEARING_CONSUMER, Bus

log = logging.getLogger(__name__)

# How often transfers past their deadline are looked for.
EXPIRY_INTERVAL_SECONDS = 1.0

CLEARING_ERRORS: dict[type[Exception], tuple[int, str]] = {
    InvalidRequest: (422, "invalid_request"),
    UnknownBank: (404, "unknown_bank"),
    UnknownTransfer: (404, "unknown_transfer"),
    BankExists: (409, "bank_exists"),
}


class NewBank(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    bank_id: str = Field(min_length=1, max_length=32, examples=["rushey-green"])
    name: str = Field(min_length=1, max_length=200, examples=["Rushey Green Time Bank"])
    limit_minutes: int = Field(ge=0, description="How far the bank may owe the federation.")


class Bank(BaseModel):
    bank_id: str
    name: str
    status: Literal["active", "suspended"]
    limit_minutes: int
    position_minutes: int = Field(description="What the federation owes the bank (< 0: owes).")
    reserved_minutes: int = Field(description="Held for transfers not yet decided.")


class Banks(BaseModel):
    banks: list[Bank]


class Positions(BaseModel):
    positions: dict[str, int]
    sum_minutes: int = Field(description="Always 0: every minute one bank owes, another is owed.")


class Transfer(BaseModel):
    transfer_id: str
    status: Literal["preparing", "committed", "aborted"]
    reason: str | None
    detail: str
    payer_bank: str
    payer: str
    payee_bank: str
    payee: str
    minutes: int
    memo: str
    deadline: datetime
    acknowledged_by: list[str]


class Health(BaseModel):
    status: Literal["ok"]
    service: Literal["clearing"]


def get_clearing(request: Request) -> Clearing:
    clearing: Clearing = request.app.state.clearing
    return clearing


def _tokens(request: Request) -> TokenRegistry:
    settings: ClearingSettings = request.app.state.settings
    return settings.tokens


ClearingDep = Annotated[Clearing, Depends(get_clearing)]
Reader = Depends(role_guard(READ_ROLES, _tokens))
Admin = Depends(role_guard(WRITE_ROLES, _tokens))

health = APIRouter(tags=["health"])
banks = APIRouter(prefix="/v1/banks", tags=["banks"])
positions = APIRouter(prefix="/v1/positions", tags=["positions"])
transfers = APIRouter(prefix="/v1/transfers", tags=["transfers"])


@health.get("/healthz")
def healthz() -> Health:
    """Liveness: the service is up. Needs no token."""
    return Health(status="ok", service="clearing")


@banks.post("", status_code=201, dependencies=[Admin])
def admit_bank(body: NewBank, clearing: ClearingDep) -> Bank:
    """Admit a bank to the federation with a limit on what it may owe."""
    view = clearing.admit_bank(body.bank_id, body.name, body.limit_minutes)
    return Bank.model_validate(view, from_attributes=True)


@banks.get("", dependencies=[Reader])
def list_banks(clearing: ClearingDep) -> Banks:
    """Every member bank with its status, limit, position and reservations."""
    return Banks(banks=[Bank.model_validate(b, from_attributes=True) for b in clearing.banks()])


@banks.post("/{bank_id}/suspend", dependencies=[Admin])
def suspend_bank(bank_id: str, clearing: ClearingDep) -> Bank:
    """Stop new transfers to and from a bank; transfers already decided are not affected."""
    return Bank.model_validate(clearing.suspend_bank(bank_id), from_attributes=True)


@banks.post("/{bank_id}/reinstate", dependencies=[Admin])
def reinstate_bank(bank_id: str, clearing: ClearingDep) -> Bank:
    """Let a suspended bank take part again."""
    return Bank.model_validate(clearing.reinstate_bank(bank_id), from_attributes=True)


@positions.get("", dependencies=[Reader])
def get_positions(clearing: ClearingDep) -> Positions:
    """Each bank's net position against the federation; they sum to zero."""
    by_bank = clearing.positions()
    return Positions(positions=by_bank, sum_minutes=sum(by_bank.values()))


@transfers.get("/{transfer_id}", dependencies=[Reader])
def get_transfer(transfer_id: str, clearing: ClearingDep) -> Transfer:
    """A cross-bank transfer as the coordinator sees it."""
    return Transfer.model_validate(clearing.get_transfer(transfer_id), from_attributes=True)


def clearing_bus_worker(clearing: Clearing, nats_url: str, bus: Bus) -> BusWorker:
    return BusWorker(
        clearing,
        nats_url=nats_url,
        bus=bus,
        name="clearing",
        stream=bus.to_clearing_stream,
        durable=CLEARING_CONSUMER,
        filter_subject=bus.to_clearing("*"),
        receive=clearing.receive,
    )


async def housekeeping_forever(clearing: Clearing) -> None:
    """Abort transfers past their deadline; repeat decisions not yet acknowledged."""
    while True:
        try:
            expired = await asyncio.to_thread(clearing.expire_overdue)
            if expired:
                log.info("aborted %d transfer(s) past their deadline", len(expired))
            resent = await asyncio.to_thread(clearing.resend_unacknowledged)
            if resent:
                log.info("sent %d unacknowledged decision(s) again", len(resent))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("housekeeping failed; trying again")
        await asyncio.sleep(EXPIRY_INTERVAL_SECONDS)


def create_app(settings: ClearingSettings, clearing: Clearing | None = None) -> FastAPI:
    """Build the clearing house's API; without ``clearing`` it opens the settings' store."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = clearing is None
        app.state.clearing = clearing or Clearing(
            parse_store_url(settings.store_url), deadline_seconds=settings.deadline_seconds
        )
        worker = None
        expiry = None
        if settings.nats_url:
            worker = clearing_bus_worker(app.state.clearing, settings.nats_url, settings.bus)
            await worker.start()
            expiry = asyncio.create_task(housekeeping_forever(app.state.clearing))
        try:
            yield
        finally:
            if expiry is not None:
                expiry.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await expiry
            if worker is not None:
                await worker.stop()
            if owned:
                app.state.clearing.close()

    app = FastAPI(
        title="timebank clearing house",
        summary="Coordinates transfers between linked time banks and keeps their positions.",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(JSONBodyGuard)
    install_problem_handlers(app, CLEARING_ERRORS)
    for router in (health, banks, positions, transfers):
        app.include_router(router)
    return app
