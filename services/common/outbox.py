"""The transactional outbox: a message is queued in the same save as the decision that sends it,
and a relay publishes queued messages to JetStream in log order, resuming where it stopped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import Tracking
from eventsourcing.utils import get_topic
from nats.js import JetStreamContext

from services.common.offload import Offload
from shared.bus import Bus
from shared.protocol import AnyMessage, Codec, Envelope

log = logging.getLogger(__name__)

_NAMESPACE = uuid5(NAMESPACE_URL, "urn:timebank-federation:outbox")


def outbox_id(source: str, destination: str) -> UUID:
    # JSON keeps the pair apart whatever characters the names hold: no two pairs share an id.
    return uuid5(_NAMESPACE, json.dumps([source, destination]))


class Outbox(Aggregate):
    """Every message one source has decided to send one destination, numbered 1, 2, 3, ..."""

    @staticmethod
    def create_id(source: str, destination: str, **_: Any) -> UUID:
        return outbox_id(source, destination)

    class Opened(Aggregate.Created):
        source: str
        destination: str

    @event(Opened)
    def __init__(self, source: str, destination: str) -> None:
        self.source = source
        self.destination = destination
        self.queued = 0

    class Queued(Aggregate.Event):
        source: str
        destination: str
        seq: int
        message: dict[str, Any]

    def queue(self, message: AnyMessage) -> int:
        """Queue a message; returns its sequence number in this outbox."""
        self._queued(
            source=self.source,
            destination=self.destination,
            seq=self.queued + 1,
            message=msgspec.to_builtins(message),
        )
        return self.queued

    @event(Queued)
    def _queued(self, source: str, destination: str, seq: int, message: dict[str, Any]) -> None:
        self.queued = seq


QUEUED_TOPIC = get_topic(Outbox.Queued)


def envelope_of(queued: Outbox.Queued) -> Envelope:
    return Envelope(
        source=queued.source,
        destination=queued.destination,
        seq=queued.seq,
        message=msgspec.convert(queued.message, AnyMessage),
    )


class OutboxRelay:
    """Publishes an application's queued messages to JetStream, in the order they were saved.

    Publishes go out asynchronously in batches; the relay records how far it got (a tracking
    record in the application's own store) only after JetStream acknowledged the whole batch.
    After a crash it starts again from there: a message published twice carries the same
    Nats-Msg-Id, so JetStream drops the copy, and receivers de-duplicate by sequence too.
    """

    def __init__(
        self,
        app: Application[Any],
        js: JetStreamContext,
        bus: Bus,
        *,
        name: str = "outbox-relay",
        batch_size: int = 256,
        idle_seconds: float = 0.5,
        ack_timeout: float = 10.0,
        offload: Offload | None = None,
    ) -> None:
        self._app = app
        self._offload = offload or Offload(name)
        self._js = js
        self._bus = bus
        self._name = name
        self._batch_size = batch_size
        self._idle_seconds = idle_seconds
        self._ack_timeout = ack_timeout
        self._codec = Codec()
        self._tracking = app.factory.tracking_recorder()
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        self.position = self._tracking.max_tracking_id(name) or 0

    def stop(self) -> None:
        """Make run() return at its next turn (a cancellation alone can be lost in wait_for)."""
        self._stopped = True
        self.wake()

    def wake(self) -> None:
        """Called from any thread after a save, so new messages go out without waiting."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wakeup.set)

    async def run(self) -> None:
        """Relay until cancelled; a failed batch is retried from the last recorded position."""
        self._loop = asyncio.get_running_loop()
        failures = 0
        while not self._stopped:
            try:
                published = await self.publish_batch()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failures += 1
                pause = min(0.1 * 2**failures, 5.0)
                log.warning("%s: publishing failed (%s); retrying in %.1fs", self._name, e, pause)
                await asyncio.sleep(pause)
                continue
            failures = 0
            if not published:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._idle_seconds)

    async def publish_batch(self) -> int:
        """Publish the next batch and record the position; returns how many were published."""
        notifications = await self._offload(
            self._app.recorder.select_notifications,
            start=self.position + 1,
            limit=self._batch_size,
            topics=[QUEUED_TOPIC],
        )
        if not notifications:
            return 0
        acks = []
        try:
            for notification in notifications:
                queued = self._app.mapper.to_domain_event(notification)
                envelope = envelope_of(queued)  # type: ignore[arg-type]
                acks.append(
                    await self._js.publish_async(
                        self._bus.subject_for(envelope),
                        self._codec.encode(envelope),
                        headers={"Nats-Msg-Id": envelope.msg_id},
                    )
                )
            await asyncio.wait_for(asyncio.gather(*acks), self._ack_timeout)
        finally:
            # Futures whose ack never came would hold publish slots for ever.
            for ack in acks:
                ack.cancel()
        last = notifications[-1].id
        await self._offload(self._tracking.insert_tracking, Tracking(self._name, last))
        self.position = last
        return len(notifications)
