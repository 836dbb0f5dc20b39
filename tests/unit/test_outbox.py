"""The Outbox aggregate: gap-free numbering, plain-builtin Queued events, and its event log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from eventsourcing.application import Application

from services.common.outbox import QUEUED_TOPIC, Outbox, envelope_of, outbox_id
from shared.protocol import (
    CLEARING,
    AnyMessage,
    BankEntry,
    Codec,
    CreditRefused,
    DecisionApplied,
    DirectoryChanged,
    Envelope,
    TransferCommitted,
    TransferRequested,
)

BANK = "rushey-green"

MESSAGES: list[AnyMessage] = [
    TransferRequested(
        transfer_id="t-1",
        payer_bank=BANK,
        payer="alice",
        payee_bank="fair-shares",
        payee="bob",
        minutes=90,
        memo="gardening, 1½ h",
        requested_at=datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC),
    ),
    CreditRefused(transfer_id="t-2", reason="unknown_payee", detail="no member bob"),
    TransferCommitted(transfer_id="t-3", payer_bank=BANK, payee_bank="fair-shares", minutes=5),
    DirectoryChanged(
        banks=[
            BankEntry(bank_id=BANK, name="Rushey Green", status="active"),
            BankEntry(bank_id="fair-shares", name="Fair Shares", status="suspended"),
        ]
    ),
    DecisionApplied(transfer_id="t-3", committed=False),
]


def message_id(message: AnyMessage) -> str:
    return type(message).__name__


@pytest.fixture
def app() -> Iterator[Application[Any]]:
    application: Application[Any] = Application(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield application
    application.close()


def queued_events(outbox: Outbox) -> list[Outbox.Queued]:
    return [e for e in outbox.collect_events() if isinstance(e, Outbox.Queued)]


def assert_plain_builtins(value: Any) -> None:
    """Only what JSON has: so the stored event never depends on msgspec's classes."""
    if isinstance(value, dict):
        assert all(isinstance(k, str) for k in value)
        for item in value.values():
            assert_plain_builtins(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain_builtins(item)
    else:
        assert value is None or type(value) in (str, int, bool, float), type(value)


# --- the aggregate on its own -----------------------------------------------------------------


def test_a_new_outbox_has_queued_nothing() -> None:
    outbox = Outbox(source=BANK, destination=CLEARING)

    assert outbox.queued == 0
    assert (outbox.source, outbox.destination) == (BANK, CLEARING)


def test_queue_numbers_messages_one_two_three_without_gaps() -> None:
    outbox = Outbox(source=BANK, destination=CLEARING)

    returned = [outbox.queue(m) for m in MESSAGES]

    assert returned == list(range(1, len(MESSAGES) + 1))
    assert [e.seq for e in queued_events(outbox)] == returned
    assert outbox.queued == len(MESSAGES)


def test_queuing_the_same_message_twice_gives_it_two_numbers() -> None:
    # The outbox numbers decisions to send, it does not de-duplicate them.
    outbox = Outbox(source=BANK, destination=CLEARING)

    assert (outbox.queue(MESSAGES[4]), outbox.queue(MESSAGES[4])) == (1, 2)


def test_each_queued_event_carries_its_address_and_number() -> None:
    outbox = Outbox(source=CLEARING, destination="fair-shares")
    for message in MESSAGES[:3]:
        outbox.queue(message)

    events = queued_events(outbox)

    assert [(e.source, e.destination, e.seq) for e in events] == [
        (CLEARING, "fair-shares", 1),
        (CLEARING, "fair-shares", 2),
        (CLEARING, "fair-shares", 3),
    ]


@pytest.mark.parametrize("message", MESSAGES, ids=message_id)
def test_a_queued_event_holds_the_message_as_plain_builtins(message: AnyMessage) -> None:
    outbox = Outbox(source=BANK, destination=CLEARING)
    outbox.queue(message)

    (event,) = queued_events(outbox)

    assert type(event.message) is dict
    assert_plain_builtins(event.message)
    # The wire tag is kept, so the message can be rebuilt as the right type.
    assert event.message["type"] == message.__struct_config__.tag
    assert json.loads(json.dumps(event.message)) == event.message


def test_a_queued_datetime_is_stored_as_text() -> None:
    outbox = Outbox(source=BANK, destination=CLEARING)
    outbox.queue(MESSAGES[0])

    (event,) = queued_events(outbox)

    assert event.message["requested_at"] == "2025-03-14T09:26:53.589793Z"


@pytest.mark.parametrize("message", MESSAGES, ids=message_id)
def test_envelope_of_rebuilds_the_envelope_that_was_queued(message: AnyMessage) -> None:
    outbox = Outbox(source=BANK, destination=CLEARING)
    outbox.queue(MESSAGES[2])
    outbox.queue(message)

    event = queued_events(outbox)[-1]
    envelope = envelope_of(event)

    assert envelope == Envelope(source=BANK, destination=CLEARING, seq=2, message=message)
    assert type(envelope.message) is type(message)


def test_a_rebuilt_envelope_passes_the_receivers_codec() -> None:
    outbox = Outbox(source=BANK, destination=CLEARING)
    outbox.queue(MESSAGES[0])
    envelope = envelope_of(queued_events(outbox)[0])
    codec = Codec()

    assert codec.decode(codec.encode(envelope)) == envelope


def test_outbox_id_is_stable_for_the_same_pair() -> None:
    assert outbox_id(BANK, CLEARING) == outbox_id(BANK, CLEARING)
    assert Outbox(source=BANK, destination=CLEARING).id == outbox_id(BANK, CLEARING)


@pytest.mark.parametrize(
    "other",
    [
        ("fair-shares", CLEARING),
        (BANK, "fair-shares"),
        (CLEARING, BANK),
    ],
    ids=repr,
)
def test_outbox_id_differs_for_a_different_pair(other: tuple[str, str]) -> None:
    assert outbox_id(*other) != outbox_id(BANK, CLEARING)


def test_outbox_ids_of_different_pairs_never_collide() -> None:
    assert outbox_id("a>b", "c") != outbox_id("a", "b>c")


def test_create_id_agrees_with_outbox_id() -> None:
    assert Outbox.create_id(BANK, CLEARING) == outbox_id(BANK, CLEARING)
    assert Outbox.create_id(source=CLEARING, destination=BANK) == outbox_id(CLEARING, BANK)


# --- through a real application on the in-memory store ----------------------------------------


def test_a_reloaded_outbox_keeps_its_counter(app: Application[Any]) -> None:
    outbox = Outbox(source=BANK, destination=CLEARING)
    outbox.queue(MESSAGES[0])
    outbox.queue(MESSAGES[1])
    app.save(outbox)

    reloaded: object = app.repository.get(outbox_id(BANK, CLEARING))

    assert isinstance(reloaded, Outbox)
    assert reloaded.queued == 2
    assert (reloaded.source, reloaded.destination) == (BANK, CLEARING)


def test_queuing_after_a_reload_continues_the_sequence(app: Application[Any]) -> None:
    outbox = Outbox(source=BANK, destination=CLEARING)
    outbox.queue(MESSAGES[0])
    outbox.queue(MESSAGES[1])
    app.save(outbox)

    reloaded: Outbox = app.repository.get(outbox.id)
    assert reloaded.queue(MESSAGES[2]) == 3
    app.save(reloaded)

    assert app.repository.get(outbox.id).queued == 3


def test_the_notification_log_lists_queued_events_in_save_order(app: Application[Any]) -> None:
    to_clearing = Outbox(source=BANK, destination=CLEARING)
    to_bank = Outbox(source=CLEARING, destination=BANK)
    to_clearing.queue(MESSAGES[0])
    to_clearing.queue(MESSAGES[1])
    app.save(to_clearing)
    to_bank.queue(MESSAGES[3])
    app.save(to_bank)
    to_clearing.queue(MESSAGES[2])
    app.save(to_clearing)

    notifications = app.recorder.select_notifications(start=1, limit=100, topics=[QUEUED_TOPIC])

    # The Opened events are in the log too, but the topic filter leaves them out.
    assert {n.topic for n in notifications} == {QUEUED_TOPIC}
    assert [n.id for n in notifications] == sorted(n.id for n in notifications)
    envelopes = [envelope_of(app.mapper.to_domain_event(n)) for n in notifications]  # type: ignore[arg-type]
    assert [(e.source, e.destination, e.seq, e.message) for e in envelopes] == [
        (BANK, CLEARING, 1, MESSAGES[0]),
        (BANK, CLEARING, 2, MESSAGES[1]),
        (CLEARING, BANK, 1, MESSAGES[3]),
        (BANK, CLEARING, 3, MESSAGES[2]),
    ]


def test_the_notification_log_holds_the_opened_events_outside_the_filter(
    app: Application[Any],
) -> None:
    outbox = Outbox(source=BANK, destination=CLEARING)
    outbox.queue(MESSAGES[4])
    app.save(outbox)

    everything = app.recorder.select_notifications(start=1, limit=100)
    queued = app.recorder.select_notifications(start=1, limit=100, topics=[QUEUED_TOPIC])

    assert len(everything) == 2
    assert [n.id for n in queued] == [everything[1].id]
