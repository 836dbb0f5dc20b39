"""The clearing house's HTTP API: the directory of banks, positions and transfers."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from services.clearing.application import Clearing
from services.clearing.domain_terms import (
    BadSignature,
    BankExists,
    InvalidRequest,
    ProtocolViolation,
    SettlementBlocked,
    UnknownBank,
    UnknownTransfer,
)
from services.clearing.settings import ClearingSettings
from services.clearing.settlement import (
    NotCreditor,
    SettlementOpen,
    UnknownObligation,
    UnknownSettlement,
)
from services.clearing.views import BankView, SettlementView, TransferView
from services.common.auth import BearerScheme, bearer_token, digest
from services.common.deps import Reader, Writer, application
from services.common.problems import (
    FORBIDDEN,
    Problem,
    ProblemSource,
    Responses,
    problem_responses,
)

CLEARING_ERRORS: dict[type[Exception], tuple[int, str]] = {
    InvalidRequest: (422, "invalid_request"),
    # No request reaches a protocol step today; were one to, it answers as it always has.
    ProtocolViolation: (422, "invalid_request"),
    UnknownBank: (404, "unknown_bank"),
    UnknownTransfer: (404, "unknown_transfer"),
    BankExists: (409, "bank_exists"),
    UnknownSettlement: (404, "unknown_settlement"),
    UnknownObligation: (404, "unknown_obligation"),
    SettlementOpen: (409, "settlement_open"),
    SettlementBlocked: (409, "transfers_in_flight"),
    NotCreditor: (403, "not_creditor"),
    BadSignature: (403, "bad_signature"),
}


def problems(*sources: ProblemSource) -> Responses:
    """A route's problems for its OpenAPI description, besides those its shape implies (a
    token, a body: services/common/docs.py)."""
    return problem_responses(CLEARING_ERRORS, *sources)


class NewBank(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    bank_id: str = Field(min_length=1, max_length=32, examples=["rushey-green"])
    name: str = Field(min_length=1, max_length=200, examples=["Rushey Green Time Bank"])
    limit_minutes: int = Field(ge=0, description="How far the bank may owe the federation.")
    public_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="The bank's Ed25519 public key, base64 (`timebank keys new`): the "
        "clearing house accepts the bank's log checkpoints only when signed by its key.",
    )
    nats_key: str | None = Field(
        default=None,
        min_length=56,
        max_length=56,
        description="The bank's NATS user, its public nkey (`timebank keys nats`): where the "
        "federation's NATS users follow the clearing house's directory (`timebank up`), "
        "admitting the bank gives that user the bank's permissions, by a config reload.",
    )


@dataclass(frozen=True)
class AdmittedBank(BankView):
    clearing_token: str = field(
        metadata={
            "description": "The bank's token at this API (to confirm settlement receipts). "
            "Shown once: the clearing house keeps only its digest."
        }
    )
    clearing_public_key: str | None = field(
        default=None,
        metadata={
            "description": "The clearing house's Ed25519 public key (base64): the bank applies "
            "only what this key signed (`ledger serve --clearing-key`)."
        },
    )


class Banks(BaseModel):
    banks: list[BankView]


class Positions(BaseModel):
    positions: dict[str, int]
    sum_minutes: int = Field(description="Always 0: every minute one bank owes, another is owed.")


class Settlements(BaseModel):
    settlements: list[SettlementView]


class Health(BaseModel):
    status: Literal["ok"]
    service: Literal["clearing"]


ClearingDep = Annotated[Clearing, Depends(application(Clearing))]


def calling_bank(request: Request, clearing: ClearingDep, _scheme: BearerScheme) -> str:
    """The member bank whose clearing-house token (given at admission) the caller presented."""
    token = bearer_token(request)
    bank_id = clearing.bank_with_token_digest(digest(token).hex()) if token else None
    if bank_id is None:
        raise Problem(
            401,
            "unauthorized",
            "a member bank's clearing token is required",
            headers={"WWW-Authenticate": 'Bearer realm="timebank"'},
        )
    return bank_id


CallingBank = Annotated[str, Depends(calling_bank)]
# The clearing house's writers are its administrators.
Admin = Writer

health = APIRouter(tags=["health"])
banks = APIRouter(prefix="/v1/banks", tags=["banks"])
positions = APIRouter(prefix="/v1/positions", tags=["positions"])
transfers = APIRouter(prefix="/v1/transfers", tags=["transfers"])
settlements = APIRouter(prefix="/v1/settlements", tags=["settlements"])


@health.get("/healthz")
def healthz() -> Health:
    """Liveness: the service is up. Needs no token."""
    return Health(status="ok", service="clearing")


@banks.post(
    "",
    status_code=201,
    dependencies=[Admin],
    responses=problems(FORBIDDEN, InvalidRequest, BankExists),
)
def admit_bank(body: NewBank, clearing: ClearingDep, request: Request) -> AdmittedBank:
    """Admit a bank to the federation with a limit on what it may owe. The answer holds the
    bank's own token at this API, shown this once."""
    token = secrets.token_urlsafe(32)
    view = clearing.admit_bank(
        body.bank_id,
        body.name,
        body.limit_minutes,
        digest(token).hex(),
        body.public_key or "",
        body.nats_key or "",
    )
    settings: ClearingSettings = request.app.state.settings
    key = settings.signing_key.public_key if settings.signing_key is not None else None
    return AdmittedBank(**asdict(view), clearing_token=token, clearing_public_key=key)


class BankToken(BaseModel):
    bank_id: str
    clearing_token: str = Field(description="Shown once; the previous token stops working.")


@banks.post("/{bank_id}/token", dependencies=[Admin], responses=problems(FORBIDDEN, UnknownBank))
def issue_bank_token(bank_id: str, clearing: ClearingDep) -> BankToken:
    """Give a bank a new token at this API, when its token was lost or leaked."""
    token = secrets.token_urlsafe(32)
    clearing.issue_token(bank_id, digest(token).hex())
    return BankToken(bank_id=bank_id, clearing_token=token)


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    public_key: str = Field(min_length=1, max_length=64, description="The new key, base64.")
    previous_key_until_seq: int = Field(
        ge=0,
        description="The sequence number of the bank's last message to the clearing house "
        "signed with its current key; later ones are signed with the new key.",
    )
    signature: str = Field(
        min_length=1,
        max_length=200,
        description="By the bank's current key, over `timebank-key-rotation-v1\\n<bank>\\n"
        "<new key>\\n<previous_key_until_seq>`.",
    )


@banks.post("/{bank_id}/key", responses=problems(FORBIDDEN, BadSignature, InvalidRequest))
def rotate_bank_key(
    bank_id: str, body: NewKey, clearing: ClearingDep, calling: CallingBank
) -> BankView:
    """A bank registers a new signing key, with its own clearing token, the request signed
    with its current key: neither the admin nor anyone holding only a token can do it."""
    if calling != bank_id:
        raise Problem(403, "forbidden", f"only {bank_id} may register a key for itself")
    return clearing.rotate_key(
        bank_id, body.public_key, body.previous_key_until_seq, body.signature
    )


@banks.get("", dependencies=[Reader])
def list_banks(clearing: ClearingDep) -> Banks:
    """Every member bank with its status, limit, position and reservations."""
    return Banks(banks=clearing.banks())


class BankChanges(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(default=None, min_length=1, max_length=200)
    limit_minutes: int | None = Field(
        default=None, ge=0, description="How far the bank may owe the federation."
    )


@banks.patch(
    "/{bank_id}",
    dependencies=[Admin],
    responses=problems(FORBIDDEN, UnknownBank, InvalidRequest),
)
def change_bank(bank_id: str, body: BankChanges, clearing: ClearingDep) -> BankView:
    """Change a bank's name or limit (only what the body names). A lower limit refuses new
    transfers that would pass it; transfers already reserved stand."""
    if body.name is None and body.limit_minutes is None:
        raise Problem(422, "invalid_request", "name the name or the limit_minutes to change")
    return clearing.change_bank(bank_id, body.name, body.limit_minutes)


@banks.post("/{bank_id}/suspend", dependencies=[Admin], responses=problems(FORBIDDEN, UnknownBank))
def suspend_bank(bank_id: str, clearing: ClearingDep) -> BankView:
    """Stop new transfers to and from a bank; transfers already decided are not affected."""
    return clearing.suspend_bank(bank_id)


@banks.post(
    "/{bank_id}/reinstate", dependencies=[Admin], responses=problems(FORBIDDEN, UnknownBank)
)
def reinstate_bank(bank_id: str, clearing: ClearingDep) -> BankView:
    """Let a suspended bank take part again."""
    return clearing.reinstate_bank(bank_id)


@positions.get("", dependencies=[Reader])
def get_positions(clearing: ClearingDep) -> Positions:
    """Each bank's net position against the federation; they sum to zero."""
    by_bank = clearing.positions()
    return Positions(positions=by_bank, sum_minutes=sum(by_bank.values()))


class Transfers(BaseModel):
    transfers: list[TransferView]


@transfers.get("", dependencies=[Reader])
def list_transfers(clearing: ClearingDep, status: Literal["stuck"]) -> Transfers:
    """Transfers in a state an operator must look at. ``stuck``: decided, but some bank has
    not applied the decision after every re-send (the clearing house re-sends with a growing
    pause, a bounded number of times, then stops and lists the transfer here)."""
    return Transfers(transfers=clearing.stuck_transfers())


@transfers.get("/{transfer_id}", dependencies=[Reader], responses=problems(UnknownTransfer))
def get_transfer(transfer_id: str, clearing: ClearingDep) -> TransferView:
    """A cross-bank transfer as the coordinator sees it."""
    return clearing.get_transfer(transfer_id)


@settlements.post(
    "",
    status_code=201,
    dependencies=[Admin],
    responses=problems(FORBIDDEN, SettlementOpen, SettlementBlocked),
)
def open_settlement(clearing: ClearingDep) -> SettlementView:
    """Close a settlement cycle now: each bank's position from the transfers committed so far,
    and the fewest obligations (debtor bank pays creditor bank) that settle them. One cycle is
    open at a time; a cycle with nothing to settle completes at once."""
    return clearing.open_settlement()


@settlements.get("", dependencies=[Reader])
def list_settlements(clearing: ClearingDep) -> Settlements:
    """Every settlement cycle, oldest first."""
    return Settlements(settlements=clearing.settlements())


@settlements.get("/{settlement_id}", dependencies=[Reader], responses=problems(UnknownSettlement))
def get_settlement(settlement_id: int, clearing: ClearingDep) -> SettlementView:
    """A cycle: positions at its cut-off, its obligations, and each one's status."""
    return clearing.get_settlement(settlement_id)


class Confirmation(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    signature: str = Field(
        min_length=1,
        max_length=200,
        description="The creditor bank's Ed25519 signature (base64), by the key it was "
        "admitted with, over `timebank-settlement-confirmation-v1\\n<bank>\\n<settlement>\\n"
        "<number>` (`timebank settle confirm` makes it).",
    )


@settlements.post(
    "/{settlement_id}/obligations/{number}/confirm",
    responses=problems(UnknownSettlement, UnknownObligation, NotCreditor, BadSignature),
)
def confirm_obligation(
    settlement_id: int,
    number: int,
    body: Confirmation,
    clearing: ClearingDep,
    bank_id: CallingBank,
) -> SettlementView:
    """The creditor bank, with its clearing token and a signature by its own key, records
    that it was paid; neither the admin nor a reissued token can do it for the bank.
    Confirming again changes nothing. When every obligation is confirmed, the cycle
    completes: positions move by the settled amounts and each bank posts the same between
    its federation and settlement accounts."""
    return clearing.confirm_obligation(settlement_id, number, bank_id, body.signature)


ROUTERS = (health, banks, positions, transfers, settlements)
