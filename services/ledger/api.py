"""The ledger's HTTP API: thin routes that decode a request, call the ledger once, encode."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.deps import Reader, Writer, application
from services.common.idempotency import (
    IdempotencyConflict,
    InvalidIdempotencyKey,
    check_key,
    fingerprint,
)
from services.common.problems import (
    FORBIDDEN,
    ProblemSource,
    Responses,
    error_problem,
    problem_responses,
    validation_problem,
)
from services.ledger.application import Ledger
from services.ledger.domain_access import InvitationRefused, LoginExists
from services.ledger.domain_terms import (
    MAX_MEMO_LENGTH,
    MAX_NAME_LENGTH,
    HoldExists,
    HoldsOpen,
    InvalidRequest,
    MemberClosed,
    MemberExists,
    MemberInactive,
    OverdraftLimitExceeded,
    UnknownBank,
    UnknownHold,
    UnknownMember,
    UnknownTransfer,
)
from services.ledger.observability import LedgerMetricsDep
from services.ledger.orders import ExchangeOrder, TransferOrder
from services.ledger.settings import LedgerSettings
from services.ledger.views import (
    BankSummary,
    CrossBankTransferView,
    ExchangeReceipt,
    MemberView,
    TransferReceipt,
)
from services.ledger.writer import Executed, IdempotencyKey, StoreBusy

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
    MemberInactive: (409, "member_inactive"),
    MemberClosed: (409, "member_closed"),
    HoldsOpen: (409, "holds_open"),
    LoginExists: (409, "login_exists"),
    InvitationRefused: (403, "invitation_refused"),
    StoreBusy: (503, "busy"),
}


def problems(*sources: ProblemSource) -> Responses:
    """A route's problems for its OpenAPI description, besides those its shape implies (a
    token, a body: services/common/docs.py)."""
    return problem_responses(LEDGER_ERRORS, *sources)


# What any single write can answer, besides the refusals of its own.
WRITE_PROBLEMS = (FORBIDDEN, InvalidRequest, IdempotencyConflict, StoreBusy)


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


class NewExchange(RequestBody):
    payer: str = Field(min_length=1, max_length=64, description="The member who received help.")
    payee: str = Field(min_length=1, max_length=64, description="The member who gave it.")
    minutes: int = Field(gt=0, examples=[90])
    memo: str = Field(max_length=MAX_MEMO_LENGTH, examples=["Lift to the hospital"])


class NewTransfer(RequestBody):
    payer: str = Field(min_length=1, max_length=64, description="The member who pays, here.")
    to_bank: str = Field(min_length=1, max_length=32, description="The payee's bank.")
    payee: str = Field(min_length=1, max_length=64, description="The member paid, there.")
    minutes: int = Field(gt=0, examples=[120])
    memo: str = Field(max_length=MAX_MEMO_LENGTH, examples=["Evening class at the college"])


MAX_BATCH_ITEMS = 1_000
IdempotencyKeyField = Field(
    default=None,
    description="This item's own Idempotency-Key: a repeat of the item (in any batch, or as "
    "a single request with the same key) returns its first result and changes nothing.",
)


class ExchangeItem(NewExchange):
    idempotency_key: str | None = IdempotencyKeyField


class TransferItem(NewTransfer):
    idempotency_key: str | None = IdempotencyKeyField


class Batch(RequestBody):
    items: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_BATCH_ITEMS,
        description="Each item is checked, decided and answered on its own.",
    )


class ItemResult(BaseModel):
    """One item's answer: its status as a single request would have had it, and its result
    or its problem details."""

    status: int
    replayed: bool = False
    problem: dict[str, Any] | None = None


class ExchangeItemResult(ItemResult):
    exchange: ExchangeReceipt | None = None


class TransferItemResult(ItemResult):
    transfer: TransferReceipt | None = None


class ExchangeBatchResults(BaseModel):
    results: list[ExchangeItemResult]


class TransferBatchResults(BaseModel):
    results: list[TransferItemResult]


class Health(BaseModel):
    status: Literal["ok"]
    bank: str


# Dependencies.

LedgerDep = Annotated[Ledger, Depends(application(Ledger))]
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


@members.post(
    "",
    status_code=201,
    dependencies=[Writer],
    responses=problems(*WRITE_PROBLEMS, MemberExists),
)
def open_member(
    body: NewMember, ledger: LedgerDep, response: Response, key: IdempotencyKeyHeader = None
) -> MemberView:
    """Open an account for a person or an organisation, at a zero balance."""
    executed = ledger.open_member(
        body.member_id,
        body.name,
        body.kind,
        body.overdraft_limit_minutes,
        idempotency=idempotency(key, "POST /v1/members", body),
    )
    mark_replay(response, executed)
    return executed.value


@members.get("/{member_id}", dependencies=[Reader], responses=problems(UnknownMember))
def get_member(member_id: str, ledger: LedgerDep) -> MemberView:
    """A member's posted, held and available balance, and overdraft limit."""
    return ledger.get_member(member_id)


@exchanges.post(
    "",
    status_code=201,
    dependencies=[Writer],
    responses=problems(*WRITE_PROBLEMS, UnknownMember, OverdraftLimitExceeded, MemberInactive),
)
def record_exchange(
    body: NewExchange,
    ledger: LedgerDep,
    response: Response,
    metrics: LedgerMetricsDep,
    key: IdempotencyKeyHeader = None,
) -> ExchangeReceipt:
    """Record a local exchange: the payer received help and pays the payee who gave it."""
    idempotency_key = idempotency(key, "POST /v1/exchanges", body)
    try:
        executed = ledger.exchange(
            body.payer, body.payee, body.minutes, body.memo, idempotency=idempotency_key
        )
    except Exception as e:
        metrics.exchange_refused(e)
        raise
    mark_replay(response, executed)
    return executed.value


@transfers.post(
    "",
    status_code=202,
    dependencies=[Writer],
    responses=problems(
        *WRITE_PROBLEMS, UnknownMember, UnknownBank, OverdraftLimitExceeded, MemberInactive
    ),
)
def request_transfer(
    body: NewTransfer, ledger: LedgerDep, response: Response, key: IdempotencyKeyHeader = None
) -> TransferReceipt:
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
    return executed.value


ItemT = TypeVar("ItemT", bound=RequestBody)
OrderT = TypeVar("OrderT")
ResultT = TypeVar("ResultT")


def decode_items(
    batch: Batch, item_type: type[ItemT], operation: str, instance: str
) -> list[tuple[ItemT, IdempotencyKey | None] | dict[str, Any]]:
    """Each item checked on its own: the item and its idempotency key, or its problem."""
    decoded: list[tuple[ItemT, IdempotencyKey | None] | dict[str, Any]] = []
    for n, raw in enumerate(batch.items):
        try:
            item = item_type.model_validate(raw)
            key = getattr(item, "idempotency_key", None)
            body = item.model_dump(mode="json", exclude={"idempotency_key"})
            decoded.append(
                (item, key and IdempotencyKey(check_key(key), fingerprint(operation, body)))
            )
        except ValidationError as e:
            decoded.append(validation_problem(e.errors(), f"{instance}#{n}", skip=0))
        except InvalidIdempotencyKey as e:
            decoded.append(error_problem(e, LEDGER_ERRORS, f"{instance}#{n}"))
    return decoded


def run_batch(
    decoded: Sequence[tuple[ItemT, IdempotencyKey | None] | dict[str, Any]],
    order: Callable[[ItemT, IdempotencyKey | None], OrderT],
    execute: Callable[[list[OrderT]], list[Executed[ResultT] | Exception]],
    instance: str,
) -> list[tuple[int, Executed[ResultT] | dict[str, Any]]]:
    """The valid items executed together, in order; each answer as (its place, the result or
    its problem)."""
    places = [n for n, d in enumerate(decoded) if isinstance(d, tuple)]
    orders = [order(*d) for d in decoded if isinstance(d, tuple)]
    answers: dict[int, Executed[ResultT] | dict[str, Any]] = {
        n: d for n, d in enumerate(decoded) if isinstance(d, dict)
    }
    for n, outcome in zip(places, execute(orders) if orders else [], strict=True):
        if isinstance(outcome, Exception):
            answers[n] = error_problem(outcome, LEDGER_ERRORS, f"{instance}#{n}")
        else:
            answers[n] = outcome
    return sorted(answers.items())


@exchanges.post("/batch", dependencies=[Writer], responses=problems(FORBIDDEN))
def record_exchanges(
    body: Batch, ledger: LedgerDep, metrics: LedgerMetricsDep
) -> ExchangeBatchResults:
    """Record up to 1,000 local exchanges in one request, decided in order and saved together.
    Not all-or-nothing: each item is accepted (201) or refused (its problem details) on its
    own, exactly as it would be alone, and may carry its own `idempotency_key`."""
    instance = "/v1/exchanges/batch"
    answers = run_batch(
        decode_items(body, ExchangeItem, "POST /v1/exchanges", instance),
        lambda item, key: ExchangeOrder(item.payer, item.payee, item.minutes, item.memo, key),
        metrics.exchange_refusals_counted(ledger.exchange_all),
        instance,
    )
    return ExchangeBatchResults(
        results=[
            ExchangeItemResult(status=a["status"], problem=a)
            if isinstance(a, dict)
            else ExchangeItemResult(status=201, replayed=a.replayed, exchange=a.value)
            for _, a in answers
        ]
    )


@transfers.post("/batch", dependencies=[Writer], responses=problems(FORBIDDEN))
def request_transfers(body: Batch, ledger: LedgerDep) -> TransferBatchResults:
    """Request up to 1,000 cross-bank transfers in one request, each held and sent on its own
    (202), or refused with its problem details; not all-or-nothing. Each item may carry its
    own `idempotency_key`."""
    instance = "/v1/transfers/batch"
    answers = run_batch(
        decode_items(body, TransferItem, "POST /v1/transfers", instance),
        lambda item, key: TransferOrder(
            item.payer, item.to_bank, item.payee, item.minutes, item.memo, key
        ),
        ledger.request_transfer_all,
        instance,
    )
    return TransferBatchResults(
        results=[
            TransferItemResult(status=a["status"], problem=a)
            if isinstance(a, dict)
            else TransferItemResult(status=202, replayed=a.replayed, transfer=a.value)
            for _, a in answers
        ]
    )


@transfers.get("/{transfer_id}", dependencies=[Reader], responses=problems(UnknownTransfer))
def get_transfer(transfer_id: str, ledger: LedgerDep) -> CrossBankTransferView:
    """A cross-bank transfer as this bank sees it: pending, committed or aborted (with why)."""
    return ledger.get_transfer(transfer_id)


@bank.get("", dependencies=[Reader])
def get_bank(ledger: LedgerDep) -> BankSummary:
    """The bank's member count and the sum of all posted balances (zero, by double entry)."""
    return ledger.summary()


ROUTERS = (health, members, exchanges, transfers, bank)
