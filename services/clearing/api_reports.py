"""The clearing house administrator's reports over HTTP, as JSON: positions over time, flows
between banks, settlement cycles and transfers waiting too long (reports.py says what counts
and how each is read)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from services.clearing.api import ClearingDep, problems
from services.clearing.domain_terms import InvalidRequest
from services.clearing.reports import (
    DEFAULT_OLDER_THAN_SECONDS,
    MAX_OLDER_THAN_SECONDS,
    MAX_POINTS,
    FlowsReport,
    Interval,
    PositionsReport,
    SettlementsReport,
    StuckTransfersReport,
    flows_report,
    positions_report,
    settlements_report,
    stuck_transfers_report,
)
from services.common.deps import Reader

reports = APIRouter(prefix="/v1/reports", tags=["reports"])


class WindowQuery(BaseModel):
    """A window of time: from ``from`` to ``to`` (ISO 8601, with a time zone)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: datetime | None = Field(
        default=None,
        alias="from",
        description="Its start (ISO 8601 with a time zone).",
        examples=["2026-03-01T00:00:00Z"],
    )
    end: datetime | None = Field(
        default=None,
        alias="to",
        description="Its end (ISO 8601 with a time zone); not before `from`.",
        examples=["2026-04-01T00:00:00Z"],
    )


class PositionsQuery(WindowQuery):
    interval: Interval = Field(
        default=Interval.DAY,
        description=f"A point at each UTC day, week (Monday) or month boundary; at most "
        f"{MAX_POINTS} points.",
    )


class StuckQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    older_than_seconds: int = Field(
        default=DEFAULT_OLDER_THAN_SECONDS,
        ge=0,
        le=MAX_OLDER_THAN_SECONDS,
        description="List transfers undecided for at least this long.",
    )


@reports.get("/positions", dependencies=[Reader], responses=problems(InvalidRequest))
def get_positions_report(
    query: Annotated[PositionsQuery, Query()], clearing: ClearingDep
) -> PositionsReport:
    """Each bank's net position over time: a point at `from`, at each `interval` boundary
    (UTC) in between, and at `to`, each the position after every move at or before it.
    Moves are committed transfers (at their decision) and completed settlement cycles (at
    completion); nothing else moves a position. Without `to`: now, so the last point is the
    position GET /v1/positions gives; without `from`: the first move."""
    return positions_report(clearing, query.start, query.end, query.interval)


@reports.get("/flows", dependencies=[Reader], responses=problems(InvalidRequest))
def get_flows_report(query: Annotated[WindowQuery, Query()], clearing: ClearingDep) -> FlowsReport:
    """Minutes moved from each bank to each other bank by the transfers committed at or after
    `from` and before `to` (either may be left out), by payer bank then payee bank. Aborted
    and undecided transfers never count."""
    return flows_report(clearing, query.start, query.end)


@reports.get("/settlements", dependencies=[Reader])
def get_settlements_report(clearing: ClearingDep) -> SettlementsReport:
    """Every settlement cycle, oldest first: its status, when it opened (its cut-off) and
    closed, and its obligations' count and minutes (GET /v1/settlements/{id} gives each)."""
    return settlements_report(clearing)


@reports.get("/stuck-transfers", dependencies=[Reader], responses=problems(InvalidRequest))
def get_stuck_transfers_report(
    query: Annotated[StuckQuery, Query()], clearing: ClearingDep
) -> StuckTransfersReport:
    """Transfers neither committed nor aborted after `older_than_seconds` (by the clearing
    house's clock), oldest first: the payee's bank has not answered. Decided transfers a bank
    has not applied are at GET /v1/transfers?status=stuck."""
    return stuck_transfers_report(clearing, query.older_than_seconds)
