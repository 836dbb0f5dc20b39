"""The outbox relay: publishes an application's queued messages to JetStream in log order,
resuming where it stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from eventsourcing.persistence import Notification, Tracking
from nats.js import JetStreamContext

from services.common.application import ServiceApplication
from services.common.offload import Offload
from services.common.outbox import QUEUED_TOPIC, Outbox, envelope_of
from shared.bus import Bus, publish_headers
from shared.protocol import Codec
from shared.signing import SigningKey, envelope_payload

log = logging.getLogger(__name__)


class OutboxRelay:
    """Publishes an application's queued messages to JetStream, in the order they were saved.

    Publishes go out asynchronously in batches; the relay records how far it got (a tracking
    record in the application's own store) only after JetStream acknowledged the whole batch.
    After a crash it starts again from there: a message published twice carries the same
    Nats-Msg-Id, so JetStream drops the copy, and receivers de-duplicate by sequence too. Every
    envelope goes out signed with the application's key.
    """

    def __init__(
        self,
        app: ServiceApplication,
        js: JetStreamContext,
        bus: Bus,
        *,
        name: str = "outbox-relay",
        batch_size: int = 256,
        idle_seconds: float = 0.5,
        ack_timeout: float = 10.0,
        signer: SigningKey,
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
        self._signer = signer
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
            # Cleared before reading, so a save that comes while this batch is read or sent
            # wakes the next turn at once instead of being lost until the idle wait ends.
            self._wakeup.clear()
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
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._idle_seconds)

    def _next_batch(self) -> Sequence[Notification]:
        batches = self._app.follow(self.position + 1, [QUEUED_TOPIC], self._batch_size)
        return next(batches, [])

    async def publish_batch(self) -> int:
        """Publish the next batch and record the position; returns how many were published."""
        notifications = await self._offload(self._next_batch)
        if not notifications:
            return 0
        acks = []
        try:
            for notification in notifications:
                queued = self._app.mapper.to_domain_event(notification)
                if not isinstance(queued, Outbox.Queued):
                    raise TypeError(f"notification {notification.id} is not a queued message")
                envelope = envelope_of(queued)
                data = self._codec.encode(envelope)
                signature = self._signer.sign(envelope_payload(data))
                acks.append(
                    await self._js.publish_async(
                        self._bus.subject_for(envelope),
                        data,
                        headers=publish_headers(envelope, data, signature),
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
