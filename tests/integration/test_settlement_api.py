"""The clearing house's settlement API (services/clearing/api.py) over a Clearing on a real
store: who may open a cycle and who may confirm a receipt, every refusal's problem code, and
the exact shape of what it answers."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from services.clearing.api import AdmittedBank, Settlements
from services.clearing.application import Clearing
from services.clearing.service import create_app as create_clearing_app
from services.clearing.settings import ClearingSettings
from services.clearing.views import BankView, ObligationView, SettlementView
from services.common.auth import digest
from services.common.stores import parse_store_url
from shared.protocol import CLEARING, AnyMessage, CreditPrepared, Envelope, TransferRequested
from shared.signing import SigningKey, confirmation_payload, rotation_payload
from tests.helpers import AUDITOR_TOKEN, Clock, assert_problem, participant_key

ADMIN_TOKEN = "admin-" + "z" * 26
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
LIMIT = 10_000
BANK_IDS = ("gp", "college", "library")


class Federation:
    """The clearing house's API on its own store, and the banks' side of the bus played by
    hand: each bank's envelopes to the clearing house numbered 1, 2, 3, ... as its outbox would."""

    def __init__(self, client: TestClient, clearing: Clearing, clock: Clock) -> None:
        self.client = client
        self.clearing = clearing
        self.clock = clock
        self.tokens: dict[str, str] = {}
        self._seq: dict[str, int] = {}
        self._transfers = 0

    def send(self, source: str, message: AnyMessage) -> None:
        self._seq[source] = self._seq.get(source, 0) + 1
        envelope = Envelope(
            source=source, destination=CLEARING, seq=self._seq[source], message=message
        )
        [result] = self.clearing.receive([envelope])
        assert result.outcome.value == "applied", result

    def commit(self, payer_bank: str, payee_bank: str, minutes: int) -> None:
        """A cross-bank transfer the clearing house commits: requested, then prepared."""
        self._transfers += 1
        transfer_id = f"t{self._transfers}"
        self.send(
            payer_bank,
            TransferRequested(
                transfer_id=transfer_id,
                payer_bank=payer_bank,
                payer="maya",
                payee_bank=payee_bank,
                payee="bob",
                minutes=minutes,
                requested_at=START,
            ),
        )
        self.send(payee_bank, CreditPrepared(transfer_id=transfer_id))
        assert self.clearing.get_transfer(transfer_id).status == "committed"

    def admit(self, bank_id: str) -> dict[str, Any]:
        body = {
            "bank_id": bank_id,
            "name": bank_id.title(),
            "limit_minutes": LIMIT,
            "public_key": participant_key(bank_id).public_key,
        }
        response = self.client.post("/v1/banks", json=body, headers=ADMIN)
        assert response.status_code == 201, response.text
        admitted: dict[str, Any] = response.json()
        self.tokens[bank_id] = admitted["clearing_token"]
        return admitted

    def as_bank(self, bank_id: str) -> dict[str, str]:
        return bearer(self.tokens[bank_id])

    def confirm(
        self,
        settlement_id: int,
        number: int,
        headers: dict[str, str] | None,
        signed_by: SigningKey | str | None = None,
    ) -> Any:  # an httpx Response
        """Confirm with these headers, signed with a key (by default: the key of the bank whose
        token the headers carry, or college's when they carry none)."""
        bank = next((b for b, t in self.tokens.items() if headers == bearer(t)), "college")
        if isinstance(signed_by, str):
            bank, signed_by = signed_by, None
        key = signed_by or participant_key(bank)
        signature = key.sign(confirmation_payload(bank, settlement_id, number))
        return self.client.post(
            f"/v1/settlements/{settlement_id}/obligations/{number}/confirm",
            json={"signature": signature},
            headers=headers,
        )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer(ADMIN_TOKEN)
AUDITOR = bearer(AUDITOR_TOKEN)


@pytest.fixture
def fed(store_url: str) -> Iterator[Federation]:
    """gp, college and library admitted through the API, no transfers yet."""
    clock = Clock(START)
    clearing = Clearing(parse_store_url(store_url), clock=clock)
    environ = {"TIMEBANK_ADMIN_TOKEN": ADMIN_TOKEN, "TIMEBANK_AUDITOR_TOKEN": AUDITOR_TOKEN}
    settings = ClearingSettings.build(environ, store_url=store_url)
    with TestClient(create_clearing_app(settings, clearing)) as client:
        federation = Federation(client, clearing, clock)
        for bank_id in BANK_IDS:
            federation.admit(bank_id)
        yield federation
    clearing.close()


@pytest.fixture
def owing(fed: Federation) -> Federation:
    """gp owes 150: 100 to college and 50 to library (two obligations)."""
    fed.commit("gp", "college", 120)
    fed.commit("college", "gp", 20)
    fed.commit("gp", "library", 50)
    assert fed.clearing.positions() == {"gp": -150, "college": 100, "library": 50}
    return fed


def open_cycle(fed: Federation) -> dict[str, Any]:
    response = fed.client.post("/v1/settlements", headers=ADMIN)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


SETTLEMENT_FIELDS = {
    "settlement_id",
    "status",
    "cut_off_at",
    "completed_at",
    "positions",
    "obligations",
}
OBLIGATION_FIELDS = {"number", "debtor", "creditor", "minutes", "status", "confirmed_at"}


def assert_settlement_shape(body: dict[str, Any]) -> None:
    """Exactly the fields the response shapes declare (the published contract), of the
    declared types."""
    assert field_names(SettlementView) == SETTLEMENT_FIELDS
    assert field_names(ObligationView) == OBLIGATION_FIELDS
    assert set(body) == SETTLEMENT_FIELDS
    for o in body["obligations"]:
        assert set(o) == OBLIGATION_FIELDS
    TypeAdapter(SettlementView).validate_python(body)


def field_names(shape: type) -> set[str]:
    return {f.name for f in dataclasses.fields(shape)}


# Bank tokens at the clearing house.


def test_admitting_a_bank_returns_its_own_clearing_token_once(fed: Federation) -> None:
    body = fed.admit("surgery")
    assert set(body) == field_names(AdmittedBank)
    assert len(set(fed.tokens.values())) == len(fed.tokens) == 4
    assert len(body["clearing_token"]) >= 32
    # Kept only as its digest; never shown again.
    listed = fed.client.get("/v1/banks", headers=ADMIN).json()["banks"]
    assert [set(b) for b in listed] == [field_names(BankView)] * 4
    assert body["clearing_token"] not in fed.client.get("/v1/banks", headers=ADMIN).text
    assert fed.clearing.bank_with_token_digest(digest(body["clearing_token"]).hex()) == "surgery"
    # It names the bank at the settlement routes only: it is no reader's or admin's token.
    assert_problem(fed.client.get("/v1/banks", headers=fed.as_bank("surgery")), 401, "unauthorized")


# Opening a cycle.


def test_opening_a_cycle_answers_201_with_the_cut_off_positions_and_pending_obligations(
    owing: Federation,
) -> None:
    fed = owing
    fed.clock.advance(minutes=30)
    positions = fed.client.get("/v1/positions", headers=AUDITOR).json()["positions"]
    body = open_cycle(fed)
    assert_settlement_shape(body)
    obligations = sorted(
        (o["debtor"], o["creditor"], o["minutes"], o["status"], o["confirmed_at"])
        for o in body["obligations"]
    )
    assert obligations == [
        ("gp", "college", 100, "pending", None),
        ("gp", "library", 50, "pending", None),
    ]
    assert [o["number"] for o in body["obligations"]] == [1, 2]
    assert body["settlement_id"] == 1
    assert body["status"] == "open"
    assert body["positions"] == positions == {"gp": -150, "college": 100, "library": 50}
    assert datetime.fromisoformat(body["cut_off_at"]) == fed.clock.now
    assert body["completed_at"] is None
    assert fed.client.get("/v1/settlements/1", headers=AUDITOR).json() == body
    listed = fed.client.get("/v1/settlements", headers=AUDITOR).json()
    assert set(listed) == set(Settlements.model_fields)
    assert listed == {"settlements": [body]}


def test_opening_a_cycle_needs_the_admin_token(owing: Federation) -> None:
    fed = owing
    response = fed.client.post("/v1/settlements")
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert_problem(
        fed.client.post("/v1/settlements", headers=bearer("x" * 32)), 401, "unauthorized"
    )
    assert_problem(fed.client.post("/v1/settlements", headers=AUDITOR), 403, "forbidden")
    # Nor may a bank open one with its own clearing token.
    assert_problem(
        fed.client.post("/v1/settlements", headers=fed.as_bank("college")), 401, "unauthorized"
    )
    assert fed.client.get("/v1/settlements", headers=AUDITOR).json() == {"settlements": []}
    assert fed.clearing.settlements() == []


def test_reading_settlements_needs_a_reader_token(owing: Federation) -> None:
    open_cycle(owing)
    for path in ("/v1/settlements", "/v1/settlements/1"):
        assert_problem(owing.client.get(path), 401, "unauthorized")
        assert owing.client.get(path, headers=AUDITOR).status_code == 200


def test_a_second_cycle_while_one_is_open_is_409_settlement_open(owing: Federation) -> None:
    first = open_cycle(owing)
    body = assert_problem(
        owing.client.post("/v1/settlements", headers=ADMIN), 409, "settlement_open"
    )
    assert body["settlement_id"] == 1
    assert owing.client.get("/v1/settlements", headers=AUDITOR).json() == {"settlements": [first]}


def test_a_cycle_with_nothing_to_settle_is_completed_at_once(fed: Federation) -> None:
    fed.commit("gp", "college", 60)
    fed.commit("college", "library", 60)
    fed.commit("library", "gp", 60)
    body = open_cycle(fed)
    assert_settlement_shape(body)
    assert (body["status"], body["obligations"]) == ("completed", [])
    assert datetime.fromisoformat(body["completed_at"]) == fed.clock.now
    assert body["positions"] == {"gp": 0, "college": 0, "library": 0}
    assert open_cycle(fed)["settlement_id"] == 2


# Confirming a receipt.


def creditor_of(body: dict[str, Any], number: int) -> str:
    creditor: str = body["obligations"][number - 1]["creditor"]
    return creditor


def test_the_creditor_confirms_with_its_own_token_and_the_last_receipt_completes_it(
    owing: Federation,
) -> None:
    fed = owing
    body = open_cycle(fed)
    fed.clock.advance(minutes=5)
    first_at = fed.clock.now
    response = fed.confirm(1, 1, fed.as_bank(creditor_of(body, 1)))
    assert response.status_code == 200, response.text
    after_one = response.json()
    assert_settlement_shape(after_one)
    assert after_one["status"] == "open"
    assert [o["status"] for o in after_one["obligations"]] == ["confirmed", "pending"]
    assert datetime.fromisoformat(after_one["obligations"][0]["confirmed_at"]) == first_at
    assert after_one["obligations"][1]["confirmed_at"] is None
    assert fed.clearing.positions() == {"gp": -150, "college": 100, "library": 50}

    # Confirming again changes nothing, not even the time.
    fed.clock.advance(minutes=5)
    again = fed.confirm(1, 1, fed.as_bank(creditor_of(body, 1)))
    assert (again.status_code, again.json()) == (200, after_one)

    fed.clock.advance(minutes=5)
    done = fed.confirm(1, 2, fed.as_bank(creditor_of(body, 2))).json()
    assert_settlement_shape(done)
    assert done["status"] == "completed"
    assert datetime.fromisoformat(done["completed_at"]) == fed.clock.now
    assert [o["status"] for o in done["obligations"]] == ["confirmed", "confirmed"]
    assert done["positions"] == {"gp": -150, "college": 100, "library": 50}
    assert fed.client.get("/v1/settlements/1", headers=AUDITOR).json() == done
    positions = fed.client.get("/v1/positions", headers=AUDITOR).json()
    assert positions == {"positions": {"gp": 0, "college": 0, "library": 0}, "sum_minutes": 0}
    # The next cycle may open now.
    assert open_cycle(fed)["settlement_id"] == 2


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {"Authorization": "Bearer "},
        {"Authorization": "Basic Y29sbGVnZTpwYXNz"},
        bearer("not-any-banks-token-" + "q" * 20),
        ADMIN,  # an admin cannot say a bank was paid
        AUDITOR,
    ],
    ids=["none", "empty", "basic", "wrong", "admin", "auditor"],
)
def test_confirming_without_a_banks_token_is_401(
    owing: Federation, headers: dict[str, str] | None
) -> None:
    open_cycle(owing)
    response = owing.confirm(1, 1, headers)
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    view = owing.client.get("/v1/settlements/1", headers=AUDITOR).json()
    assert [o["status"] for o in view["obligations"]] == ["pending", "pending"]


@pytest.mark.parametrize("who", ["debtor", "other creditor"])
def test_confirming_with_another_banks_token_is_403_not_creditor(
    owing: Federation, who: str
) -> None:
    body = open_cycle(owing)
    creditor = creditor_of(body, 1)
    other = "gp" if who == "debtor" else creditor_of(body, 2)
    assert other != creditor
    problem = assert_problem(owing.confirm(1, 1, owing.as_bank(other)), 403, "not_creditor")
    assert problem["creditor"] == creditor
    view = owing.client.get("/v1/settlements/1", headers=AUDITOR).json()
    assert [o["status"] for o in view["obligations"]] == ["pending", "pending"]


def test_no_admin_confirms_for_a_bank_not_even_with_a_token_it_reissued(
    owing: Federation,
) -> None:
    body = open_cycle(owing)
    creditor = creditor_of(body, 1)
    reissued = owing.client.post(f"/v1/banks/{creditor}/token", headers=ADMIN)
    assert reissued.status_code == 200
    token = bearer(reissued.json()["clearing_token"])
    url = "/v1/settlements/1/obligations/1/confirm"
    # Without the bank's signature, or signed by the admin's own key or by another bank's.
    assert_problem(owing.client.post(url, headers=token), 422, "invalid_request")
    outsider = SigningKey.generate()
    for key in (outsider, participant_key("gp"), participant_key(creditor_of(body, 2))):
        problem = assert_problem(owing.confirm(1, 1, token, key), 403, "bad_signature")
        assert problem["bank_id"] == creditor
    view = owing.client.get("/v1/settlements/1", headers=AUDITOR).json()
    assert [o["status"] for o in view["obligations"]] == ["pending", "pending"]
    # The bank itself, with its own key, can.
    done = owing.confirm(1, 1, token, creditor)
    assert done.status_code == 200, done.text
    assert [o["status"] for o in done.json()["obligations"]] == ["confirmed", "pending"]


def test_an_unknown_settlement_is_404_unknown_settlement(owing: Federation) -> None:
    assert_problem(
        owing.client.get("/v1/settlements/1", headers=AUDITOR), 404, "unknown_settlement"
    )
    body = open_cycle(owing)
    for settlement_id in (0, 2, 99):
        assert_problem(
            owing.client.get(f"/v1/settlements/{settlement_id}", headers=AUDITOR),
            404,
            "unknown_settlement",
        )
        assert_problem(
            owing.confirm(settlement_id, 1, owing.as_bank(creditor_of(body, 1))),
            404,
            "unknown_settlement",
        )


@pytest.mark.parametrize("number", [0, -1, 3, 1000])
def test_an_unknown_obligation_is_404_unknown_obligation(owing: Federation, number: int) -> None:
    body = open_cycle(owing)
    response = owing.confirm(1, number, owing.as_bank(creditor_of(body, 1)))
    assert_problem(response, 404, "unknown_obligation")
    assert owing.client.get("/v1/settlements/1", headers=AUDITOR).json() == body


def test_a_non_numeric_settlement_or_obligation_is_422(owing: Federation) -> None:
    body = open_cycle(owing)
    token = owing.as_bank(creditor_of(body, 1))
    assert_problem(
        owing.client.get("/v1/settlements/first", headers=AUDITOR), 422, "invalid_request"
    )
    response = owing.client.post(
        "/v1/settlements/1/obligations/one/confirm", json={"signature": "x"}, headers=token
    )
    assert_problem(response, 422, "invalid_request")


def test_a_bank_registers_a_new_key_signed_with_its_current_one_and_only_it_can(
    owing: Federation,
) -> None:
    body = open_cycle(owing)
    creditor = creditor_of(body, 1)
    old, new = participant_key(creditor), SigningKey.generate()
    url = f"/v1/banks/{creditor}/key"

    def request(signed_by: SigningKey) -> dict[str, Any]:
        signature = signed_by.sign(rotation_payload(creditor, new.public_key, 7))
        return {"public_key": new.public_key, "previous_key_until_seq": 7, "signature": signature}

    as_creditor = owing.as_bank(creditor)
    assert_problem(owing.client.post(url, json=request(old), headers=ADMIN), 401, "unauthorized")
    other = owing.as_bank(creditor_of(body, 2))
    assert_problem(owing.client.post(url, json=request(old), headers=other), 403, "forbidden")
    for wrong in (new, SigningKey.generate()):
        response = owing.client.post(url, json=request(wrong), headers=as_creditor)
        assert_problem(response, 403, "bad_signature")
    rotated = owing.client.post(url, json=request(old), headers=as_creditor)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["bank_id"] == creditor
    # From now on the bank's acts are signed with the new key, not the old one.
    assert_problem(owing.confirm(1, 1, as_creditor, old), 403, "bad_signature")
    done = owing.confirm(1, 1, as_creditor, new)
    assert done.status_code == 200, done.text
