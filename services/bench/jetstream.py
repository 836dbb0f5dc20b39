"""Figure 3's baseline: raw JetStream round trips of 4 hops, as a transfer crosses the bus.

Each hop: published to a stream, fetched by a pull consumer that publishes the next hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

import nats
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, StorageType, StreamConfig

from services.bench.measure import Run

# A transfer crosses the bus four times: payer bank -> clearing house -> payee bank ->
# clearing house -> the banks.
HOPS = 4
FETCH_TIMEOUT_SECONDS = 0.2
TRIP_TIMEOUT_SECONDS = 30.0


def measure_hops(
    nats_url: str, *, concurrency: int, count: int, seconds: float, rate: float | None = None
) -> Run:
    """``count`` round trips, ``concurrency`` at a time: back to back, or with ``rate`` one
    started every 1/rate seconds (open loop, at most ``concurrency`` in flight)."""
    return asyncio.run(_measure(nats_url, concurrency, count, seconds, rate))


async def _measure(
    nats_url: str, concurrency: int, count: int, seconds: float, rate: float | None
) -> Run:
    nc = await nats.connect(nats_url, allow_reconnect=False, connect_timeout=5)
    js = nc.jetstream()
    tag = secrets.token_hex(4)
    stream, prefix = f"BENCH_HOPS_{tag.upper()}", f"benchhops{tag}"
    await js.add_stream(
        StreamConfig(name=stream, subjects=[f"{prefix}.*"], storage=StorageType.FILE)
    )
    hops = _Hops(js, prefix)
    relays = []
    try:
        for hop in range(1, HOPS + 1):
            subscription = await js.pull_subscribe(
                f"{prefix}.{hop}",
                durable=f"hop{hop}",
                stream=stream,
                config=ConsumerConfig(max_ack_pending=4 * concurrency),
            )
            relays.append(asyncio.create_task(hops.relay(hop, subscription, concurrency)))
        if rate is None:
            return await hops.closed_loop(concurrency, count, seconds)
        return await hops.open_loop(concurrency, count, seconds, rate)
    finally:
        hops.stopping = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*relays, return_exceptions=True), 5)
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        await nc.close()


class _Hops:
    def __init__(self, js: JetStreamContext, prefix: str) -> None:
        self.js = js
        self.prefix = prefix
        self.waiting: dict[bytes, asyncio.Future[None]] = {}
        self.stopping = False

    async def relay(
        self, hop: int, subscription: JetStreamContext.PullSubscription, batch: int
    ) -> None:
        """Fetch what reaches this hop; acknowledge it and publish it to the next (or, at the
        last hop, end its trip)."""
        while not self.stopping:
            try:
                messages = await subscription.fetch(batch, timeout=FETCH_TIMEOUT_SECONDS)
            except (nats.errors.TimeoutError, TimeoutError):
                continue

            async def forward(data: bytes) -> None:
                if hop < HOPS:
                    await self.js.publish(f"{self.prefix}.{hop + 1}", data)
                    return
                waiter = self.waiting.pop(data, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

            await asyncio.gather(*(message.ack() for message in messages))
            await asyncio.gather(*(forward(message.data) for message in messages))

    async def trip(self, number: int) -> float:
        """One round trip of all the hops; its time in seconds."""
        data = str(number).encode()
        waiter = asyncio.get_running_loop().create_future()
        self.waiting[data] = waiter
        began = time.perf_counter()
        try:
            await self.js.publish(f"{self.prefix}.1", data)
            await asyncio.wait_for(waiter, TRIP_TIMEOUT_SECONDS)
        finally:
            self.waiting.pop(data, None)
        return time.perf_counter() - began

    async def closed_loop(self, concurrency: int, count: int, seconds: float) -> Run:
        run = Run(planned=count)
        numbers = iter(range(count))
        began = time.perf_counter()
        deadline = began + seconds

        async def client() -> None:
            for number in numbers:
                if time.perf_counter() > deadline:
                    return
                try:
                    run.latencies.append(await self.trip(number))
                except Exception as e:
                    run.errors.append(f"{type(e).__name__}: {e}")

        await asyncio.gather(*(client() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - began
        return run

    async def open_loop(self, concurrency: int, count: int, seconds: float, rate: float) -> Run:
        run = Run(planned=count)
        in_flight = asyncio.Semaphore(concurrency)
        began = time.perf_counter()
        tasks = []

        async def one(number: int) -> None:
            try:
                run.latencies.append(await self.trip(number))
            except Exception as e:
                run.errors.append(f"{type(e).__name__}: {e}")
            finally:
                in_flight.release()

        for number in range(count):
            due = began + number / rate
            if due - began > seconds:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await in_flight.acquire()
            tasks.append(asyncio.create_task(one(number)))
        await asyncio.gather(*tasks)
        run.seconds = time.perf_counter() - began
        return run
