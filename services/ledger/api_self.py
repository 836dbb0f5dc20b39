"""A member's own routes: its account, its statement, and paying someone here or at a partner
bank. A member's session opens only these: every other route answers 403 to it, so a member
can neither see nor spend another's account. A coordinator pays for a member who cannot
(no phone, no email) through `/v1/members/{id}/payments`, recorded as done by that coordinator."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from services.common.deps import WritingCaller, callers
from services.common.problems import FORBIDDEN
from services.common.sessions import Principal
from services.ledger.access import acting
from services.ledger.api import (
    WRITE_PROBLEMS,
    IdempotencyKeyHeader,
    LedgerDep,
    RequestBody,
    idempotency,
    mark_replay,
    problems,
)
from services.ledger.api_members import StatementParams, statement_csv
from services.ledger.api_offers import OfferTerms
from services.ledger.application import Ledger
from services.ledger.domain_terms import (
    MAX_MEMO_LENGTH,
    MemberInactive,
    OverdraftLimitExceeded,
    UnknownBank,
    UnknownMember,
)
from services.ledger.offers import NewOffer, OfferView, post_offer
from services.ledger.views import ExchangeReceipt, MemberView, Statement, TransferReceipt
from services.ledger.writer import Executed, IdempotencyKey

me = APIRouter(prefix="/v1/me", tags=["me"])
for_member = APIRouter(prefix="/v1/members", tags=["members"])
Member = Annotated[Principal, callers("member")]
PAYMENT_PROBLEMS = (
    *WRITE_PROBLEMS,
    UnknownMember,
    UnknownBank,
    OverdraftLimitExceeded,
    MemberInactive,
)


class Me(BaseModel):
    login: str
    role: str
    name: str
    member: MemberView | None = Field(description="The member's account; null for a coordinator.")


class Payment(RequestBody):
    payee: str = Field(min_length=1, max_length=64, description="The member paid.")
    bank: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="The payee's bank, when it is a partner bank; omit for this bank.",
    )
    minutes: int = Field(gt=0, examples=[60])
    memo: str = Field(max_length=MAX_MEMO_LENGTH, examples=["Help with the shopping"])


class PaymentReceipt(BaseModel):
    kind: Literal["exchange", "transfer"]
    exchange: ExchangeReceipt | None = Field(description="A payment within this bank.")
    transfer: TransferReceipt | None = Field(
        description="A payment to a partner bank: pending until the clearing house commits it."
    )


def pay(
    ledger: Ledger,
    payer: str,
    body: Payment,
    caller: Principal,
    key: IdempotencyKey | None,
) -> Executed[PaymentReceipt]:
    """Pay from ``payer``'s account: an exchange here, or a transfer to a partner bank."""
    if body.bank is None or body.bank == ledger.bank_id:
        exchange = ledger.exchange_command(payer, body.payee, body.minutes, body.memo)
        recorded = acting(ledger, exchange, caller, payer, "paid", lambda r: r.exchange_id)
        done = ledger.run(recorded, key, ExchangeReceipt)
        receipt = PaymentReceipt(kind="exchange", exchange=done.value, transfer=None)
        return Executed(receipt, done.replayed)
    transfer = ledger.transfer_command(payer, body.bank, body.payee, body.minutes, body.memo)
    sent = acting(ledger, transfer, caller, payer, "paid", lambda r: r.transfer_id)
    queued = ledger.run(sent, key, TransferReceipt)
    receipt = PaymentReceipt(kind="transfer", exchange=None, transfer=queued.value)
    return Executed(receipt, queued.replayed)


def answer(response: Response, paid: Executed[PaymentReceipt]) -> PaymentReceipt:
    mark_replay(response, paid)
    if paid.value.kind == "transfer":
        response.status_code = 202
    return paid.value


@me.get("", responses=problems(FORBIDDEN))
def who_am_i(ledger: LedgerDep, who: Annotated[Principal, callers("member", "coordinator")]) -> Me:
    """The person logged in; for a member, its account too."""
    member = ledger.get_member(who.login) if who.role == "member" else None
    return Me(login=who.login, role=who.role, name=who.name, member=member)


@me.get("/statement", responses=problems(FORBIDDEN, UnknownMember))
def my_statement(query: StatementParams, ledger: LedgerDep, who: Member) -> Statement:
    """The member's own statement (`from`, `to`, `limit`, `cursor` as for any statement)."""
    return ledger.statement(who.login, query.window())


@me.get("/statement.csv", responses=problems(FORBIDDEN, UnknownMember))
def my_statement_csv(query: StatementParams, ledger: LedgerDep, who: Member) -> Response:
    """The member's own statement as CSV."""
    return statement_csv(who.login, ledger.statement(who.login, query.window()))


@me.post("/payments", status_code=201, responses=problems(*PAYMENT_PROBLEMS))
def pay_someone(
    body: Payment,
    ledger: LedgerDep,
    response: Response,
    who: Member,
    key: IdempotencyKeyHeader = None,
) -> PaymentReceipt:
    """Pay a member of this bank (201, done) or of a partner bank (202, pending until the
    clearing house commits it) from the member's own account."""
    checked = idempotency(key, f"POST /v1/me/payments {who.login}", body)
    return answer(response, pay(ledger, who.login, body, who, checked))


@me.post("/offers", status_code=201, responses=problems(*WRITE_PROBLEMS, MemberInactive))
def post_my_offer(
    body: OfferTerms,
    ledger: LedgerDep,
    response: Response,
    who: Member,
    key: IdempotencyKeyHeader = None,
) -> OfferView:
    """Post what the member offers or needs, on the bank's board (`GET /v1/offers`); partner
    banks see it only with `shared_with_federation`: the member's own opt-in."""
    new = NewOffer(member_id=who.login, **body.model_dump())
    executed = post_offer(ledger, new, idempotency(key, f"POST /v1/me/offers {who.login}", body))
    mark_replay(response, executed)
    return executed.value


@for_member.post("/{member_id}/payments", status_code=201, responses=problems(*PAYMENT_PROBLEMS))
def pay_for_member(
    member_id: str,
    body: Payment,
    ledger: LedgerDep,
    response: Response,
    caller: WritingCaller,
    key: IdempotencyKeyHeader = None,
) -> PaymentReceipt:
    """Pay from a member's account for them (a coordinator for a member without a phone or
    email): as `/v1/me/payments`, and recorded as done by the coordinator."""
    checked = idempotency(key, f"POST /v1/members/{member_id}/payments", body)
    return answer(response, pay(ledger, member_id, body, caller, checked))
