"""A bank's members, listed and searched, and a coordinator's changes to a member: its name,
overdraft limit and status (suspended, reinstated, closed), each one event on its account,
replayed by the audit."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from services.common.deps import Reader, Writer
from services.common.problems import FORBIDDEN, Problem
from services.ledger.api import LedgerDep, RequestBody, problems
from services.ledger.application import Ledger
from services.ledger.domain import Account, credits_pending
from services.ledger.domain_terms import (
    FEDERATION_ACCOUNT,
    MAX_NAME_LENGTH,
    HoldsOpen,
    InvalidRequest,
    MemberClosed,
    UnknownMember,
    account_id,
)
from services.ledger.views import (
    MemberPage,
    MemberQuery,
    MemberView,
    Statement,
    StatementWindow,
)

member_changes = APIRouter(prefix="/v1/members", tags=["members"])
CHANGE_PROBLEMS = (FORBIDDEN, InvalidRequest, UnknownMember, MemberClosed)


class MemberChanges(RequestBody):
    name: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_LENGTH)
    overdraft_limit_minutes: int | None = Field(
        default=None,
        ge=0,
        description="The member's own overdraft limit; null: the bank's default from now on.",
    )


@member_changes.get("", dependencies=[Reader], responses=problems(InvalidRequest))
def list_members(query: Annotated[MemberQuery, Query()], ledger: LedgerDep) -> MemberPage:
    """Members in id order, a page at a time (send `next_cursor` back as `cursor`; null on the
    last page); `q` keeps those whose id or name contains it, in any case."""
    return ledger.members(query.q, query.limit, query.cursor, include_system=query.include_system)


class StatementQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: datetime | None = Field(
        default=None, alias="from", description="Entries at or after this moment (ISO 8601)."
    )
    end: datetime | None = Field(
        default=None, alias="to", description="Entries before this moment (ISO 8601)."
    )
    limit: int | None = Field(default=None, ge=1, le=1000, description="Default: every entry.")
    cursor: str | None = Field(default=None, max_length=20, pattern=r"^[0-9]+$")

    def window(self) -> StatementWindow:
        for moment in (self.start, self.end):
            if moment is not None and moment.tzinfo is None:
                raise InvalidRequest("from and to must say their time zone (e.g. Z)")
        return StatementWindow(self.start, self.end, int(self.cursor or 0), self.limit)


StatementParams = Annotated[StatementQuery, Query()]


@member_changes.get(
    "/{member_id}/statement",
    dependencies=[Reader],
    responses=problems(UnknownMember, InvalidRequest),
)
def get_statement(member_id: str, query: StatementParams, ledger: LedgerDep) -> Statement:
    """A member's posted entries, oldest first: all of them, or those from `from` to before
    `to`, a page of `limit` at a time (send `next_cursor` back as `cursor`). The balance is
    the member's now; the opening balance, the member's before the first entry listed."""
    return ledger.statement(member_id, query.window())


@member_changes.get(
    "/{member_id}/statement.csv",
    dependencies=[Reader],
    responses=problems(UnknownMember, InvalidRequest),
    response_class=PlainTextResponse,
)
def get_statement_csv(member_id: str, query: StatementParams, ledger: LedgerDep) -> Response:
    """The same entries as the statement, as CSV: one row each, with the balance after it."""
    return statement_csv(member_id, ledger.statement(member_id, query.window()))


def statement_csv(member_id: str, listed: Statement) -> Response:
    """A statement as a CSV download: one row an entry, with the balance after it."""
    out = io.StringIO()
    rows = csv.writer(out, lineterminator="\n")
    rows.writerow(["at", "entry_id", "kind", "counterparty", "memo", "minutes", "balance_after"])
    balance = listed.opening_balance_minutes
    for entry in listed.entries:
        balance += entry.minutes
        rows.writerow([entry.at.isoformat(), entry.entry_id, entry.kind, entry.counterparty,
                       entry.memo, entry.minutes, balance])  # fmt: skip
    filename = f"{member_id}-statement.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@member_changes.patch("/{member_id}", dependencies=[Writer], responses=problems(*CHANGE_PROBLEMS))
def change_member(member_id: str, body: MemberChanges, ledger: LedgerDep) -> MemberView:
    """Change what the body names: the member's name, or its overdraft limit (a lower limit
    refuses new spending past it and takes back nothing already spent)."""
    named = body.model_fields_set
    if not named:
        raise Problem(422, "invalid_request", "name the name or the overdraft_limit_minutes")

    def change(account: Account) -> None:
        if "name" in named:
            if body.name is None:
                raise InvalidRequest("name cannot be null")
            account.rename(body.name)
        if "overdraft_limit_minutes" in named:
            account.change_overdraft(body.overdraft_limit_minutes)

    return ledger.change_member(member_id, change)


@member_changes.post(
    "/{member_id}/suspend", dependencies=[Writer], responses=problems(*CHANGE_PROBLEMS)
)
def suspend_member(member_id: str, ledger: LedgerDep) -> MemberView:
    """Pause a member: it can neither pay nor be paid until reinstated. Transfers already
    decided are posted."""
    return ledger.change_member(member_id, Account.suspend)


@member_changes.post(
    "/{member_id}/reinstate", dependencies=[Writer], responses=problems(*CHANGE_PROBLEMS)
)
def reinstate_member(member_id: str, ledger: LedgerDep) -> MemberView:
    """Let a suspended member pay and be paid again."""
    return ledger.change_member(member_id, Account.reinstate)


@member_changes.post(
    "/{member_id}/close",
    dependencies=[Writer],
    responses=problems(*CHANGE_PROBLEMS, HoldsOpen),
)
def close_member(member_id: str, ledger: LedgerDep) -> MemberView:
    """Close a member for good: it can neither pay nor be paid, and its balance stays on the
    books (and in every report). Refused while a transfer from or to it is in flight."""
    return ledger.change_member(member_id, closing(ledger))


def closing(ledger: Ledger) -> Callable[[Account], None]:
    """The change that closes an account, refused while a credit to it is in flight."""

    def close(account: Account) -> None:
        federation = ledger.find(account_id(FEDERATION_ACCOUNT), Account)
        account.close(credits_pending(federation, account.member_id))

    return close
