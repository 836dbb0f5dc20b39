"""Connects one service to NATS: relays its outbox, and feeds what it receives into it,
in batches, acknowledging each message only once its effect (or rejection) is saved."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from services.common.application import SavedEvents, ServiceApplication
from services.common.inbox import Outcome, Received
from services.common.offload import Offload
from services.common.relay import OutboxRelay
from shared.bus import (
    DEAD_REASON_HEADER,
    DEAD_SEQUENCE_HEADER,
    DEAD_SUBJECT_HEADER,
    Bus,
    connect,
    consumer_config,
)
from shared.protocol import Codec, Envelope, ProtocolError

log = logging.getLogger(__name__)

FETCH_BATCH = 256
# A message that arrived before an earlier one from the same sender waits this long.
GAP_RETRY_SECONDS = 0.5
STOP_TIMEOUT_SECONDS = 5.0


def header_safe(text: str, limit: int = 500) -> str:
    """NATS headers are ASCII lines: keep the reason readable and short."""
    return text.encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")[:limit]


class BusWorker:
    """An application's link to the bus: its outbox relay and its inbox consumer."""

    def __init__(
        self,
        app: ServiceApplication,
        *,
        nats_url: str,
        bus: Bus,
        name: str,
        stream: str,
        durable: str,
        filter_subject: str,
        receive: Callable[[Sequence[Envelope]], list[Received]],
    ) -> None:
        self.app = app
        self.nats_url = nats_url
        self.bus = bus
        self.name = name
        self.stream = stream
        self.durable = durable
        self.filter_subject = filter_subject
        self.receive = receive
        self.codec = Codec()
        self.relay: OutboxRelay | None = None
        # Every store call of the relay and the consumer: stop() waits for the last to end.
        self._offload = Offload(name)
        self._nc: NATS | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        self._offload = Offload(self.name)
        self._nc = await connect(self.nats_url, self.name)
        js = self._nc.jetstream()
        await self.bus.ensure_streams(js)
        self.relay = OutboxRelay(
            self.app, js, self.bus, name=f"relay:{self.name}", offload=self._offload
        )
        subscription = await js.pull_subscribe(
            self.filter_subject,
            durable=self.durable,
            stream=self.stream,
            config=consumer_config(self.durable, self.filter_subject),
        )
        self.app.save_listeners.append(self.wake)
        self._tasks = [
            asyncio.create_task(self.relay.run(), name=f"{self.name}-relay"),
            asyncio.create_task(self._consume(js, subscription), name=f"{self.name}-consumer"),
        ]

    def wake(self, _saved: SavedEvents = ()) -> None:
        """Tell the relay there is something new to publish (callable from any thread)."""
        if self.relay is not None:
            self.relay.wake()

    async def stop(self) -> None:
        if self.wake in self.app.save_listeners:
            self.app.save_listeners.remove(self.wake)
        # Python 3.11's wait_for (inside nats-py's fetch) can lose a cancellation that races
        # its timeout, so the loops also watch this flag, and the wait for them is bounded.
        self._stopping = True
        if self.relay is not None:
            self.relay.stop()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, still_running = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_SECONDS)
            for task in still_running:
                log.warning("%s: %s did not stop in time", self.name, task.get_name())
        self._tasks = []
        # A cancelled task may have left a batch being saved on a thread: the application
        # must not be closed under it.
        await self._offload.drain()
        if self._nc is not None:
            # The tasks are stopped and every publish was acknowledged: flush the last acks
            # and close (a drain would wait on the pull subscription's open fetch).
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=2)
            await self._nc.close()
            self._nc = None

    async def _consume(self, js: JetStreamContext, subscription: Any) -> None:
        while not self._stopping:
            try:
                messages: list[Msg] = await subscription.fetch(FETCH_BATCH, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # A NATS restart or a lost connection: the client reconnects; fetch again.
                log.warning("%s: fetch failed (%s); retrying", self.name, e)
                await asyncio.sleep(0.5)
                continue
            try:
                await self.handle_batch(js, messages)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Nothing acknowledged: JetStream delivers the batch again after ack_wait.
                log.exception("%s: a batch failed; it will be delivered again", self.name)
                await asyncio.sleep(0.5)

    async def handle_batch(self, js: JetStreamContext, messages: Sequence[Msg]) -> None:
        envelopes: list[Envelope] = []
        by_envelope: dict[int, Msg] = {}
        for msg in messages:
            try:
                envelope = self.codec.decode(msg.data)
            except ProtocolError as e:
                await self._dead_letter(js, msg, f"undecodable: {e}")
                continue
            envelopes.append(envelope)
            by_envelope[id(envelope)] = msg
        if not envelopes:
            return
        results = await self._offload(self.receive, envelopes)
        for result in results:
            msg = by_envelope[id(result.envelope)]
            match result.outcome:
                case Outcome.APPLIED | Outcome.DUPLICATE:
                    await msg.ack()
                case Outcome.REJECTED:
                    await self._dead_letter(js, msg, result.reason)
                case Outcome.GAP:
                    await msg.nak(delay=GAP_RETRY_SECONDS)
        self.wake()

    async def _dead_letter(self, js: JetStreamContext, msg: Msg, reason: str) -> None:
        """Keep the message, with why it could not be used, where an operator can read it."""
        log.warning("%s: dead letter from %s: %s", self.name, msg.subject, reason)
        headers = {
            DEAD_REASON_HEADER: header_safe(reason),
            DEAD_SUBJECT_HEADER: header_safe(msg.subject),
            DEAD_SEQUENCE_HEADER: str(msg.metadata.sequence.stream),
        }
        await js.publish(self.bus.dead_letters(self.durable), msg.data, headers=headers)
        await msg.ack()
