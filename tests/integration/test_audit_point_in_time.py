"""Point-in-time replay against the HTTP API: the balances an audit rebuilds up to a moment are
those the bank's API showed at that moment."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi.testclient import TestClient

from services.audit.eventlog import open_event_log
from services.audit.replay import audit_bank
from services.ledger.domain_terms import (
    DEFAULT_OVERDRAFT_MINUTES,
)

MEMBERS = ("ann", "bob", "cat")
DEFAULT_LIMIT = DEFAULT_OVERDRAFT_MINUTES


def shown(client: TestClient, operator: dict[str, str]) -> dict[str, tuple[int, int]]:
    """What the API shows now: each member's posted and held minutes."""
    views = [client.get(f"/v1/members/{m}", headers=operator).json() for m in MEMBERS]
    return {v["member_id"]: (v["balance_minutes"], v["held_minutes"]) for v in views}


def test_balances_replayed_up_to_a_moment_are_what_the_api_showed_then(
    client: TestClient, operator: dict[str, str], store_url: str
) -> None:
    for member in MEMBERS:
        body: dict[str, object] = {"member_id": member, "name": member.title(), "kind": "person"}
        assert client.post("/v1/members", json=body, headers=operator).status_code == 201
    moments: list[tuple[datetime, dict[str, tuple[int, int]]]] = []
    payments = [("ann", "bob", 60), ("bob", "cat", 25), ("cat", "ann", 90), ("ann", "cat", 5)]
    for payer, payee, minutes in payments:
        body = {"payer": payer, "payee": payee, "minutes": minutes, "memo": "help"}
        assert client.post("/v1/exchanges", json=body, headers=operator).status_code == 201
        time.sleep(0.01)  # the moment falls strictly between two exchanges' timestamps
        moments.append((datetime.now(UTC), shown(client, operator)))
        time.sleep(0.01)

    log = open_event_log(store_url)
    try:
        for moment, api_showed in moments:
            audit = audit_bank(
                log, default_overdraft_minutes=DEFAULT_OVERDRAFT_MINUTES, until=moment
            )
            rebuilt = {
                m: (audit.balances[m].posted_minutes, audit.balances[m].held_minutes)
                for m in MEMBERS
            }
            assert audit.ok, audit.problems
            assert rebuilt == api_showed, moment
    finally:
        log.close()
    # The moments differ: each replay stopped where it was told to.
    assert len({tuple(sorted(showed.items())) for _, showed in moments}) == len(payments)
