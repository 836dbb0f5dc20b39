"""A bank's reports over HTTP: its activity month by month, and its impact report for the
institution and its commissioners, as JSON and as CSV (reports.py says what counts)."""

from __future__ import annotations

import csv
import io
from dataclasses import astuple
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from services.common.deps import Reader
from services.common.problems import FORBIDDEN
from services.ledger.api import LedgerDep, problems
from services.ledger.domain_terms import InvalidRequest
from services.ledger.reports import (
    IMPACT_COLUMNS,
    MAX_MONTHS,
    MONTH_PATTERN,
    ImpactReport,
    MonthlyReport,
    Window,
    impact_report,
    monthly_report,
)

reports = APIRouter(prefix="/v1/reports", tags=["reports"])
CSV_RESPONSE = {
    "description": "The report as CSV: a header row, a row a month, then the total row.",
    "content": {"text/csv": {"schema": {"type": "string"}}},
}


class ReportQuery(BaseModel):
    """The report's months: from ``from`` to ``to``, both included (calendar months, UTC)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: str = Field(
        alias="from",
        pattern=MONTH_PATTERN,
        description="The first month, YYYY-MM.",
        examples=["2026-01"],
    )
    end: str = Field(
        alias="to",
        pattern=MONTH_PATTERN,
        description=f"The last month, YYYY-MM; at most {MAX_MONTHS} months after `from`.",
        examples=["2026-12"],
    )

    def window(self) -> Window:
        return Window.between(self.start, self.end)


ReportParams = Annotated[ReportQuery, Query()]


@reports.get("/monthly", dependencies=[Reader], responses=problems(FORBIDDEN, InvalidRequest))
def get_monthly(query: ReportParams, ledger: LedgerDep) -> MonthlyReport:
    """Each month of the window (UTC), quiet ones included: the local exchanges and their
    minutes, the members active (who paid or were paid, here or across banks) and the members
    opened. With, at the time of the call, the members by status and the sum of their
    balances (a closed member's balance stays counted). The bank's own accounts never count."""
    return monthly_report(ledger, query.window())


@reports.get("/impact", dependencies=[Reader], responses=problems(FORBIDDEN, InvalidRequest))
def get_impact(query: ReportParams, ledger: LedgerDep) -> ImpactReport:
    """The impact report, month by month and in total: hours given and received within the
    bank (in minutes, and as hours), people active, new members, minutes this bank's members
    spent at partner banks and partner banks' members spent here (committed transfers only).
    The total's `active_members` counts each person once."""
    return impact_report(ledger, query.window())


@reports.get(
    "/impact.csv",
    dependencies=[Reader],
    responses={**problems(FORBIDDEN, InvalidRequest), 200: CSV_RESPONSE},
    response_class=Response,
)
def get_impact_csv(query: ReportParams, ledger: LedgerDep) -> Response:
    """The impact report as CSV: a header row, one row per month, then the `total` row. The
    columns, in this order, stay as they are: month, exchanges, exchanged_minutes, hours
    (exchanged_minutes as hours, two decimals), active_members, new_members, transfers_out,
    transfers_out_minutes, transfers_in, transfers_in_minutes. Minutes are whole numbers."""
    return impact_csv(impact_report(ledger, query.window()))


def impact_csv(report: ImpactReport) -> Response:
    """An impact report as a CSV download."""
    out = io.StringIO()
    rows = csv.writer(out, lineterminator="\n")
    rows.writerow(IMPACT_COLUMNS)
    for row in (*report.months, report.total):
        rows.writerow(astuple(row))
    filename = f"{report.bank}-impact-{report.first_month}-{report.last_month}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
