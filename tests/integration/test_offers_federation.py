"""Offers across the federation, with the clearing house and three banks served by their real
apps over a real nats-server: a member's shared offer reaches every partner bank, an unshared
one never leaves its bank (not its outbox, not the clearing house's log, not a partner's), a
change follows, unsharing and withdrawing remove it, and a member of a partner bank pays for
a shared offer with a transfer recorded against it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eventsourcing.utils import get_topic
from fastapi.testclient import TestClient

from services.audit.eventlog import open_event_log
from services.audit.federation import FederationAudit, audit_federation
from services.audit.replay import audit_bank
from services.clearing.application import Clearing
from services.common.application import ServiceApplication
from services.common.inbox import Outcome
from services.common.outbox import QUEUED_TOPIC, Outbox, envelope_of
from services.common.stores import parse_store_url
from services.ledger.application import Ledger
from services.ledger.domain_offers import PartnerOffer, partner_offer_id
from services.ledger.domain_terms import DEFAULT_OVERDRAFT_MINUTES
from services.ledger.offer_board import BoardQuery, list_partner_offers
from shared.bus import Bus
from shared.protocol import CLEARING, Envelope, OfferShared, OfferUnshared
from tests.helpers import admit, assert_problem
from tests.integration.service_federation import (
    ADMIN_TOKEN,
    OPERATOR,
    served_federation,
    wait_until,
)

BANKS = ("gp", "college", "hub")


def log_text(app: ServiceApplication, topic: str | None = None) -> str:
    """Every stored event of the application's log (of one topic, if given), as text."""
    found = app.recorder.select_notifications(start=1, limit=1_000_000)
    return "\n".join(
        n.topic + " " + n.state.decode() for n in found if topic is None or n.topic == topic
    )


def partner_offers(client: TestClient, query: str = "") -> list[dict[str, Any]]:
    response = client.get(f"/v1/federation/offers{query}", headers=OPERATOR)
    assert response.status_code == 200, response.text
    offers: list[dict[str, Any]] = response.json()["offers"]
    return offers


def post(client: TestClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/offers", json=fields, headers=OPERATOR)
    assert response.status_code == 201, response.text
    offer: dict[str, Any] = response.json()
    return offer


def titles_at(client: TestClient) -> list[str]:
    return [o["title"] for o in partner_offers(client)]


@pytest.mark.timeout(120)
def test_offers_cross_banks_only_when_shared(tmp_path: Path, nats_url: str, bus: Bus) -> None:
    with served_federation(tmp_path, nats_url, bus, BANKS) as fed:
        gp, college, hub = (fed.clients[b] for b in BANKS)
        secret = post(
            college,
            member_id="bob",
            kind="offer",
            title="Unshared plumbing by Bob",
            category="diy",
            minutes=60,
            where="Flat 4, 12 Private Road",
        )
        course = post(
            college,
            member_id="bob",
            kind="offer",
            title="Evening pottery course",
            category="courses",
            minutes=20 * 60,
            where="New Cross campus",
            shared_with_federation=True,
        )
        # Messages from one bank arrive in order: once the later one is here, the earlier
        # would have been too.
        wait_until(lambda: titles_at(gp) == ["Evening pottery course"], what="shared at gp")
        wait_until(lambda: titles_at(hub) == ["Evening pottery course"], what="shared at hub")
        assert partner_offers(gp) == [
            {
                "offer_id": course["offer_id"],
                "bank": "college",
                "kind": "offer",
                "member_id": "bob",
                "member_name": "Bob",
                "title": "Evening pottery course",
                "category": "courses",
                "category_label": "Courses",
                "minutes": 1200,
                "where": "New Cross campus",
            }
        ]
        assert partner_offers(college) == []  # not its own back
        assert [o["title"] for o in partner_offers(gp, "?category=courses&bank=college")] == [
            "Evening pottery course"
        ]
        assert partner_offers(gp, "?category=diy") == []
        assert partner_offers(gp, "?q=bob") != []  # the member's name is searched too
        # Nothing of the unshared offer left its bank: not queued in its outbox, not in the
        # clearing house's log, not in any partner's log.
        outbox = log_text(fed.banks["college"], get_topic(Outbox.Queued))
        assert course["offer_id"] in outbox
        for text in (
            outbox,
            log_text(fed.clearing),
            log_text(fed.banks["gp"]),
            log_text(fed.banks["hub"]),
        ):
            assert secret["offer_id"] not in text
            assert "Unshared plumbing" not in text
            assert "Private Road" not in text
        assert_problem(
            gp.get(f"/v1/offers/{course['offer_id']}", headers=OPERATOR), 404, "unknown_offer"
        )

        # A member at gp pays for the course: a transfer recorded against the partner's offer.
        paid = gp.post(
            f"/v1/offers/{course['offer_id']}/transfers",
            json={"payer": "maya", "minutes": 120},
            headers=OPERATOR,
        )
        assert paid.status_code == 202, paid.text
        transfer_id = paid.json()["transfer"]["transfer_id"]
        wait_until(lambda: fed.status("gp", transfer_id) == "committed", what="committed")
        wait_until(lambda: fed.status("college", transfer_id) == "committed", what="applied")
        assert fed.banks["college"].get_member("bob").balance_minutes == 120
        assert fed.banks["gp"].get_member("maya").balance_minutes == -120
        statement = gp.get("/v1/members/maya/statement", headers=OPERATOR).json()
        assert "Evening pottery course" in str(statement)  # the memo is the offer's title
        report = gp.get("/v1/reports/categories", headers=OPERATOR).json()
        courses = next(c for c in report["categories"] if c["category"] == "courses")
        assert (courses["exchanges"], courses["minutes"]) == (1, 120)
        # Only to its member, at its bank.
        wrong = gp.post(
            f"/v1/offers/{course['offer_id']}/transfers",
            json={"payer": "maya", "payee": "someone", "minutes": 10},
            headers=OPERATOR,
        )
        assert_problem(wrong, 422, "invalid_request")
        assert fed.banks["gp"].get_member("maya").held_minutes == 0

        # A change follows; unsharing removes it, and nothing more is paid against it.
        path = f"/v1/offers/{course['offer_id']}"
        changed = college.patch(path, json={"title": "Pottery, 10 weeks"}, headers=OPERATOR)
        assert changed.status_code == 200, changed.text
        wait_until(lambda: titles_at(gp) == ["Pottery, 10 weeks"], what="change at gp")
        unshared = college.patch(path, json={"shared_with_federation": False}, headers=OPERATOR)
        assert unshared.status_code == 200, unshared.text
        wait_until(lambda: titles_at(gp) == [], what="unshared at gp")
        wait_until(lambda: titles_at(hub) == [], what="unshared at hub")
        again = gp.post(f"{path}/transfers", json={"payer": "maya", "minutes": 5}, headers=OPERATOR)
        assert_problem(again, 409, "offer_withdrawn")

        # Shared again, then withdrawn: gone from the partners.
        college.patch(path, json={"shared_with_federation": True}, headers=OPERATOR)
        wait_until(lambda: titles_at(hub) == ["Pottery, 10 weeks"], what="shared again")
        assert college.post(f"{path}/withdraw", headers=OPERATOR).status_code == 200
        wait_until(lambda: titles_at(hub) == [], what="withdrawn at hub")
        wait_until(lambda: titles_at(gp) == [], what="withdrawn at gp")
        audit = audit_stores(tmp_path)
        assert audit.ok, (audit.problems, {b: a.problems for b, a in audit.banks.items()})


def audit_stores(directory: Path) -> FederationAudit:
    """The federation's audit of every log, as `timebank audit federation` runs it: none of
    the board's events or messages may be flagged."""
    clearing_log = open_event_log(f"sqlite:///{directory}/clearing.db", application=Clearing.name)
    bank_logs = {b: open_event_log(f"sqlite:///{directory}/{b}.db") for b in BANKS}
    try:
        return audit_federation(
            clearing_log,
            bank_logs,
            lambda _, log, observe: audit_bank(
                log, default_overdraft_minutes=DEFAULT_OVERDRAFT_MINUTES, observe=observe
            ),
        )
    finally:
        for log in (clearing_log, *bank_logs.values()):
            log.close()


@pytest.mark.timeout(120)
def test_a_request_here_paid_to_a_partner_member(tmp_path: Path, nats_url: str, bus: Bus) -> None:
    with served_federation(tmp_path, nats_url, bus) as fed:
        gp = fed.clients["gp"]
        request = post(
            gp,
            member_id="maya",
            kind="request",
            title="Spanish conversation",
            category="tutoring",
            minutes=60,
        )
        path = f"/v1/offers/{request['offer_id']}/transfers"
        paid = gp.post(
            path, json={"to_bank": "college", "payee": "bob", "minutes": 60}, headers=OPERATOR
        )
        assert paid.status_code == 202, paid.text
        transfer_id = paid.json()["transfer"]["transfer_id"]
        wait_until(lambda: fed.status("gp", transfer_id) == "committed", what="committed")
        assert fed.banks["college"].get_member("bob").balance_minutes == 60
        recorded = gp.get(f"/v1/offers/{request['offer_id']}", headers=OPERATOR).json()
        assert recorded["recorded"] == [
            {
                "entry": "transfer",
                "entry_id": transfer_id,
                "minutes": 60,
                "payer": "maya",
                "payee": "college/bob",
            }
        ]
        # A refused one (to no member there) counts nowhere in the report.
        refused = gp.post(
            path, json={"to_bank": "college", "payee": "nobody", "minutes": 30}, headers=OPERATOR
        )
        assert refused.status_code == 202, refused.text
        refused_id = refused.json()["transfer"]["transfer_id"]
        wait_until(lambda: fed.status("gp", refused_id) == "aborted", what="aborted")
        report = gp.get("/v1/reports/categories", headers=OPERATOR).json()
        tutoring = next(c for c in report["categories"] if c["category"] == "tutoring")
        assert (tutoring["exchanges"], tutoring["minutes"], tutoring["open_requests"]) == (1, 60, 1)


# The relay and the partner's copy, message by message (no bus: the applications' receive).


def shared(offer_id: str, bank: str, revision: int, title: str = "Pottery") -> OfferShared:
    return OfferShared(
        offer_id=offer_id,
        bank=bank,
        revision=revision,
        kind="offer",
        member_id="bob",
        member_name="Bob",
        title=title,
        category="courses",
        minutes=60,
    )


OFFER_ID = "8d9a6a52-6f1e-4d7e-9a57-1d5c0f3a2b11"


def test_the_clearing_relays_to_every_other_active_bank_only(tmp_path: Path) -> None:
    clearing = Clearing(parse_store_url(f"sqlite:///{tmp_path}/clearing.db"))
    try:
        for bank_id in ("alpha", "beta", "gamma", "delta"):
            admit(clearing, bank_id, 600)
        clearing.suspend_bank("gamma")
        to_clearing = [
            Envelope(
                source="alpha", destination=CLEARING, seq=1, message=shared(OFFER_ID, "alpha", 1)
            ),
            # alpha may not speak for beta's offers.
            Envelope(
                source="alpha", destination=CLEARING, seq=2, message=shared(OFFER_ID, "beta", 1)
            ),
        ]
        outcomes = [r.outcome for r in clearing.receive(to_clearing)]
        assert outcomes == [Outcome.APPLIED, Outcome.REJECTED]
        relayed = {
            e.destination: e.message
            for e in (envelope_of(clearing.mapper.to_domain_event(n)) for n in queued(clearing))  # type: ignore[arg-type]
            if isinstance(e.message, OfferShared | OfferUnshared)
        }
        assert relayed == {
            "beta": shared(OFFER_ID, "alpha", 1),
            "delta": shared(OFFER_ID, "alpha", 1),
        }
    finally:
        clearing.close()


def queued(app: ServiceApplication) -> list[Any]:
    return list(app.recorder.select_notifications(start=1, limit=100_000, topics=[QUEUED_TOPIC]))


def test_a_bank_keeps_the_latest_shared_terms_of_partners_only(ledger: Ledger) -> None:
    def receive(seq: int, message: OfferShared | OfferUnshared) -> Outcome:
        env = Envelope(source=CLEARING, destination=ledger.bank_id, seq=seq, message=message)
        (received,) = ledger.receive([env])
        return received.outcome

    def board() -> list[tuple[str, str]]:
        page = list_partner_offers(ledger, BoardQuery(), 50, None)
        return [(o.bank, o.title) for o in page.offers]

    assert receive(1, shared(OFFER_ID, "college", 2, "Pottery, 10 weeks")) == Outcome.APPLIED
    # An older revision, arriving late, changes nothing.
    assert receive(2, shared(OFFER_ID, "college", 1, "Pottery")) == Outcome.APPLIED
    assert board() == [("college", "Pottery, 10 weeks")]
    # Another bank may not take over the offer; nor is a bank told its own offers.
    assert receive(3, shared(OFFER_ID, "hub", 3, "Hijacked")) == Outcome.REJECTED
    own = shared("1d5c0f3a-6f1e-4d7e-9a57-8d9a6a522b11", ledger.bank_id, 1)
    assert receive(4, own) == Outcome.REJECTED
    assert board() == [("college", "Pottery, 10 weeks")]
    assert (
        receive(5, OfferUnshared(offer_id=OFFER_ID, bank="college", revision=3)) == Outcome.APPLIED
    )
    assert board() == []
    assert list_partner_offers(ledger, BoardQuery(status=None), 50, None).offers == []


@pytest.mark.timeout(120)
def test_a_bank_that_comes_back_is_sent_the_offers_shared_while_it_was_away(
    tmp_path: Path, nats_url: str, bus: Bus
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with served_federation(tmp_path, nats_url, bus, BANKS) as fed:
        gp, college, hub = (fed.clients[b] for b in BANKS)
        assert fed.clearing_client.post("/v1/banks/hub/suspend", headers=admin).status_code == 200
        wait_until(
            lambda: fed.banks["college"].known_banks()["hub"]["status"] == "suspended",
            what="college hears hub is suspended",
        )
        post(college, member_id="bob", kind="offer", title="Unshared plumbing", category="diy",
             minutes=60)  # fmt: skip
        course = post(college, member_id="bob", kind="offer", title="Evening pottery course",
                      category="courses", minutes=600, shared_with_federation=True)  # fmt: skip
        wait_until(lambda: titles_at(gp) == ["Evening pottery course"], what="shared at gp")
        assert titles_at(hub) == []  # suspended: the clearing house relays it nothing
        assert fed.clearing_client.post("/v1/banks/hub/reinstate", headers=admin).status_code == 200
        # Back in the directory: college sends what its members share again.
        wait_until(lambda: titles_at(hub) == ["Evening pottery course"], what="sent to hub")
        assert "Unshared plumbing" not in log_text(fed.banks["hub"])
        # Sent again for hub alone: gp, which had it, was sent it once.
        relayed = log_text(fed.clearing, get_topic(Outbox.Queued))
        assert relayed.count("Evening pottery course") == 2  # to gp, then to hub
        shared_at_gp = log_text(fed.banks["gp"], get_topic(PartnerOffer.Shared))
        assert shared_at_gp.count("Evening pottery course") == 1
        assert titles_at(gp) == ["Evening pottery course"]
        # What a partner keeps is what the member shared, not whom it was sent again for.
        kept = fed.banks["hub"].find(partner_offer_id(course["offer_id"]), PartnerOffer)
        assert kept is not None
        assert "for_bank" not in kept.terms
