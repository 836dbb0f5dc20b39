"""The v1 federation wire protocol: codec round-trips, strict decoding, msg ids and subjects."""

from __future__ import annotations

import json
import typing
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.bus import DEFAULT_BUS, Bus, InvalidNamespace, bank_consumer
from shared.identifiers import BANK_ID_PATTERN
from shared.protocol import (
    CLEARING,
    AnyMessage,
    BankEntry,
    CheckpointPublished,
    Codec,
    CreditPrepared,
    CreditRefused,
    CreditRequested,
    DecisionApplied,
    DirectoryChanged,
    Envelope,
    Message,
    OfferShared,
    OfferUnshared,
    ProtocolError,
    SettlementCompleted,
    TransferAborted,
    TransferCommitted,
    TransferRequested,
)

AT = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)

SAMPLES: list[Message] = [
    DirectoryChanged(
        banks=[
            BankEntry(bank_id="rushey-green", name="Rushey Green Time Bank", status="active"),
            BankEntry(bank_id="fair-shares", name="Fair Shares — Gloucestershire", status="active"),
            BankEntry(bank_id="b2", name="B2", status="suspended"),
        ]
    ),
    TransferRequested(
        transfer_id="t-1",
        payer_bank="rushey-green",
        payer="alice",
        payee_bank="fair-shares",
        payee="bob",
        minutes=90,
        memo="gardening, 1½ h",
        requested_at=AT,
    ),
    CreditRequested(
        transfer_id="t-1",
        payer_bank="rushey-green",
        payer="alice",
        payee="bob",
        minutes=90,
        memo="gardening",
    ),
    CreditPrepared(transfer_id="t-1"),
    CreditRefused(transfer_id="t-1", reason="unknown_payee", detail="no member bob"),
    TransferCommitted(
        transfer_id="t-1", payer_bank="rushey-green", payee_bank="fair-shares", minutes=90
    ),
    TransferAborted(transfer_id="t-1", reason="deadline_exceeded"),
    DecisionApplied(transfer_id="t-1", committed=True),
    # Relayed unchanged by the clearing house; kept off SAMPLES[-2], a settlement's place.
    OfferShared(
        offer_id="8d9a6a52-6f1e-4d7e-9a57-1d5c0f3a2b11",
        bank="fair-shares",
        revision=2,
        kind="offer",
        member_id="bob",
        member_name="Bob Ellis",
        title="Evening pottery course",
        category="courses",
        minutes=1200,
        where="New Cross",
    ),
    OfferUnshared(offer_id="8d9a6a52-6f1e-4d7e-9a57-1d5c0f3a2b11", bank="fair-shares", revision=3),
    SettlementCompleted(settlement_id=3, paid_minutes=0, received_minutes=45),
    CheckpointPublished(position=41, chain_hash="ab" * 32, signature="c2lnbmF0dXJl"),
]

# The wire names are the contract other implementations code against.
EXPECTED_TAGS = {
    DirectoryChanged: "directory.changed.v1",
    TransferRequested: "transfer.requested.v1",
    CreditRequested: "credit.requested.v1",
    CreditPrepared: "credit.prepared.v1",
    CreditRefused: "credit.refused.v1",
    TransferCommitted: "transfer.committed.v1",
    TransferAborted: "transfer.aborted.v1",
    DecisionApplied: "decision.applied.v1",
    SettlementCompleted: "settlement.completed.v1",
    CheckpointPublished: "checkpoint.published.v1",
    OfferShared: "offer.shared.v1",
    OfferUnshared: "offer.unshared.v1",
}


def envelope(
    message: Any, *, source: str = "rushey-green", destination: str = CLEARING, seq: int = 1
) -> Envelope:
    return Envelope(source=source, destination=destination, seq=seq, message=message)


def wire(message: Message | None = None, **envelope_fields: Any) -> dict[str, Any]:
    """A valid envelope as the JSON object a sender puts on the bus, ready to be spoiled."""
    env = envelope(SAMPLES[1] if message is None else message)
    data: dict[str, Any] = json.loads(Codec().encode(env))
    data.update(envelope_fields)
    return data


def decode(data: Any) -> Envelope:
    return Codec().decode(json.dumps(data).encode())


def sample_id(message: Message) -> str:
    return type(message).__name__


# --- round trips ------------------------------------------------------------------------------


def test_every_message_type_in_the_union_has_a_sample() -> None:
    assert {type(m) for m in SAMPLES} == set(typing.get_args(AnyMessage))


@pytest.mark.parametrize("message", SAMPLES, ids=sample_id)
def test_every_message_type_round_trips_through_the_codec(message: Message) -> None:
    codec = Codec()
    sent = envelope(message, seq=7)

    received = codec.decode(codec.encode(sent))

    assert received == sent
    assert type(received.message) is type(message)


def test_directory_changed_keeps_every_bank_entry_in_order() -> None:
    directory = SAMPLES[0]
    assert isinstance(directory, DirectoryChanged)
    codec = Codec()

    received = codec.decode(codec.encode(envelope(directory, source=CLEARING, destination="b2")))

    assert isinstance(received.message, DirectoryChanged)
    assert received.message.banks == directory.banks
    assert len(received.message.banks) == 3


def test_a_signature_round_trips_with_the_envelope() -> None:
    codec = Codec()
    sent = msgspec.structs.replace(envelope(SAMPLES[3]), signature="c2lnbmF0dXJl")

    assert codec.decode(codec.encode(sent)) == sent


@pytest.mark.parametrize("message", SAMPLES, ids=sample_id)
def test_the_type_tag_on_the_wire_carries_the_version(message: Message) -> None:
    encoded = json.loads(Codec().encode(envelope(message)))

    assert encoded["message"]["type"] == EXPECTED_TAGS[type(message)]
    assert encoded["message"]["type"].endswith(".v1")


# --- rejections -------------------------------------------------------------------------------


def test_garbage_bytes_are_rejected() -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        Codec().decode(b"\xff\xfe not json at all")


def test_empty_bytes_are_rejected() -> None:
    with pytest.raises(ProtocolError, match="truncated"):
        Codec().decode(b"")


@pytest.mark.parametrize("data", [[1, 2], "envelope", 42, None], ids=repr)
def test_json_that_is_not_an_object_is_rejected(data: Any) -> None:
    with pytest.raises(ProtocolError, match="Expected `object`"):
        decode(data)


def test_an_unknown_type_tag_is_rejected_and_named() -> None:
    data = wire()
    data["message"]["type"] = "transfer.requested.v9"

    with pytest.raises(ProtocolError, match=r"transfer\.requested\.v9.*\$\.message\.type"):
        decode(data)


def test_a_message_without_a_type_tag_is_rejected() -> None:
    data = wire()
    del data["message"]["type"]

    with pytest.raises(ProtocolError, match="type"):
        decode(data)


@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("message", "minutes"),
        ("message", "payer_bank"),
        ("message", "transfer_id"),
        ("message", "requested_at"),
        ("envelope", "seq"),
        ("envelope", "source"),
        ("envelope", "message"),
    ],
)
def test_a_missing_required_field_is_rejected_and_named(where: str, field: str) -> None:
    data = wire()
    del (data["message"] if where == "message" else data)[field]

    with pytest.raises(ProtocolError, match=f"missing required field `{field}`"):
        decode(data)


@pytest.mark.parametrize(
    ("field", "value", "got"),
    [
        ("minutes", "5", "str"),
        ("minutes", 5.0, "float"),
        ("minutes", True, "bool"),
        ("minutes", None, "null"),
        ("seq", "1", "str"),
        ("seq", 1.0, "float"),
    ],
    ids=repr,
)
def test_a_value_of_the_wrong_type_is_rejected_and_named(field: str, value: Any, got: str) -> None:
    data = wire()
    if field == "seq":
        data["seq"] = value
        path = r"\$\.seq"
    else:
        data["message"][field] = value
        path = rf"\$\.message\.{field}"

    with pytest.raises(ProtocolError, match=rf"Expected `int`, got `{got}` - at `{path}`"):
        decode(data)


@pytest.mark.parametrize("minutes", [0, -1, -90, 1_000_001])
def test_minutes_out_of_range_are_rejected(minutes: int) -> None:
    data = wire()
    data["message"]["minutes"] = minutes

    with pytest.raises(ProtocolError, match=r"\$\.message\.minutes"):
        decode(data)


def test_the_largest_allowed_amount_is_accepted() -> None:
    data = wire()
    data["message"]["minutes"] = 1_000_000

    assert decode(data).message.minutes == 1_000_000  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("field", "value"),
    [("paid_minutes", -1), ("received_minutes", -45), ("settlement_id", 0), ("paid_minutes", 1.5)],
)
def test_a_settlement_with_negative_minutes_or_no_cycle_number_is_rejected(
    field: str, value: object
) -> None:
    data = wire(SAMPLES[-2])
    data["message"][field] = value

    with pytest.raises(ProtocolError, match=rf"\$\.message\.{field}"):
        decode(data)


@pytest.mark.parametrize("seq", [0, -1])
def test_a_sequence_number_below_one_is_rejected(seq: int) -> None:
    with pytest.raises(ProtocolError, match=r"Expected `int` >= 1 - at `\$\.seq`"):
        decode(wire(seq=seq))


NOT_BANK_IDS = [
    "Rushey-green",
    "BANK",
    "rushey green",
    " bank",
    "b" * 33,
    "-bank",
    "bank-",
    "bank.a",
    "bank_a",
    "",
    "bank-a\n",
]


@pytest.mark.parametrize("field", ["payer_bank", "payee_bank"])
@pytest.mark.parametrize("bank_id", NOT_BANK_IDS, ids=repr)
def test_a_bank_id_outside_the_identifier_pattern_is_rejected(field: str, bank_id: str) -> None:
    assert not BANK_ID_PATTERN.fullmatch(bank_id)
    data = wire()
    data["message"][field] = bank_id

    with pytest.raises(ProtocolError, match=rf"\$\.message\.{field}"):
        decode(data)


@pytest.mark.parametrize("bank_id", NOT_BANK_IDS, ids=repr)
def test_a_directory_entry_with_a_bad_bank_id_is_rejected(bank_id: str) -> None:
    data = wire(SAMPLES[0])
    data["message"]["banks"][1]["bank_id"] = bank_id

    with pytest.raises(ProtocolError, match=r"\$\.message\.banks\[1\]\.bank_id"):
        decode(data)


@pytest.mark.parametrize("field", ["source", "destination"])
@pytest.mark.parametrize(
    "address",
    [
        "b" * 33,
        "",
        "Rushey-green",
        "rushey green",
        "bank.a",
        "*",
        ">",
    ],
    ids=repr,
)
def test_an_envelope_address_that_is_not_a_bank_id_is_rejected(field: str, address: str) -> None:
    data = wire()
    # Keep the other end valid so only the address under test can be the problem.
    data["source" if field == "destination" else "destination"] = "fair-shares"
    data[field] = address

    with pytest.raises(ProtocolError, match=rf"\$\.{field}"):
        decode(data)


@pytest.mark.parametrize("message", [SAMPLES[4], SAMPLES[6]], ids=sample_id)
@pytest.mark.parametrize(
    "reason",
    [
        "Unknown_payee",
        "unknown payee",
        "unknown-payee",
        "_unknown",
        "1_reason",
        "",
        "r" * 65,
        "unknown_payee\n",
    ],
    ids=repr,
)
def test_a_malformed_reason_code_is_rejected(message: Message, reason: str) -> None:
    data = wire(message)
    data["message"]["reason"] = reason

    with pytest.raises(ProtocolError, match=r"\$\.message\.reason"):
        decode(data)


@pytest.mark.parametrize(
    ("message", "field"),
    [(SAMPLES[1], "memo"), (SAMPLES[2], "memo"), (SAMPLES[4], "detail"), (SAMPLES[6], "detail")],
    ids=lambda v: v if isinstance(v, str) else sample_id(v),
)
def test_a_memo_over_500_characters_is_rejected(message: Message, field: str) -> None:
    data = wire(message)
    data["message"][field] = "x" * 501

    with pytest.raises(ProtocolError, match=rf"length <= 500 - at `\$\.message\.{field}`"):
        decode(data)


@pytest.mark.parametrize("memo", ["x" * 500, "é" * 500, "🕰" * 500], ids=["ascii", "latin", "emoji"])
def test_a_memo_of_500_characters_is_accepted_however_many_bytes_it_takes(memo: str) -> None:
    data = wire()
    data["message"]["memo"] = memo

    assert decode(data).message.memo == memo  # type: ignore[union-attr]


def test_an_envelope_addressed_to_its_own_sender_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="source and destination must differ"):
        decode(wire(source="rushey-green", destination="rushey-green"))


@pytest.mark.parametrize(
    "status",
    [
        "retired",
        "Active",
        "ACTIVE",
        "",
        "active suspended",
        "active\n",
    ],
    ids=repr,
)
def test_an_unknown_bank_entry_status_is_rejected(status: str) -> None:
    data = wire(SAMPLES[0])
    data["message"]["banks"][0]["status"] = status

    with pytest.raises(ProtocolError, match=r"\$\.message\.banks\[0\]\.status"):
        decode(data)


# --- schema evolution -------------------------------------------------------------------------


def test_an_unknown_envelope_field_from_a_newer_sender_is_ignored() -> None:
    sent = envelope(SAMPLES[5], seq=3)
    data = json.loads(Codec().encode(sent))
    data["priority"] = {"level": 5, "tags": ["urgent"]}

    assert decode(data) == sent


def test_an_unknown_message_field_from_a_newer_sender_is_ignored() -> None:
    sent = envelope(SAMPLES[1], seq=3)
    data = json.loads(Codec().encode(sent))
    data["message"]["exchange_rate"] = 1.0

    assert decode(data) == sent


def test_an_unknown_bank_entry_field_from_a_newer_sender_is_ignored() -> None:
    sent = envelope(SAMPLES[0], source=CLEARING, destination="b2")
    data = json.loads(Codec().encode(sent))
    data["message"]["banks"][2]["region"] = "south-west"

    assert decode(data) == sent


def test_an_optional_field_left_out_by_an_older_sender_takes_its_default() -> None:
    data = wire(SAMPLES[6])
    del data["message"]["detail"]
    del data["signature"]

    received = decode(data)

    assert isinstance(received.message, TransferAborted)
    assert received.message.detail == ""
    assert received.signature is None


# --- msg_id -----------------------------------------------------------------------------------


def test_equal_envelopes_have_the_same_msg_id() -> None:
    codec = Codec()
    first = envelope(SAMPLES[7], seq=12)
    again = codec.decode(codec.encode(first))

    assert again is not first
    assert again.msg_id == first.msg_id


@pytest.mark.parametrize(
    "change",
    [
        {"source": "fair-shares"},
        {"destination": "fair-shares"},
        {"seq": 13},
    ],
    ids=lambda change: next(iter(change)),
)
def test_msg_id_differs_by_source_destination_or_seq(change: dict[str, Any]) -> None:
    first = envelope(SAMPLES[7], source="rushey-green", destination=CLEARING, seq=12)
    other = msgspec.structs.replace(first, **change)

    assert other.msg_id != first.msg_id


@pytest.mark.parametrize(("source", "destination"), [("a>b", "c"), ("a", "b>c"), ("a:1", "c")])
def test_addresses_that_could_make_two_senders_share_a_msg_id_are_rejected(
    source: str, destination: str
) -> None:
    # msg_id joins the addresses with ">" and ":"; neither may appear in an address.
    with pytest.raises(ProtocolError):
        decode(wire(source=source, destination=destination))


# --- subjects and streams ---------------------------------------------------------------------


def nats_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is exactly one token, a final `>` is one or more."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">" and i == len(want) - 1:
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.x.c", False),
        ("a.*.c", "a.c", False),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("a.b", "a.b", True),
        ("a.b", "a.bb", False),
    ],
)
def test_the_wildcard_matcher_used_here_follows_nats_rules(
    pattern: str, subject: str, expected: bool
) -> None:
    assert nats_matches(pattern, subject) is expected


def streams_covering(subject: str, bus: Bus = DEFAULT_BUS) -> list[str]:
    return [
        str(stream.name)
        for stream in bus.streams()
        if any(nats_matches(p, subject) for p in stream.subjects or [])
    ]


def test_an_envelope_to_the_clearing_goes_to_the_senders_clearing_subject() -> None:
    # The sender's bank, not any bank the message names, picks the subject: permissions key on it.
    env = envelope(SAMPLES[1], source="fair-shares", destination=CLEARING)

    assert DEFAULT_BUS.subject_for(env) == "tb.clearing.in.fair-shares"
    assert DEFAULT_BUS.subject_for(env) == DEFAULT_BUS.to_clearing("fair-shares")


def test_an_envelope_to_a_bank_goes_to_that_banks_inbox() -> None:
    env = envelope(SAMPLES[5], source=CLEARING, destination="fair-shares")

    assert DEFAULT_BUS.subject_for(env) == "tb.bank.fair-shares.in"
    assert DEFAULT_BUS.subject_for(env) == DEFAULT_BUS.to_bank("fair-shares")


@pytest.mark.parametrize(
    ("subject", "stream"),
    [
        (DEFAULT_BUS.to_clearing("rushey-green"), DEFAULT_BUS.to_clearing_stream),
        (DEFAULT_BUS.to_clearing("b2"), DEFAULT_BUS.to_clearing_stream),
        (DEFAULT_BUS.to_bank("rushey-green"), DEFAULT_BUS.to_banks_stream),
        (DEFAULT_BUS.to_bank(CLEARING), DEFAULT_BUS.to_banks_stream),
        (DEFAULT_BUS.dead_letters("clearing"), DEFAULT_BUS.dead_letter_stream),
        (DEFAULT_BUS.dead_letters(bank_consumer("rushey-green")), DEFAULT_BUS.dead_letter_stream),
    ],
)
def test_each_federation_subject_is_stored_by_exactly_its_own_stream(
    subject: str, stream: str
) -> None:
    assert streams_covering(subject) == [stream]


@pytest.mark.parametrize(
    "subject",
    [
        "tb.clearing.in",
        "tb.clearing.in.a.b",
        "tb.clearing.out.a",
        "tb.bank.a.out",
        "tb.bank.a.b.in",
        "tb.bank.in",
        "tb.dead",
        "tb.dead.a.b",
        "other.tb.bank.a.in",
    ],
)
def test_subjects_outside_the_layout_are_stored_by_no_stream(subject: str) -> None:
    assert streams_covering(subject) == []


def test_streams_have_distinct_names() -> None:
    names = [stream.name for stream in DEFAULT_BUS.streams()]
    assert names == ["TB_TO_CLEARING", "TB_TO_BANKS", "TB_DEAD_LETTERS"]


def test_a_namespace_prefixes_every_subject_and_stream_so_federations_can_share_a_server() -> None:
    rehearsal = Bus("rehearsal")
    env = envelope(SAMPLES[1], source="fair-shares", destination=CLEARING)

    assert rehearsal.subject_for(env) == "rehearsal.clearing.in.fair-shares"
    assert [s.name for s in rehearsal.streams()] == [
        "REHEARSAL_TO_CLEARING",
        "REHEARSAL_TO_BANKS",
        "REHEARSAL_DEAD_LETTERS",
    ]
    # Neither federation's streams store the other's messages.
    assert streams_covering(rehearsal.subject_for(env)) == []
    assert streams_covering(DEFAULT_BUS.subject_for(env), rehearsal) == []
    assert streams_covering(rehearsal.subject_for(env), rehearsal) == ["REHEARSAL_TO_CLEARING"]


@pytest.mark.parametrize("namespace", ["", "TB", "tb.x", "tb*", "tb>", "1tb", "tb-x", "a" * 17])
def test_a_namespace_that_would_break_subjects_or_stream_names_is_refused(namespace: str) -> None:
    with pytest.raises(InvalidNamespace, match="lowercase letters and digits"):
        Bus(namespace)


bank_ids = st.from_regex(BANK_ID_PATTERN, fullmatch=True).filter(lambda b: b != CLEARING)


@settings(max_examples=50, deadline=None)
@given(bank=bank_ids, seq=st.integers(min_value=1, max_value=2**53))
def test_every_routed_envelope_lands_in_exactly_the_right_stream(bank: str, seq: int) -> None:
    up = envelope(SAMPLES[7], source=bank, destination=CLEARING, seq=seq)
    down = envelope(SAMPLES[5], source=CLEARING, destination=bank, seq=seq)

    assert streams_covering(DEFAULT_BUS.subject_for(up)) == [DEFAULT_BUS.to_clearing_stream]
    assert streams_covering(DEFAULT_BUS.subject_for(down)) == [DEFAULT_BUS.to_banks_stream]


# --- property: any valid TransferRequested round-trips ------------------------------------------

# Whole-minute UTC offsets: RFC 3339, which the codec writes, has no seconds in an offset.
offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


def ids_() -> st.SearchStrategy[str]:
    return st.text(min_size=1, max_size=64)


transfer_requests = st.builds(
    TransferRequested,
    transfer_id=ids_(),
    payer_bank=bank_ids,
    payer=ids_(),
    payee_bank=bank_ids,
    payee=ids_(),
    minutes=st.integers(min_value=1, max_value=1_000_000),
    memo=st.text(max_size=500),
    requested_at=st.datetimes(timezones=offsets),
)


@settings(max_examples=150, deadline=None)
@given(message=transfer_requests, source=bank_ids, seq=st.integers(min_value=1, max_value=2**63))
def test_any_valid_transfer_request_round_trips_exactly(
    message: TransferRequested, source: str, seq: int
) -> None:
    codec = Codec()
    sent = envelope(message, source=source, destination=CLEARING, seq=seq)

    received = codec.decode(codec.encode(sent))

    assert received == sent
    assert isinstance(received.message, TransferRequested)
    # Aware datetimes compare by instant; the sender's offset must survive as well.
    assert received.message.requested_at.utcoffset() == message.requested_at.utcoffset()
    assert received.message.memo == message.memo
