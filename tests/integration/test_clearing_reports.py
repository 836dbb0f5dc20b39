"""The clearing house administrator's reports (/v1/reports) over a Clearing on a real store,
driven by the banks' own messages and a settlement cycle, on a clock the test moves: each
bank's position over time (ending where GET /v1/positions stands), flows between banks,
settlement cycles, and transfers left undecided; bad queries and missing tokens."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.clearing.application import Clearing
from services.clearing.service import create_app
from services.clearing.settings import ClearingSettings
from services.common.stores import parse_store_url
from shared.protocol import (
    CLEARING,
    AnyMessage,
    CreditPrepared,
    CreditRefused,
    Envelope,
    TransferRequested,
)
from tests.helpers import AUDITOR_TOKEN, Clock, admit, assert_problem, confirm

ADMIN_TOKEN = "admin-" + "r" * 26
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
AUDITOR = {"Authorization": f"Bearer {AUDITOR_TOKEN}"}
# A Monday, so day and week boundaries meet here.
MONDAY = datetime(2026, 3, 2, tzinfo=UTC)
DEADLINE_SECONDS = 3600
BANK_IDS = ("gp", "college", "library")


@dataclass
class Federation:
    """The reports' API on a clearing whose banks' messages the test sends by hand, each
    bank's numbered 1, 2, 3, ... as its outbox would."""

    client: TestClient
    clearing: Clearing
    clock: Clock

    def __post_init__(self) -> None:
        self.seq: dict[str, int] = {}

    def at(self, moment: datetime) -> None:
        self.clock.now = moment

    def send(self, source: str, message: AnyMessage) -> None:
        self.seq[source] = self.seq.get(source, 0) + 1
        envelope = Envelope(
            source=source, destination=CLEARING, seq=self.seq[source], message=message
        )
        [result] = self.clearing.receive([envelope])
        assert result.outcome.value == "applied", result

    def request(self, transfer_id: str, payer_bank: str, payee_bank: str, minutes: int) -> None:
        message = TransferRequested(
            transfer_id=transfer_id,
            payer_bank=payer_bank,
            payer="maya",
            payee_bank=payee_bank,
            payee="bob",
            minutes=minutes,
            requested_at=self.clock.now,
        )
        self.send(payer_bank, message)
        assert self.clearing.get_transfer(transfer_id).status == "preparing"

    def commit(self, transfer_id: str, payer_bank: str, payee_bank: str, minutes: int) -> None:
        self.request(transfer_id, payer_bank, payee_bank, minutes)
        self.send(payee_bank, CreditPrepared(transfer_id=transfer_id))
        assert self.clearing.get_transfer(transfer_id).status == "committed"

    def refuse(self, transfer_id: str, payer_bank: str, payee_bank: str, minutes: int) -> None:
        self.request(transfer_id, payer_bank, payee_bank, minutes)
        self.send(payee_bank, CreditRefused(transfer_id=transfer_id, reason="unknown_payee"))
        assert self.clearing.get_transfer(transfer_id).status == "aborted"

    def report(self, name: str, **params: str | int) -> Any:
        response = self.client.get(f"/v1/reports/{name}", params=params, headers=AUDITOR)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def fed(store_url: str) -> Iterator[Federation]:
    """gp, college and library admitted, nothing moved yet."""
    clock = Clock(MONDAY)
    clearing = Clearing(parse_store_url(store_url), clock=clock, deadline_seconds=DEADLINE_SECONDS)
    environ = {"TIMEBANK_ADMIN_TOKEN": ADMIN_TOKEN, "TIMEBANK_AUDITOR_TOKEN": AUDITOR_TOKEN}
    settings = ClearingSettings.build(environ, store_url=store_url)
    for bank_id in BANK_IDS:
        admit(clearing, bank_id, 10_000)
    with TestClient(create_app(settings, clearing)) as client:
        yield Federation(client, clearing, clock)
    clearing.close()


def day(n: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """Day ``n`` of the story (0: the Monday it starts), at this time (UTC)."""
    return MONDAY + timedelta(days=n, hours=hour, minutes=minute, seconds=second)


@dataclass(frozen=True)
class Story:
    settled_at: datetime


def tell(fed: Federation) -> Story:
    """Two days of transfers (one refused), a cycle that settles them, a transfer after it,
    a second cycle left open, then two transfers the payee's bank never answers."""
    fed.at(day(0, 9))
    fed.commit("t1", "gp", "college", 120)
    fed.at(day(0, 10))
    fed.commit("t2", "college", "gp", 20)
    fed.at(day(1, 10))
    fed.commit("t3", "gp", "library", 50)
    fed.refuse("t4", "library", "gp", 999)
    assert fed.clearing.positions() == {"gp": -150, "college": 100, "library": 50}

    fed.at(day(2, 12))
    opened = fed.client.post("/v1/settlements", headers=ADMIN)
    assert opened.status_code == 201, opened.text
    fed.at(day(2, 15))
    for obligation in opened.json()["obligations"]:
        confirm(fed.clearing, 1, obligation["number"], obligation["creditor"])
    assert fed.clearing.positions() == {"gp": 0, "college": 0, "library": 0}

    fed.at(day(3, 9))
    fed.commit("t5", "library", "college", 30)
    fed.at(day(3, 11))
    assert fed.client.post("/v1/settlements", headers=ADMIN).status_code == 201
    fed.at(day(3, 13))
    fed.request("t6", "gp", "library", 10)
    fed.at(day(3, 13, 1))
    fed.request("t7", "college", "gp", 5)
    fed.at(day(3, 13, 2))
    return Story(settled_at=day(2, 15))


def points(report: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    return {
        bank["bank_id"]: [(p["at"], p["position_minutes"]) for p in bank["points"]]
        for bank in report["banks"]
    }


def at(moment: datetime) -> str:
    """A moment as the API writes it."""
    return moment.isoformat().replace("+00:00", "Z")


# Positions over time.


def test_positions_by_day_move_with_commits_and_settlement_and_end_where_positions_stand(
    fed: Federation,
) -> None:
    tell(fed)

    report = fed.report("positions", **{"from": at(day(0)), "interval": "day"})

    moments = [at(day(0)), at(day(1)), at(day(2)), at(day(3)), at(day(3, 13, 2))]
    assert (report["start"], report["end"], report["interval"]) == (
        moments[0],
        moments[-1],
        "day",
    )
    assert points(report) == {
        "gp": list(zip(moments, [0, -100, -150, 0, 0], strict=True)),
        "college": list(zip(moments, [0, 100, 100, 0, 30], strict=True)),
        "library": list(zip(moments, [0, 0, 50, 0, -30], strict=True)),
    }
    now = fed.client.get("/v1/positions", headers=AUDITOR).json()["positions"]
    assert {b: series[-1][1] for b, series in points(report).items()} == now
    # Undecided transfers (t6, t7) are reserved at their payers' banks, not positions.
    assert now == {"gp": 0, "college": 30, "library": -30}


def test_the_fold_reads_on_from_where_it_ended(fed: Federation) -> None:
    fed.at(day(0, 9))
    fed.commit("t1", "gp", "college", 120)
    first = fed.report("positions")
    fed.at(day(0, 10))
    fed.commit("t2", "college", "library", 45)

    again = fed.report("positions")

    assert [s[-1][1] for s in points(first).values()] == [-120, 120, 0]
    assert {b: s[-1][1] for b, s in points(again).items()} == fed.clearing.positions()
    assert fed.clearing.positions() == {"gp": -120, "college": 75, "library": 45}


def test_positions_without_from_start_at_the_first_moves_interval_and_at_to_is_inclusive(
    fed: Federation,
) -> None:
    tell(fed)

    weekly = fed.report("positions", interval="week", to=at(day(1, 10)))
    monthly = fed.report("positions", **{"interval": "month", "from": "2026-02-15T00:00:00Z"})

    # The first move was Monday 09:00; the move at exactly `to` counts.
    assert points(weekly)["gp"] == [(at(day(0)), 0), (at(day(1, 10)), -150)]
    assert points(monthly)["library"] == [
        ("2026-02-15T00:00:00Z", 0),
        ("2026-03-01T00:00:00Z", 0),
        (at(day(3, 13, 2)), -30),
    ]


def test_positions_before_anything_moved_are_a_single_point_of_zeros(fed: Federation) -> None:
    report = fed.report("positions")

    assert points(report) == {b: [(at(MONDAY), 0)] for b in BANK_IDS}


def test_positions_given_in_another_zone_are_answered_in_utc(fed: Federation) -> None:
    tell(fed)

    report = fed.report(
        "positions", **{"from": "2026-03-02T09:30:00+01:00", "to": "2026-03-02T12:00:00+01:00"}
    )

    assert points(report)["college"] == [
        ("2026-03-02T08:30:00Z", 0),
        ("2026-03-02T11:00:00Z", 100),
    ]


# Flows.


def test_flows_are_the_committed_minutes_between_each_ordered_pair_of_banks(
    fed: Federation,
) -> None:
    tell(fed)

    everything = fed.report("flows")
    first_days = fed.report("flows", **{"from": at(day(0)), "to": at(day(1, 10))})
    from_t3 = fed.report("flows", **{"from": at(day(1, 10)), "to": at(day(3, 9))})

    assert everything == {
        "start": None,
        "end": None,
        "flows": [
            {"payer_bank": "college", "payee_bank": "gp", "transfers": 1, "minutes": 20},
            {"payer_bank": "gp", "payee_bank": "college", "transfers": 1, "minutes": 120},
            {"payer_bank": "gp", "payee_bank": "library", "transfers": 1, "minutes": 50},
            {"payer_bank": "library", "payee_bank": "college", "transfers": 1, "minutes": 30},
        ],
        "transfers": 4,
        "minutes": 220,
    }
    committed = [fed.clearing.get_transfer(f"t{n}") for n in range(1, 8)]
    assert everything["minutes"] == sum(t.minutes for t in committed if t.status == "committed")
    # `from` is inclusive, `to` is not: t3 was committed at exactly day 1, 10:00.
    assert [(f["payer_bank"], f["payee_bank"]) for f in first_days["flows"]] == [
        ("college", "gp"),
        ("gp", "college"),
    ]
    assert (first_days["start"], first_days["end"]) == (at(day(0)), at(day(1, 10)))
    assert from_t3["flows"] == [
        {"payer_bank": "gp", "payee_bank": "library", "transfers": 1, "minutes": 50}
    ]


# Settlement cycles.


def test_settlements_show_each_cycle_with_its_times_and_totals(fed: Federation) -> None:
    story = tell(fed)

    report = fed.report("settlements")

    assert report == {
        "settlements": [
            {
                "settlement_id": 1,
                "status": "completed",
                "opened_at": at(day(2, 12)),
                "closed_at": at(story.settled_at),
                "obligations": 2,
                "obligation_minutes": 150,
                "confirmed_obligations": 2,
            },
            {
                "settlement_id": 2,
                "status": "open",
                "opened_at": at(day(3, 11)),
                "closed_at": None,
                "obligations": 1,
                "obligation_minutes": 30,
                "confirmed_obligations": 0,
            },
        ],
        "open_settlements": 1,
        "settled_minutes": 150,
    }
    listed = fed.client.get("/v1/settlements", headers=AUDITOR).json()["settlements"]
    assert [c["status"] for c in listed] == [c["status"] for c in report["settlements"]]


# Transfers left undecided.


def test_undecided_transfers_past_the_age_are_stuck_oldest_first_decided_ones_never(
    fed: Federation,
) -> None:
    tell(fed)

    by_default = fed.report("stuck-transfers")
    past_a_minute = fed.report("stuck-transfers", older_than_seconds=61)
    none_yet = fed.report("stuck-transfers", older_than_seconds=121)

    assert by_default == {
        "older_than_seconds": 60,
        "transfers": [
            {
                "transfer_id": "t6",
                "status": "preparing",
                "payer_bank": "gp",
                "payer": "maya",
                "payee_bank": "library",
                "payee": "bob",
                "minutes": 10,
                "requested_at": at(day(3, 13)),
                "deadline": at(day(3, 14)),
                "age_seconds": 120,
            },
            {
                "transfer_id": "t7",
                "status": "preparing",
                "payer_bank": "college",
                "payer": "maya",
                "payee_bank": "gp",
                "payee": "bob",
                "minutes": 5,
                "requested_at": at(day(3, 13, 1)),
                "deadline": at(day(3, 14, 1)),
                "age_seconds": 60,
            },
        ],
    }
    assert [t["transfer_id"] for t in past_a_minute["transfers"]] == ["t6"]
    assert none_yet["transfers"] == []


def test_a_transfer_stops_being_stuck_once_it_commits(fed: Federation) -> None:
    fed.at(day(0, 9))
    fed.request("t1", "gp", "college", 15)
    fed.at(day(0, 9, 5))
    assert [t["transfer_id"] for t in fed.report("stuck-transfers")["transfers"]] == ["t1"]

    fed.send("college", CreditPrepared(transfer_id="t1"))

    assert fed.report("stuck-transfers", older_than_seconds=0)["transfers"] == []
    assert fed.report("flows")["minutes"] == 15


# Bad queries and missing tokens.

BAD_QUERIES: list[tuple[str, dict[str, str | int]]] = [
    ("positions", {"interval": "year"}),
    ("positions", {"from": "2026-03-02T00:00:00"}),  # no time zone
    ("positions", {"to": "2026-03-02T00:00:00"}),
    ("positions", {"from": "yesterday"}),
    ("positions", {"from": "2026-03-03T00:00:00Z", "to": "2026-03-02T00:00:00Z"}),
    ("positions", {"from": "2000-01-01T00:00:00Z", "interval": "day"}),  # too many points
    ("positions", {"from": "2027-01-01T00:00:00Z"}),  # after now, the default `to`
    ("positions", {"bank": "gp"}),
    ("flows", {"from": "2026-03-03T00:00:00Z", "to": "2026-03-02T00:00:00Z"}),
    ("flows", {"to": "2026-03-02"}),
    ("flows", {"to": "2026-03-02T00:00:00"}),
    ("stuck-transfers", {"older_than_seconds": -1}),
    ("stuck-transfers", {"older_than_seconds": "a minute"}),
    ("stuck-transfers", {"older_than_seconds": 10**9}),
]


@pytest.mark.parametrize(("name", "params"), BAD_QUERIES)
def test_a_bad_query_is_a_422_problem(
    fed: Federation, name: str, params: dict[str, str | int]
) -> None:
    response = fed.client.get(f"/v1/reports/{name}", params=params, headers=AUDITOR)

    assert_problem(response, 422, "invalid_request")


def test_a_positions_report_has_at_most_a_thousand_points(fed: Federation) -> None:
    longest = fed.report("positions", **{"from": at(day(-999)), "interval": "day"})
    too_long = {"from": at(day(-1000)), "interval": "day"}

    assert [len(bank["points"]) for bank in longest["banks"]] == [1_000] * 3
    response = fed.client.get("/v1/reports/positions", params=too_long, headers=AUDITOR)
    assert_problem(response, 422, "invalid_request")


@pytest.mark.parametrize("name", ["positions", "flows", "settlements", "stuck-transfers"])
def test_the_reports_need_a_token_and_the_admin_may_read_them(fed: Federation, name: str) -> None:
    assert_problem(fed.client.get(f"/v1/reports/{name}"), 401, "unauthorized")
    wrong = {"Authorization": "Bearer " + "n" * 32}
    assert_problem(fed.client.get(f"/v1/reports/{name}", headers=wrong), 401, "unauthorized")
    assert fed.client.get(f"/v1/reports/{name}", headers=ADMIN).status_code == 200


def test_every_report_is_documented_with_its_problems(fed: Federation) -> None:
    paths = fed.client.get("/openapi.json").json()["paths"]

    for name in ("positions", "flows", "settlements", "stuck-transfers"):
        operation = paths[f"/v1/reports/{name}"]["get"]
        assert operation["tags"] == ["reports"]
        assert operation["description"]
        assert "`unauthorized`" in operation["responses"]["401"]["description"]
        if name != "settlements":
            assert "`invalid_request`" in operation["responses"]["422"]["description"]
