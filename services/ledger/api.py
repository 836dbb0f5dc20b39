"""The ledger's HTTP API: thin routes that decode a request, call the ledger once, encode."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from services.common.auth import READ_ROLES, WRITE_ROLES, TokenRegistry, role_guard
from services.common.bus_worker import BusWorker
from services.common.http import JSONBodyGuard
from services.common.idempotency import (
    IdempotencyConflict,
    InvalidIdempotencyKey,
    check_key,
    fingerprint,
)
from services.common.offload import Periodic
from services.common.problems import install_problem_handlers
from services.common.stores import parse_store_url
from services.ledger.application import (
    Executed,
    IdempotencyKey,
    Ledger,
    MemberExists,
    StoreBusy,
    UnknownBank,
    UnknownMember,
    UnknownTransfer,
)
from services.ledger.checkpoints import Checkpointer
from services.ledger.domain import (
    MAX_MEMO_LENGTH,
    MAX_NAME_LENGTH,
    HoldExists,
    InvalidRequest,
    OverdraftLimitExceeded,
    UnknownHold,
)
from services.ledger.settings import LedgerSettings
from shared.bus import Bus, bank_consumer

LEDGER_ERRORS: dict[type[Exception], tuple[int, str]] = {
    InvalidRequest: (422, "invalid_request"),
    InvalidIdempotencyKey: (422, "invalid_request"),
    UnknownMember: (404, "unknown_member"),
    UnknownBank: (404, "unknown_bank"),
    UnknownTransfer: (404, "unknown_transfer"),
    MemberExists: (409, "member_exists"),
    OverdraftLimitExceeded: (409, "overdraft_limit_exceeded"),
    IdempotencyConflict: (409, "idempotency_conflict"),
    UnknownHold: (404, "unknown_hold"),
    HoldExists: (409, "hold_exists"),
    StoreBusy: (503, "busy"),
}


# Wire shapes. Requests are strict: no unknown fields, no coercion ("5" or 5.0 is not 5).


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NewMember(RequestBody):
    member_id: str = Field(min_length=1, max_length=64, examples=["maya"])
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, examples=["Maya Okafor"])
    kind: Literal["person", "organisation"]
    overdraft_limit_minutes: int | None = Field(
        default=None, ge=0, description="Overrides the bank's default overdraft limit."
    )


class Member(BaseModel):
    member_id: str
    name: str
    kind: Literal["person", "organisation", "system"]
    balance_minutes: int
    held_minutes: int
    available_minutes: int
    overdraft_limit_minutes: int | None = Field(
        description="How far below zero the member may go; null for system accounts."
    )


class NewExchange(RequestBody):
    payer: str = Field(min_length=1, max_length=64, description="The member who received help.")
    payee: str = Field(min_length=1, max_length=64, description="The member who gave it.")
    minutes: int = Field(gt=0, examples=[90])
    memo: str = Field(max_length=MAX_MEMO_LENGTH, examples=["Lift to the hospital"])


class Exchange(BaseModel):
    exchange_id: str
    payer: str
    payee: str
    minutes: int
    memo: str
    recorded_at: datetime


class StatementEntry(BaseModel):
    at: datetime
    minutes: int = Field(description="Signed: positive when earned, negative when spent.")
    counterparty: str
    memo: str
    kind: str
    entry_id: str = Field(description="The exchange's or the cross-bank transfer's id.")


class Statement(BaseModel):
    member_id: str
    balance_minutes: int
    entries: list[StatementEntry]


class NewTransfer(RequestBody):
    payer: str = Field(min_length=1, max_length=64, description="The member who pays, here.")
    to_bank: str = Field(min_length=1, max_length=32, description="The payee's bank.")
    payee: str = Field(min_length=1, max_length=64, description="The member paid, there.")
    minutes: int = Field(gt=0, examples=[120])
    memo: str = Field(max_length=MAX_MEMO_LENGTH, examples=["Evening class at the college"])


class TransferAccepted(BaseModel):
    transfer_id: str
    status: Literal["pending"]


class Transfer(BaseModel):
    transfer_id: str
    status: Literal["pending", "committed", "aborted"]
    reason: str | None = Field(description="Why it was aborted: a stable code.")
    payer_bank: str
    payer: str
    payee_bank: str
    payee: str
    minutes: int
    memo: str


class Bank(BaseModel):
    bank: str
    members: int
    total_posted_minutes: int = Field(description="Sum of every posted balance: always 0.")


class Health(BaseModel):
    status: Literal["ok"]
    bank: str


# Dependencies.


def get_ledger(request: Request) -> Ledger:
    ledger: Ledger = request.app.state.ledger
    return ledger


def _tokens(request: Request) -> TokenRegistry:
    settings: LedgerSettings = request.app.state.settings
    return settings.tokens


LedgerDep = Annotated[Ledger, Depends(get_ledger)]
Reader = Depends(role_guard(READ_ROLES, _tokens))
Writer = Depends(role_guard(WRITE_ROLES, _tokens))
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Repeat a request safely: the first result is returned, nothing changes.",
    ),
]


def idempotency(key: str | None, operation: str, body: BaseModel) -> IdempotencyKey | None:
    if key is None:
        return None
    return IdempotencyKey(check_key(key), fingerprint(operation, body.model_dump(mode="json")))


def mark_replay(response: Response, executed: Executed[Any]) -> None:
    if executed.replayed:
        response.headers["Idempotent-Replayed"] = "true"


# Routes.

health = APIRouter(tags=["health"])
members = APIRouter(prefix="/v1/members", tags=["members"])
exchanges = APIRouter(prefix="/v1/exchanges", tags=["exchanges"])
bank = APIRouter(prefix="/v1/bank", tags=["bank"])
transfers = APIRouter(prefix="/v1/transfers", tags=["transfers"])


@health.get("/healthz")
def healthz(request: Request) -> Health:
    """Liveness: the service is up. Needs no token."""
    settings: LedgerSettings = request.app.state.settings
    return Health(status="ok", bank=settings.bank_id)


@members.post("", status_code=201, dependencies=[Writer])
def open_member(
    body: NewMember, ledger: LedgerDep, response: Response, key: IdempotencyKeyHeader = None
) -> Member:
    """Open an account for a person or an organisation, at a zero balance."""
    executed = ledger.open_member(
        body.member_id,
        body.name,
        body.kind,
        body.overdraft_limit_minutes,
        idempotency=idempotency(key, "POST /v1/members", body),
    )
    mark_replay(response, executed)
    return Member.model_validate(executed.value, from_attributes=True)


@members.get("/{member_id}", dependencies=[Reader])
def get_member(member_id: str, ledger: LedgerDep) -> Member:
    """A member's posted, held and available balance, and overdraft limit."""
    return Member.model_validate(ledger.get_member(member_id), from_attributes=True)


@members.get("/{member_id}/statement", dependencies=[Reader])
def get_statement(member_id: str, ledger: LedgerDep) -> Statement:
    """Every posted entry on a member's account, oldest first; they sum to the balance."""
    return Statement.model_validate(ledger.statement(member_id), from_attributes=True)


@exchanges.post("", status_code=201, dependencies=[Writer])
def record_exchange(
    body: NewExchange, ledger: LedgerDep, response: Response, key: IdempotencyKeyHeader = None
) -> Exchange:
    """Record a local exchange: the payer received help and pays the payee who gave it."""
    executed = ledger.exchange(
        body.payer,
        body.payee,
        body.minutes,
        body.memo,
        idempotency=idempotency(key, "POST /v1/exchanges", body),
    )
    mark_replay(response, executed)
    return Exchange.model_validate(executed.value, from_attributes=True)


@transfers.post("", status_code=202, dependencies=[Writer])
def request_transfer(
    body: NewTransfer, ledger: LedgerDep, response: Response, key: IdempotencyKeyHeader = None
) -> TransferAccepted:
    """Pay a member of another bank: the minutes are held now and move when the clearing house
    commits; poll the transfer to see its outcome."""
    executed = ledger.request_transfer(
        body.payer,
        body.to_bank,
        body.payee,
        body.minutes,
        body.memo,
        idempotency=idempotency(key, "POST /v1/transfers", body),
    )
    mark_replay(response, executed)
    return TransferAccepted(transfer_id=executed.value.transfer_id, status="pending")


@transfers.get("/{transfer_id}", dependencies=[Reader])
def get_transfer(transfer_id: str, ledger: LedgerDep) -> Transfer:
    """A cross-bank transfer as this bank sees it: pending, committed or aborted (with why)."""
    view = ledger.get_transfer(transfer_id)
    here = (ledger.bank_id, view.member_id)
    there = (view.other_bank, view.other_member)
    (payer_bank, payer), (payee_bank, payee) = (
        (here, there) if view.role == "payer" else (there, here)
    )
    return Transfer(
        transfer_id=view.transfer_id,
        status=view.status,  # type: ignore[arg-type]
        reason=view.reason,
        payer_bank=payer_bank,
        payer=payer,
        payee_bank=payee_bank,
        payee=payee,
        minutes=view.minutes,
        memo=view.memo,
    )


@bank.get("", dependencies=[Reader])
def get_bank(ledger: LedgerDep) -> Bank:
    """The bank's member count and the sum of all posted balances (zero, by double entry)."""
    return Bank.model_validate(ledger.summary(), from_attributes=True)


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


def create_app(settings: LedgerSettings, ledger: Ledger | None = None) -> FastAPI:
    """Build one bank's API. Without ``ledger``, it opens the settings' store at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = ledger is None
        app.state.ledger = ledger or Ledger(
            settings.bank_id,
            parse_store_url(settings.store_url),
            default_overdraft_minutes=settings.default_overdraft_minutes,
            max_exchange_minutes=settings.max_exchange_minutes,
        )
        worker = None
        checkpoints: Periodic | None = None
        if settings.nats_url:
            worker = ledger_bus_worker(app.state.ledger, settings.nats_url, settings.bus)
            await worker.start()
            if settings.signing_key is not None:
                checkpointer = Checkpointer(app.state.ledger, settings.signing_key)
                checkpoints = Periodic(
                    "checkpoints", checkpointer.checkpoint_and_log, settings.checkpoint_seconds
                )
                checkpoints.start()
        try:
            yield
        finally:
            if checkpoints is not None:
                await checkpoints.stop()  # nothing may still be using the store when it closes
            if worker is not None:
                await worker.stop()
            if owned:
                app.state.ledger.close()

    app = FastAPI(
        title=f"timebank ledger: {settings.bank_id}",
        summary="One time bank's event-sourced ledger, in integer minutes.",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings

    app.add_middleware(JSONBodyGuard)
    install_problem_handlers(app, LEDGER_ERRORS)
    for router in (health, members, exchanges, transfers, bank):
        app.include_router(router)
    return app
