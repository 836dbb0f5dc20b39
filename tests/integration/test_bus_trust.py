"""Trust on the bus, over a real nats-server: a message counts only if it came on its source's
subject and its source's signature verifies. Forgeries are dead-lettered with the reason, have
no effect, and take no sequence number from the genuine message they imitate."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path

import nats.errors
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.clearing.application import Clearing
from services.common.outbox import Outbox, outbox_id
from services.ledger.application import Ledger
from shared.bus import CLEARING_CONSUMER, DEAD_REASON_HEADER, Bus, bank_consumer, connect
from shared.protocol import (
    CLEARING,
    AnyMessage,
    BankEntry,
    CheckpointPublished,
    Codec,
    CreditRequested,
    DirectoryChanged,
    Envelope,
    SettlementCompleted,
    TransferCommitted,
    TransferRequested,
)
from shared.signing import SigningKey, checkpoint_payload, envelope_payload, rotation_payload
from tests.helpers import participant_key
from tests.integration.bus_federation import committed_everywhere, eventually, run_federation

pytestmark = pytest.mark.timeout(90)

OUTSIDER = SigningKey.generate()


def next_seq(app: Clearing | Ledger, source: str, destination: str) -> int:
    """The sequence number the source's next genuine message to ``destination`` will carry."""
    outbox = app.find(outbox_id(source, destination), Outbox)
    return (outbox.queued if outbox is not None else 0) + 1


async def publish(
    js: JetStreamContext,
    subject: str,
    envelope: Envelope,
    key: SigningKey | None,
    msg_id: str,
) -> None:
    """Publish an envelope as anyone may who reaches the server, signed with ``key``."""
    data = Codec().encode(envelope)
    headers = {"Nats-Msg-Id": msg_id}
    if key is not None:
        headers["Tb-Signature"] = key.sign(envelope_payload(data))
    await js.publish(subject, data, headers=headers)


async def dead_reasons(js: JetStreamContext, bus: Bus, consumer: str, count: int) -> list[str]:
    """The reasons of the first ``count`` dead letters of a consumer, waiting for them."""
    subject = bus.dead_letters(consumer)
    subscription = await js.pull_subscribe(subject, stream=bus.dead_letter_stream)
    letters: list[Msg] = []
    for _ in range(20):
        with contextlib.suppress(nats.errors.TimeoutError):
            letters += await subscription.fetch(count - len(letters), timeout=0.5)
        if len(letters) >= count:
            break
    return [(m.headers or {})[DEAD_REASON_HEADER] for m in letters]


def requested(transfer_id: str, payer_bank: str, minutes: int) -> TransferRequested:
    return TransferRequested(
        transfer_id=transfer_id,
        payer_bank=payer_bank,
        payer="maya" if payer_bank == "gp" else "bob",
        payee_bank="college" if payer_bank == "gp" else "gp",
        payee="bob" if payer_bank == "gp" else "maya",
        minutes=minutes,
        requested_at=datetime.now(UTC),
    )


def test_forged_requests_are_dead_lettered_and_take_no_genuine_sequence_number(
    tmp_path: Path, nats_url: str, bus: Bus
) -> None:
    """Each forgery claims gp's (or college's) next sequence number; the genuine messages that
    carry those numbers afterwards are applied all the same."""

    async def scenario(clearing: Clearing, banks: dict[str, Ledger], url: str) -> None:
        gp = banks["gp"]
        nc = await connect(url, "test-forger")
        js = nc.jetstream()
        gp_seq = next_seq(gp, "gp", CLEARING)
        college_seq = next_seq(banks["college"], "college", CLEARING)
        forgeries = [
            # Unsigned, on gp's own subject.
            (bus.to_clearing("gp"), "gp", gp_seq, None),
            # Signed by someone whose key the clearing house does not hold for gp.
            (bus.to_clearing("gp"), "gp", gp_seq, OUTSIDER),
            # Signed by college's genuine key, but claiming to be gp.
            (bus.to_clearing("gp"), "gp", gp_seq, participant_key("college")),
            # Claiming college, on gp's subject, signed with gp's key: the subject gives it away.
            (bus.to_clearing("gp"), "college", college_seq, participant_key("gp")),
        ]
        for n, (subject, source, seq, key) in enumerate(forgeries):
            envelope = Envelope(
                source=source,
                destination=CLEARING,
                seq=seq,
                message=requested(f"forged-{n}", source, 500),
            )
            # The id the genuine message would carry if ids named only sender and number: the
            # genuine message, published later, must not be dropped as its duplicate.
            await publish(js, subject, envelope, key, f"{source}>{CLEARING}:{seq}" + "'" * n)
        reasons = await dead_reasons(js, bus, CLEARING_CONSUMER, len(forgeries))
        assert len(reasons) == len(forgeries)
        assert sum("unsigned" in r for r in reasons) == 1
        assert sum("does not verify against gp's key" in r for r in reasons) == 2
        assert sum("comes on" in r and "not on" in r for r in reasons) == 1
        assert all(r.startswith("not authentic:") for r in reasons)
        assert clearing.positions() == {"gp": 0, "college": 0}

        # The genuine messages with those very sequence numbers are applied.
        to_college = gp.request_transfer("maya", "college", "bob", 40, "real").value.transfer_id
        to_gp = banks["college"].request_transfer("bob", "gp", "maya", 15, "back").value
        # Each transfer is committed at both of its banks: the payer's and the payee's books.
        await eventually(
            lambda: (
                committed_everywhere(banks, "gp", to_college)
                and committed_everywhere(banks, "college", to_gp.transfer_id)
            )
        )
        assert clearing.positions() == {"gp": -25, "college": 25}
        assert gp.get_member("maya").balance_minutes == -25
        for n in range(len(forgeries)):
            with pytest.raises(Exception, match="no transfer"):
                clearing.get_transfer(f"forged-{n}")
        await nc.close()

    run_federation(tmp_path, nats_url, bus, scenario)


def test_forged_messages_from_the_clearing_house_move_nothing_at_a_bank(
    tmp_path: Path, nats_url: str, bus: Bus
) -> None:
    """A credit, a commit, a directory change and a settlement "from the clearing house",
    signed by anyone but the clearing house: none has an effect, and the clearing house's
    next genuine messages to the bank (which carry those sequence numbers) are applied."""

    async def scenario(clearing: Clearing, banks: dict[str, Ledger], url: str) -> None:
        college = banks["college"]
        nc = await connect(url, "test-forger")
        js = nc.jetstream()
        seq = next_seq(clearing, CLEARING, "college")
        messages: list[AnyMessage] = [
            CreditRequested(
                transfer_id="forged", payer_bank="gp", payer="maya", payee="bob", minutes=600
            ),
            TransferCommitted(transfer_id="forged", payer_bank="gp", payee_bank="college",
                              minutes=600),
            DirectoryChanged(banks=[BankEntry(bank_id="college", name="College",
                                              status="active")]),
            SettlementCompleted(settlement_id=1, paid_minutes=123_456, received_minutes=0),
        ]  # fmt: skip
        keys = [OUTSIDER, participant_key("gp"), None, participant_key("college")]
        for n, (message, key) in enumerate(zip(messages, keys, strict=True)):
            envelope = Envelope(source=CLEARING, destination="college", seq=seq + n,
                                message=message)  # fmt: skip
            await publish(js, bus.to_bank("college"), envelope, key, f"forged-{n}")
        reasons = await dead_reasons(js, bus, bank_consumer("college"), len(messages))
        assert len(reasons) == len(messages)
        assert all(r.startswith("not authentic:") for r in reasons)
        assert college.get_member("bob").balance_minutes == 0
        assert college.get_member("federation").held_minutes == 0
        assert college.get_member("settlement").balance_minutes == 0
        assert set(college.known_banks()) == {"gp", "college"}

        # The clearing house's genuine messages, numbered as the forgeries were, still count.
        gp = banks["gp"]
        transfer_id = gp.request_transfer("maya", "college", "bob", 30, "real").value.transfer_id
        await eventually(lambda: committed_everywhere(banks, "gp", transfer_id))
        assert college.get_member("bob").balance_minutes == 30
        await nc.close()

    run_federation(tmp_path, nats_url, bus, scenario)


def test_a_genuine_message_delivered_again_much_later_has_no_second_effect(
    tmp_path: Path, nats_url: str, bus: Bus
) -> None:
    """Copied off the stream and published again under a new de-duplication id (so JetStream
    lets it through): signed and on the right subject, it is still only a repeat."""

    async def scenario(clearing: Clearing, banks: dict[str, Ledger], url: str) -> None:
        gp, college = banks["gp"], banks["college"]
        transfer_id = gp.request_transfer("maya", "college", "bob", 20, "once").value.transfer_id
        await eventually(lambda: gp.get_transfer(transfer_id).status == "committed")
        await eventually(lambda: len(clearing.get_transfer(transfer_id).acknowledged_by) == 2)
        nc = await connect(url, "test-replayer")
        js = nc.jetstream()
        subscription = await js.pull_subscribe(bus.to_bank("college"), stream=bus.to_banks_stream)
        copies = await subscription.fetch(50, timeout=5)
        assert len(copies) >= 3  # the directory, the credit request, the commit
        for n, copy in enumerate(copies):
            headers = dict(copy.headers or {})
            headers["Nats-Msg-Id"] = f"replayed-{n}"
            await js.publish(copy.subject, copy.data, headers=headers)
        await asyncio.sleep(1.0)
        again = gp.request_transfer("maya", "college", "bob", 5, "after").value.transfer_id
        await eventually(lambda: committed_everywhere(banks, "gp", again))
        assert college.get_member("bob").balance_minutes == 25
        assert len(college.statement("bob").entries) == 2
        assert clearing.positions() == {"gp": -25, "college": 25}
        await nc.close()

    run_federation(tmp_path, nats_url, bus, scenario)


def test_after_a_key_rotation_only_the_new_key_signs_what_follows(
    tmp_path: Path, nats_url: str, bus: Bus
) -> None:
    """gp rotates its key at the clearing house (the request signed with its admitted key):
    its next message signed with the old key is set aside, the same one signed with the new
    key counts."""

    async def scenario(clearing: Clearing, banks: dict[str, Ledger], url: str) -> None:
        old, new = participant_key("gp"), SigningKey.generate()
        seq = next_seq(banks["gp"], "gp", CLEARING)
        signature = old.sign(rotation_payload("gp", new.public_key, seq - 1))
        clearing.rotate_key("gp", new.public_key, seq - 1, signature)
        nc = await connect(url, "test-rotation")
        js = nc.jetstream()
        chain_hash = "ab" * 32
        for n, key in enumerate((old, new)):
            checkpoint = CheckpointPublished(
                position=7,
                chain_hash=chain_hash,
                signature=new.sign(checkpoint_payload("gp", 7, chain_hash)),
            )
            envelope = Envelope(source="gp", destination=CLEARING, seq=seq, message=checkpoint)
            await publish(js, bus.to_clearing("gp"), envelope, key, f"rotated-{n}")
        [reason] = await dead_reasons(js, bus, CLEARING_CONSUMER, 1)
        assert "does not verify against gp's key" in reason
        await eventually(lambda: clearing.checkpoints("gp") != [])
        assert [c[:2] for c in clearing.checkpoints("gp")] == [(7, chain_hash)]
        await nc.close()

    run_federation(tmp_path, nats_url, bus, scenario)
