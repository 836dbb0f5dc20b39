"""/metrics on the ledger and the clearing house: exact counts after known activity, each thing
counted once where it happens, HTTP requests by route template, and JSON log lines that carry
the transfer's id."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.clearing.application import Clearing
from services.clearing.service import create_app as create_clearing_app
from services.clearing.settings import ClearingSettings
from services.cli.common import JsonFormatter
from services.common.outbox import Outbox, outbox_id
from services.common.stores import parse_store_url
from services.local.nats_server import NatsServer
from shared.bus import Bus, connect
from shared.protocol import (
    CLEARING,
    BankEntry,
    Codec,
    CreditPrepared,
    DecisionApplied,
    DirectoryChanged,
    Envelope,
    TransferRequested,
)
from shared.signing import envelope_payload
from tests.helpers import admit, confirm, participant_key
from tests.integration.service_federation import (
    ADMIN_TOKEN,
    ServedFederation,
    served_federation,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def labelled(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def test_exchanges_are_counted_once_as_recorded_or_refused_by_problem_code(
    client: TestClient, operator: dict[str, str]
) -> None:
    for member, limit in (("maya", None), ("arthur", 120)):
        body: dict[str, object] = {"member_id": member, "name": member.title(), "kind": "person"}
        if limit is not None:
            body["overdraft_limit_minutes"] = limit
        assert client.post("/v1/members", json=body, headers=operator).status_code == 201

    def pay(payer: str, payee: str, minutes: int, key: str | None = None) -> int:
        headers = {**operator, **({"Idempotency-Key": key} if key else {})}
        body = {"payer": payer, "payee": payee, "minutes": minutes, "memo": "help"}
        return client.post("/v1/exchanges", json=body, headers=headers).status_code

    assert pay("arthur", "maya", 90, key="lift-1") == 201
    assert pay("arthur", "maya", 90, key="lift-1") == 201  # a replay: nothing new recorded
    assert pay("maya", "arthur", 10) == 201
    assert pay("arthur", "maya", 100) == 409  # -80 available, limit 120
    items = [
        {"payer": "arthur", "payee": "maya", "minutes": 10, "memo": "one"},
        {"payer": "ghost", "payee": "maya", "minutes": 5, "memo": "two"},
        {"payer": "arthur", "payee": "maya", "minutes": "5", "memo": "malformed"},
    ]
    batch = client.post("/v1/exchanges/batch", json={"items": items}, headers=operator)
    assert [r["status"] for r in batch.json()["results"]] == [201, 404, 422]

    exchanges = labelled(scrape(client), "timebank_exchanges_total")
    # A malformed item is not an exchange the ledger refused: the HTTP metrics show it.
    assert exchanges == {
        frozenset({("outcome", "recorded"), ("code", "")}): 3,
        frozenset({("outcome", "refused"), ("code", "overdraft_limit_exceeded")}): 1,
        frozenset({("outcome", "refused"), ("code", "unknown_member")}): 1,
    }


def test_http_requests_are_counted_by_route_template_never_by_raw_path(
    client: TestClient, operator: dict[str, str]
) -> None:
    for member in ("maya", "arthur"):
        body = {"member_id": member, "name": member.title(), "kind": "person"}
        client.post("/v1/members", json=body, headers=operator)
        assert client.get(f"/v1/members/{member}", headers=operator).status_code == 200
    assert client.get("/v1/members/ghost", headers=operator).status_code == 404
    assert client.get("/no/such/page/12345").status_code == 404
    too_big = {"payer": "maya", "payee": "arthur", "minutes": 1, "memo": "x" * 70_000}
    assert client.post("/v1/exchanges", json=too_big, headers=operator).status_code == 413

    samples = scrape(client)
    requests = "timebank_http_requests_total"
    member_route = "/v1/members/{member_id}"
    assert value(samples, requests, method="GET", route=member_route, status="200") == 2
    assert value(samples, requests, method="GET", route=member_route, status="404") == 1
    assert value(samples, requests, method="POST", route="/v1/members", status="201") == 2
    # Refused before routing (the body guard), still counted under its route.
    assert value(samples, requests, method="POST", route="/v1/exchanges", status="413") == 1
    assert value(samples, requests, method="GET", route="unmatched", status="404") == 1
    duration = "timebank_http_request_duration_seconds_count"
    assert value(samples, duration, method="GET", route=member_route) == 3
    label_values = {v for (_, labels) in samples for _, v in labels}
    assert not [v for v in label_values for raw in ("maya", "arthur", "ghost", "12345") if raw in v]


def test_the_clearing_counts_each_transfer_decision_resend_and_cycle_once(tmp_path: Path) -> None:
    """Driven through the clearing house's own receive (as its bus worker would), on a clock
    the test moves, so every count is known; a batch applied again after a rejected message
    counts nothing twice."""
    now = [datetime.now(UTC)]
    clearing = Clearing(parse_store_url(f"sqlite:///{tmp_path}/clearing.db"), clock=lambda: now[0])
    admit(clearing, "gp", 600)
    admit(clearing, "college", 600)
    settings = ClearingSettings.build(
        {"TIMEBANK_ADMIN_TOKEN": ADMIN_TOKEN}, store_url=f"sqlite:///{tmp_path}/clearing.db"
    )
    seqs = {"gp": 0, "college": 0}

    def send(source: str, *messages: TransferRequested | CreditPrepared | DecisionApplied) -> None:
        envelopes = []
        for message in messages:
            seqs[source] += 1
            envelopes.append(
                Envelope(source=source, destination=CLEARING, seq=seqs[source], message=message)
            )
        clearing.receive(envelopes)

    def requested(transfer_id: str, payee_bank: str, minutes: int) -> TransferRequested:
        return TransferRequested(
            transfer_id=transfer_id,
            payer_bank="gp",
            payer="maya",
            payee_bank=payee_bank,
            payee="bob",
            minutes=minutes,
            requested_at=now[0],
        )

    with TestClient(create_clearing_app(settings, clearing)) as client:
        send("gp", requested("t1", "college", 30))
        send("college", CreditPrepared(transfer_id="t1"))
        send("gp", requested("t2", "nowhere", 5))  # refused at once: unknown_bank
        send("gp", DecisionApplied(transfer_id="t1", committed=True))
        clearing.open_settlement()
        confirm(clearing, 1, 1, "college")
        # A batch whose second message is rejected is applied again without it.
        send(
            "gp", requested("t3", "college", 20), DecisionApplied(transfer_id="t9", committed=True)
        )
        now[0] += timedelta(seconds=11)
        # t1 again to college (gp applied it), t2 again to gp.
        assert sorted(clearing.resend_unacknowledged()) == ["t1", "t2"]
        samples = scrape(client)

    transfers = labelled(samples, "timebank_clearing_transfers_total")
    assert transfers == {
        frozenset({("outcome", "requested"), ("reason", "")}): 3,
        frozenset({("outcome", "committed"), ("reason", "")}): 1,
        frozenset({("outcome", "aborted"), ("reason", "unknown_bank")}): 1,
    }
    decided = "timebank_clearing_transfer_decision_seconds_count"
    assert value(samples, decided, outcome="committed") == 1
    assert value(samples, decided, outcome="aborted") == 1
    assert value(samples, "timebank_clearing_decision_resends_total") == 2
    assert value(samples, "timebank_settlement_cycles_total", event="opened") == 1
    assert value(samples, "timebank_settlement_cycles_total", event="completed") == 1
    clearing.close()


def outbox_lag(client: TestClient) -> float:
    return value(scrape(client), "timebank_outbox_lag_messages")


def outbox_is_empty(client: TestClient) -> bool:
    return outbox_lag(client) == 0


def next_seq(federation: ServedFederation, destination: str) -> int:
    outbox = federation.clearing.find(outbox_id(CLEARING, destination), Outbox)
    return (outbox.queued if outbox is not None else 0) + 1


async def publish(nats_url: str, subject: str, envelope: Envelope, signed: bool) -> None:
    """Publish as anyone who reaches the server may; signed with the clearing house's key, or
    not at all."""
    nc = await connect(nats_url, "test-publisher")
    try:
        data = Codec().encode(envelope)
        headers = {"Nats-Msg-Id": f"test-{envelope.source}-{envelope.seq}-{signed}"}
        if signed:
            headers["Tb-Signature"] = participant_key(CLEARING).sign(envelope_payload(data))
        await nc.jetstream().publish(subject, data, headers=headers)
    finally:
        await nc.close()


def json_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """The captured records as --log-format json writes them, each line parsed back."""
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert all("\n" not in line for line in lines)
    return [json.loads(line) for line in lines]


def test_transfers_over_the_bus_are_counted_at_payer_payee_and_clearing_and_logged_as_json(
    tmp_path: Path, nats_url: str, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with served_federation(tmp_path, nats_url, bus) as federation:
        clearing, gp, college = (
            federation.clearing_client,
            federation.clients["gp"],
            federation.clients["college"],
        )
        committed = federation.transfer("gp", "maya", "college", "bob", 30)
        aborted = federation.transfer("gp", "maya", "college", "nobody", 5)
        forged = Envelope(
            source="gp",
            destination=CLEARING,
            seq=1,
            message=TransferRequested(
                transfer_id="forged",
                payer_bank="gp",
                payer="maya",
                payee_bank="college",
                payee="bob",
                minutes=500,
                requested_at=datetime.now(UTC),
            ),
        )
        asyncio.run(publish(nats_url, bus.to_clearing("gp"), forged, signed=False))
        wait_until(
            lambda: (
                federation.status("gp", committed) == "committed"
                and federation.status("college", committed) == "committed"
                and federation.status("gp", aborted) == "aborted"
            ),
            what="both transfers decided at both banks",
        )
        dead = "timebank_dead_letters_total"
        wait_until(lambda: value(scrape(clearing), dead, kind="not_authentic") == 1)
        # Every message saved has been published (the banks' acknowledgements too).
        for client in (clearing, gp, college):
            wait_until(partial(outbox_is_empty, client), what="the outboxes are empty")

        at_clearing = scrape(clearing)
        assert labelled(at_clearing, "timebank_clearing_transfers_total") == {
            frozenset({("outcome", "requested"), ("reason", "")}): 2,
            frozenset({("outcome", "committed"), ("reason", "")}): 1,
            frozenset({("outcome", "aborted"), ("reason", "unknown_payee")}): 1,
        }
        assert labelled(at_clearing, dead) == {frozenset({("kind", "not_authentic")}): 1}
        assert value(at_clearing, "timebank_outbox_relay_position") > 0
        for bank, client, role in (("gp", gp, "payer"), ("college", college, "payee")):
            assert labelled(scrape(client), "timebank_bank_transfers_total") == {
                frozenset({("role", role), ("outcome", "requested"), ("reason", "")}): 2,
                frozenset({("role", role), ("outcome", "committed"), ("reason", "")}): 1,
                frozenset({("role", role), ("outcome", "aborted"), ("reason", "unknown_payee")}): 1,
            }, bank

    lines = json_lines(caplog)
    about_aborted = [line for line in lines if line.get("transfer_id") == aborted]
    assert {(line["logger"], line["bank"]) for line in about_aborted} == {
        ("services.clearing.observability", "gp"),
        ("services.ledger.observability", "gp"),
        ("services.ledger.observability", "college"),
    }
    assert all(line["reason"] == "unknown_payee" for line in about_aborted)
    assert all(
        line["level"] == "INFO" and aborted in str(line["message"]) for line in about_aborted
    )


def test_a_message_ahead_of_its_sequence_is_counted_as_an_inbox_gap_until_the_missing_one_comes(
    tmp_path: Path, nats_url: str, bus: Bus
) -> None:
    with served_federation(tmp_path, nats_url, bus) as federation:
        gp = federation.clients["gp"]
        gaps = "timebank_inbox_gaps_total"
        assert value(scrape(gp), gaps) == 0
        seq = next_seq(federation, "gp")
        banks = [BankEntry(bank_id=b, name=b.title(), status="active") for b in ("gp", "college")]
        directory = DirectoryChanged(banks=banks)
        ahead = Envelope(source=CLEARING, destination="gp", seq=seq + 1, message=directory)
        asyncio.run(publish(nats_url, bus.to_bank("gp"), ahead, signed=True))
        wait_until(lambda: value(scrape(gp), gaps) >= 1, what="the gap is counted")
        missing = Envelope(source=CLEARING, destination="gp", seq=seq, message=directory)
        asyncio.run(publish(nats_url, bus.to_bank("gp"), missing, signed=True))
        inbox = federation.banks["gp"]
        wait_until(lambda: inbox.recorder.max_tracking_id(f"inbox:{CLEARING}") == seq + 1)
        counted = value(scrape(gp), gaps)
        assert counted >= 1
        # Applied: no more NAKs (one would come every 0.5 s), and no dead letter either.
        time.sleep(1.2)
        after = scrape(gp)
        assert value(after, gaps) == counted
        assert labelled(after, "timebank_dead_letters_total") == {}


def test_outbox_lag_counts_the_messages_saved_while_nats_is_down(
    tmp_path: Path, nats_server: NatsServer, bus: Bus
) -> None:
    with served_federation(tmp_path, nats_server.url, bus) as federation:
        gp = federation.clients["gp"]
        wait_until(lambda: outbox_lag(gp) == 0, what="gp's outbox is empty")
        nats_server.stop()
        ids = [federation.transfer("gp", "maya", "college", "bob", 5) for _ in range(2)]
        # Both TransferRequested messages wait in the outbox.
        assert outbox_lag(gp) == 2
        nats_server.start()
        wait_until(
            lambda: all(federation.status("college", i) == "committed" for i in ids),
            what="both transfers committed after the restart",
        )
        wait_until(lambda: outbox_lag(gp) == 0, what="gp's outbox is empty again")
