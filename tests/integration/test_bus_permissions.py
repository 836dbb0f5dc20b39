"""NATS users and their permissions, on a real nats-server run with the config `timebank up`
generates: no anonymous access, and a bank confined to its own subjects and consumer. Also: a
consumer deleted under the clearing house is made again and every transfer is still decided."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from services.clearing.application import Clearing
from services.ledger.application import Ledger
from services.local.nats_config import write_auth_config
from services.local.nats_server import NatsServer
from shared.bus import CLEARING_CONSUMER, Bus, bank_consumer, connect, consumer_config
from shared.nats_users import new_seed
from shared.protocol import CLEARING
from tests.integration.bus_federation import eventually, run_federation

pytestmark = pytest.mark.timeout(90)

BANKS = ("gp", "college")


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[NatsServer, dict[str, Path]]]:
    """A nats-server with the federation's users (the clearing house, gp, college)."""
    seeds = {name: tmp_path / f"{name}.nk" for name in (CLEARING, *BANKS)}
    nkeys = {name: new_seed(seed) for name, seed in seeds.items()}
    config = tmp_path / "nats-auth.conf"
    write_auth_config(config, Bus(), nkeys[CLEARING], [(b, nkeys[b]) for b in BANKS])
    with NatsServer(tmp_path / "nats", config_file=config) as server:
        yield server, seeds


async def as_user(server: NatsServer, seeds: dict[str, Path], name: str) -> NATS:
    return await connect(
        server.url, f"test-{name}", seed_file=seeds[name], inbox_prefix=Bus().inbox_prefix(name)
    )


async def set_up_bus(js: JetStreamContext, bus: Bus) -> None:
    """What the clearing house does at its start: the streams and every consumer."""
    await bus.ensure_streams(js)
    await js.add_consumer(
        bus.to_clearing_stream,
        config=consumer_config(CLEARING_CONSUMER, bus.to_clearing("*")),
    )
    for bank_id in BANKS:
        await js.add_consumer(
            bus.to_banks_stream,
            config=consumer_config(bank_consumer(bank_id), bus.to_bank(bank_id)),
        )


def test_nobody_connects_without_credentials(
    secured: tuple[NatsServer, dict[str, Path]],
) -> None:
    server, _ = secured

    async def main() -> None:
        with pytest.raises((nats.errors.Error, OSError)):
            await nats.connect(server.url, allow_reconnect=False, connect_timeout=2)

    asyncio.run(main())


def test_a_bank_reaches_only_its_own_subjects_and_consumer(
    secured: tuple[NatsServer, dict[str, Path]],
) -> None:
    server, seeds = secured
    bus = Bus()

    async def main() -> None:
        clearing = await as_user(server, seeds, CLEARING)
        admin = clearing.jetstream(timeout=2)
        await set_up_bus(admin, bus)
        gp = await as_user(server, seeds, "gp")
        js = gp.jetstream(timeout=1)

        # Its own messages towards the clearing house: accepted.
        await js.publish(bus.to_clearing("gp"), b"from gp")
        # As another bank, or to a bank: never stored.
        for subject in (bus.to_clearing("college"), bus.to_bank("college"), bus.to_bank("gp")):
            with pytest.raises(nats.errors.Error):
                await js.publish(subject, b"forged")
        assert (await admin.stream_info(bus.to_clearing_stream)).state.messages == 1
        assert (await admin.stream_info(bus.to_banks_stream)).state.messages == 0

        # What the clearing house sends gp, gp fetches and acknowledges from its own consumer.
        await admin.publish(bus.to_bank("gp"), b"to gp")
        await admin.publish(bus.to_bank("college"), b"to college")
        own = await js.pull_subscribe_bind(bank_consumer("gp"), stream=bus.to_banks_stream)
        [message] = await own.fetch(1, timeout=2)
        assert message.data == b"to gp"
        await message.ack()

        # Another bank's consumer, any stream's contents, making or deleting: refused.
        other = await js.pull_subscribe_bind(bank_consumer("college"), stream=bus.to_banks_stream)
        with pytest.raises(nats.errors.Error):
            await other.fetch(1, timeout=1)
        refused = [
            js.stream_info(bus.to_banks_stream),
            js.get_msg(bus.to_banks_stream, 2),
            js.consumer_info(bus.to_banks_stream, bank_consumer("college")),
            js.add_stream(StreamConfig(name="GP_OWN", subjects=["gp.own"])),
            js.delete_consumer(bus.to_clearing_stream, CLEARING_CONSUMER),
            js.delete_stream(bus.to_banks_stream),
            js.add_consumer(
                bus.to_banks_stream, config=consumer_config("gp-spy", bus.to_bank("college"))
            ),
        ]
        for call in refused:
            with pytest.raises(nats.errors.Error):
                await call
        # Nothing of that happened.
        college = await admin.consumer_info(bus.to_banks_stream, bank_consumer("college"))
        assert college.num_pending == 1
        await admin.consumer_info(bus.to_clearing_stream, CLEARING_CONSUMER)
        assert {s.config.name for s in await admin.streams_info()} == {
            c.name for c in bus.streams()
        }
        await gp.close()
        await clearing.close()

    asyncio.run(main())


def test_a_consumer_deleted_under_the_clearing_house_is_made_again(
    tmp_path: Path, nats_url: str, bus: Bus
) -> None:
    async def scenario(clearing: Clearing, banks: dict[str, Ledger], url: str) -> None:
        nc = await connect(url, "test-vandal")
        js = nc.jetstream()
        gp = banks["gp"]
        ids = [gp.request_transfer("maya", "college", "bob", 2, f"n{n}").value.transfer_id
               for n in range(10)]  # fmt: skip
        await js.delete_consumer(bus.to_clearing_stream, CLEARING_CONSUMER)
        await js.delete_consumer(bus.to_banks_stream, bank_consumer("college"))
        ids += [gp.request_transfer("maya", "college", "bob", 3, f"m{n}").value.transfer_id
                for n in range(10)]  # fmt: skip
        await eventually(
            lambda: all(gp.get_transfer(i).status == "committed" for i in ids), seconds=40
        )
        assert clearing.positions() == {"gp": -50, "college": 50}
        await js.consumer_info(bus.to_clearing_stream, CLEARING_CONSUMER)
        await nc.close()

    run_federation(tmp_path, nats_url, bus, scenario)
