"""The board of offers and requests over HTTP: post, list, change and withdraw them, record an
exchange or a transfer against one (saved with the offer's record of it, atomically); the
partner banks' offers their members shared with the federation; the top categories report."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from services.common.auth import READ_ROLES
from services.common.deps import Reader, Writer, WritingCaller, callers
from services.common.problems import FORBIDDEN
from services.ledger.api import (
    LEDGER_ERRORS,
    WRITE_PROBLEMS,
    IdempotencyKeyHeader,
    LedgerDep,
    RequestBody,
    idempotency,
    mark_replay,
    problems,
)
from services.ledger.directory_index import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from services.ledger.domain_offers import (
    CATEGORIES,
    MAX_OFFER_MINUTES,
    MAX_TITLE_LENGTH,
    MAX_WHERE_LENGTH,
    OfferWithdrawn,
    UnknownOffer,
)
from services.ledger.domain_terms import (
    MAX_MEMO_LENGTH,
    InvalidRequest,
    MemberInactive,
    OverdraftLimitExceeded,
    UnknownBank,
    UnknownMember,
)
from services.ledger.offer_board import (
    BoardQuery,
    CategoryReport,
    category_report,
    list_offers,
    list_partner_offers,
)
from services.ledger.offers import (
    NewOffer,
    OfferChanges,
    OfferExchangeReceipt,
    OfferPage,
    OfferTransferReceipt,
    OfferView,
    PartnerOfferPage,
    TransferParties,
    change_offer,
    get_offer,
    post_offer,
    record_exchange,
    record_transfer,
    withdraw_offer,
)

# The board's errors, registered with the ledger's (the app maps every one to its problem).
OFFER_ERRORS: dict[type[Exception], tuple[int, str]] = {
    UnknownOffer: (404, "unknown_offer"),
    OfferWithdrawn: (409, "offer_withdrawn"),
}
LEDGER_ERRORS.update(OFFER_ERRORS)

Category = Literal[
    "befriending",
    "lifts",
    "diy",
    "tutoring",
    "courses",
    "gardening",
    "shopping",
    "admin_help",
    "other",
]
if set(get_args(Category)) != set(CATEGORIES):  # pragma: no cover (a wrong edit, at import)
    raise RuntimeError("api_offers.Category must list domain_offers.CATEGORIES")
Kind = Literal["offer", "request"]
OfferMinutes = Field(
    gt=0, le=MAX_OFFER_MINUTES, description="The hours expected, in minutes.", examples=[120]
)
Memo = Field(
    default=None,
    max_length=MAX_MEMO_LENGTH,
    description="The statement's memo; by default the offer's title.",
)


class OfferTerms(RequestBody):
    kind: Kind = Field(description="offer: the member gives this help; request: needs it.")
    title: str = Field(min_length=1, max_length=MAX_TITLE_LENGTH, examples=["Lifts to the GP"])
    category: Category
    minutes: int = OfferMinutes
    where: str = Field(default="", max_length=MAX_WHERE_LENGTH, examples=["Lewisham"])
    shared_with_federation: bool = Field(
        default=False,
        description="The member's opt-in: only then do partner banks see this offer.",
    )


class NewOfferBody(OfferTerms):
    member_id: str = Field(min_length=1, max_length=64, examples=["maya"])


class OfferChangesBody(RequestBody):
    title: str | None = Field(default=None, min_length=1, max_length=MAX_TITLE_LENGTH)
    category: Category | None = None
    minutes: int | None = Field(default=None, gt=0, le=MAX_OFFER_MINUTES)
    where: str | None = Field(default=None, max_length=MAX_WHERE_LENGTH)
    shared_with_federation: bool | None = None


class OfferExchangeBody(RequestBody):
    payer: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Who received help; for a request, its member (implied).",
    )
    payee: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Who gave it; for an offer, its member (implied).",
    )
    minutes: int = Field(gt=0, examples=[90])
    memo: str | None = Memo


class OfferTransferBody(RequestBody):
    payer: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="The member here who pays; for a request here, its member (implied).",
    )
    to_bank: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="The payee's bank; for a partner's offer, its bank (implied).",
    )
    payee: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="The member paid there; for a partner's offer, its member (implied).",
    )
    minutes: int = Field(gt=0, examples=[120])
    memo: str | None = Memo


class BoardParams(BaseModel):
    """Which offers a page holds (query parameters); each given filter must match."""

    model_config = ConfigDict(extra="forbid")

    category: Category | None = None
    kind: Kind | None = None
    member: str | None = Field(default=None, max_length=64, description="A member's id.")
    q: str | None = Field(
        default=None, max_length=200, description="Text in the title or where, in any case."
    )
    status: Literal["open", "withdrawn", "all"] = "open"
    limit: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    cursor: str | None = Field(
        default=None, max_length=200, description="The previous page's next_cursor."
    )

    def query(self) -> BoardQuery:
        return BoardQuery(
            category=self.category,
            kind=self.kind,
            member=self.member,
            q=self.q,
            status=None if self.status == "all" else self.status,
        )


class PartnerBoardParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: Category | None = None
    kind: Kind | None = None
    bank: str | None = Field(default=None, max_length=32, description="A partner bank's id.")
    q: str | None = Field(
        default=None,
        max_length=200,
        description="Text in the title, where or member's name, in any case.",
    )
    limit: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    cursor: str | None = Field(default=None, max_length=200)


offers = APIRouter(prefix="/v1/offers", tags=["offers"])
# The board is every member's to read (a member's session included); writing is a coordinator's
# or the operator's, or a member's own through POST /v1/me/offers.
BoardReader = callers(*READ_ROLES, "member")
federation_offers = APIRouter(prefix="/v1/federation", tags=["offers"])
category_reports = APIRouter(prefix="/v1/reports", tags=["reports"])
CHANGE_PROBLEMS = (FORBIDDEN, InvalidRequest, UnknownOffer, OfferWithdrawn)
RECORD_PROBLEMS = (
    *WRITE_PROBLEMS,
    UnknownOffer,
    OfferWithdrawn,
    UnknownMember,
    OverdraftLimitExceeded,
    MemberInactive,
)


@offers.post(
    "",
    status_code=201,
    dependencies=[Writer],
    responses=problems(*WRITE_PROBLEMS, UnknownMember, MemberInactive),
)
def post(
    body: NewOfferBody,
    ledger: LedgerDep,
    response: Response,
    caller: WritingCaller,
    key: IdempotencyKeyHeader = None,
) -> OfferView:
    """Post what an active member offers or needs (a coordinator may, for them: recorded as
    their act). It is seen by partner banks only if `shared_with_federation` is true: the
    member's opt-in."""
    executed = post_offer(
        ledger,
        NewOffer(**body.model_dump()),
        idempotency=idempotency(key, "POST /v1/offers", body),
        by=caller,
    )
    mark_replay(response, executed)
    return executed.value


@offers.get("", dependencies=[BoardReader], responses=problems(InvalidRequest))
def list_board(params: Annotated[BoardParams, Query()], ledger: LedgerDep) -> OfferPage:
    """The bank's offers and requests, newest first, a page at a time (send `next_cursor`
    back as `cursor`; null on the last page), open ones unless `status` says otherwise."""
    return list_offers(ledger, params.query(), params.limit, params.cursor)


@offers.get("/{offer_id}", dependencies=[BoardReader], responses=problems(UnknownOffer))
def get_one(offer_id: str, ledger: LedgerDep) -> OfferView:
    """One offer or request, with the exchanges and transfers recorded against it."""
    return get_offer(ledger, offer_id)


@offers.patch("/{offer_id}", dependencies=[Writer], responses=problems(*CHANGE_PROBLEMS))
def change(offer_id: str, body: OfferChangesBody, ledger: LedgerDep) -> OfferView:
    """Change an open offer's terms or its sharing (a field left out stays as it is).
    Unsharing it withdraws it from the partner banks' boards."""
    return change_offer(ledger, offer_id, OfferChanges(**body.model_dump()))


@offers.post("/{offer_id}/withdraw", dependencies=[Writer], responses=problems(*CHANGE_PROBLEMS))
def withdraw(offer_id: str, ledger: LedgerDep) -> OfferView:
    """Withdraw an offer, for good (and from the partner banks' boards if it was shared)."""
    return withdraw_offer(ledger, offer_id)


@offers.post(
    "/{offer_id}/exchanges",
    status_code=201,
    responses=problems(*RECORD_PROBLEMS),
)
def exchange(
    offer_id: str,
    body: OfferExchangeBody,
    ledger: LedgerDep,
    response: Response,
    caller: WritingCaller,
    key: IdempotencyKeyHeader = None,
) -> OfferExchangeReceipt:
    """Record a local exchange against an open offer: its member is paid (an offer) or pays
    (a request). The exchange and the offer's record of it are saved together, or neither."""
    executed = record_exchange(
        ledger,
        offer_id,
        (body.payer, body.payee),
        body.minutes,
        body.memo,
        idempotency=idempotency(key, f"POST /v1/offers/{offer_id}/exchanges", body),
        by=caller,
    )
    mark_replay(response, executed)
    return executed.value


@offers.post(
    "/{offer_id}/transfers",
    status_code=202,
    responses=problems(*RECORD_PROBLEMS, UnknownBank),
)
def transfer(
    offer_id: str,
    body: OfferTransferBody,
    ledger: LedgerDep,
    response: Response,
    caller: WritingCaller,
    key: IdempotencyKeyHeader = None,
) -> OfferTransferReceipt:
    """Request a cross-bank transfer against an offer: a request here, whose member pays a
    member of another bank; or a partner bank's shared offer (its id as
    /v1/federation/offers lists it), whose member a member here pays. The transfer's hold
    and the offer's record of it are saved together, or neither."""
    executed = record_transfer(
        ledger,
        offer_id,
        TransferParties(body.payer, body.to_bank, body.payee),
        body.minutes,
        body.memo,
        idempotency=idempotency(key, f"POST /v1/offers/{offer_id}/transfers", body),
        by=caller,
    )
    mark_replay(response, executed)
    return executed.value


@federation_offers.get("/offers", dependencies=[BoardReader], responses=problems(InvalidRequest))
def partner_board(
    params: Annotated[PartnerBoardParams, Query()], ledger: LedgerDep
) -> PartnerOfferPage:
    """The partner banks' offers and requests that their members chose to share with the
    federation, as last relayed here by the clearing house, newest first."""
    query = BoardQuery(category=params.category, kind=params.kind, bank=params.bank, q=params.q)
    return list_partner_offers(ledger, query, params.limit, params.cursor)


@category_reports.get("/categories", dependencies=[Reader])
def top_categories(ledger: LedgerDep) -> CategoryReport:
    """The bank's top categories: minutes exchanged against offers per category (and per
    month), and its open offers and requests per category. Transfers count once committed."""
    return category_report(ledger)


ROUTERS = (offers, federation_offers, category_reports)
