"""Connects one service to NATS: relays its outbox, and feeds what it receives into it,
in batches, acknowledging each message only once its effect (or rejection) is saved."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.common.application import SavedEvents, ServiceApplication
from services.common.authenticity import Authenticator
from services.common.inbox import Outcome, Received
from services.common.offload import Offload
from services.common.relay import OutboxRelay
from shared.bus import (
    DEAD_REASON_HEADER,
    DEAD_SEQUENCE_HEADER,
    DEAD_SUBJECT_HEADER,
    SIGNATURE_HEADER,
    Bus,
    bank_consumer,
    connect,
    consumer_config,
)
from shared.protocol import Codec, Envelope, ProtocolError
from shared.signing import SigningKey

log = logging.getLogger(__name__)

FETCH_BATCH = 256
# How long a fetch waits for a first message (then it asks again); and, once one has come and
# said how many more are waiting, for those (already there: this is only a bound).
FETCH_WAIT_SECONDS = 1.0
MORE_WAIT_SECONDS = 0.05
# How often the clearing house checks that every stream and consumer of the bus is there.
ADMINISTER_SECONDS = 1.0
# A message that arrived before an earlier one from the same sender waits this long.
GAP_RETRY_SECONDS = 0.5
STOP_TIMEOUT_SECONDS = 5.0


class BusObserver(Protocol):
    """Told what the worker does with what it receives (the service's metrics)."""

    def inbox_gap(self) -> None: ...

    def dead_letter(self, kind: str) -> None: ...


class _Unobserved:
    def inbox_gap(self) -> None:
        pass

    def dead_letter(self, kind: str) -> None:
        pass


def transfer_fields(envelope: Envelope | None) -> dict[str, str]:
    """The log fields of a message about a transfer (its id); none for any other."""
    transfer_id = getattr(envelope.message, "transfer_id", None) if envelope else None
    return {"transfer_id": transfer_id} if isinstance(transfer_id, str) else {}


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
        signer: SigningKey,
        authenticator: Authenticator,
        seed_file: Path | None = None,
        administered: Callable[[], Iterable[str]] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self.nats_url = nats_url
        self.bus = bus
        self.name = name
        self.stream = stream
        self.durable = durable
        self.filter_subject = filter_subject
        self.receive = receive
        self.signer = signer
        self.authenticator = authenticator
        # The participant's NATS user (its nkey seed); without one, the server's anonymous one.
        self.seed_file = seed_file
        self.tls = tls
        # The clearing house sets up the bus: every stream, its own consumer and one per bank
        # (``administered`` names the banks). A bank's worker only uses its own consumer.
        self.administered = administered
        self.codec = Codec()
        self.relay: OutboxRelay | None = None
        # Every store call of the relay and the consumer: stop() waits for the last to end.
        self._offload = Offload(name)
        self._nc: NATS | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.observer: BusObserver = _Unobserved()
        # Whether the consumer's last fetch worked (a fetch that found nothing did).
        self._fetching = False

    async def start(self) -> None:
        self._offload = Offload(self.name)
        self._nc = await connect(
            self.nats_url,
            self.name,
            seed_file=self.seed_file,
            inbox_prefix=self.bus.inbox_prefix(self.authenticator.me),
            tls=self.tls,
        )
        js = self._nc.jetstream()
        self.relay = OutboxRelay(
            self.app,
            js,
            self.bus,
            name=f"relay:{self.name}",
            signer=self.signer,
            offload=self._offload,
        )
        tasks = [
            asyncio.create_task(self.relay.run(), name=f"{self.name}-relay"),
        ]
        if self.administered is not None:
            await self.bus.ensure_streams(js)
            await self._ensure_consumers(js)
            tasks.append(asyncio.create_task(self._administer(js), name=f"{self.name}-admin"))
        subscription = await js.pull_subscribe_bind(self.durable, stream=self.stream)
        self._fetching = True
        self.app.save_listeners.append(self.wake)
        tasks.append(
            asyncio.create_task(self._consume(js, subscription), name=f"{self.name}-consumer")
        )
        self._tasks = tasks

    def _consumers(self) -> list[tuple[str, str, str]]:
        """Every consumer the clearing house keeps: (stream, durable name, filter subject)."""
        assert self.administered is not None
        banks = [
            (self.bus.to_banks_stream, bank_consumer(bank_id), self.bus.to_bank(bank_id))
            for bank_id in self.administered()
        ]
        return [(self.stream, self.durable, self.filter_subject), *banks]

    async def _ensure_consumers(self, js: JetStreamContext) -> None:
        """Create every stream and consumer that is missing (idempotent), saying so."""
        for stream in self.bus.streams():
            try:
                await js.stream_info(stream.name or "")
            except NotFoundError:
                log.warning("%s: stream %s is missing; creating it", self.name, stream.name)
                await self.bus.ensure_streams(js)
                break
        for stream_name, durable, subject in await self._offload(self._consumers):
            try:
                await js.consumer_info(stream_name, durable)
            except NotFoundError:
                log.info("%s: creating consumer %s on %s", self.name, durable, stream_name)
                await js.add_consumer(stream_name, config=consumer_config(durable, subject))

    async def _administer(self, js: JetStreamContext) -> None:
        """Keep the bus set up: a bank just admitted gets its consumer, and a stream or
        consumer that went missing (deleted by mistake or by someone who should not have
        been able to) is made again."""
        while not self._stopping:
            await asyncio.sleep(ADMINISTER_SECONDS)
            try:
                await self._ensure_consumers(js)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("%s: setting up the bus failed (%s); trying again", self.name, e)

    def not_ready(self) -> str | None:
        """Why the worker cannot receive now, or None when it can: connected to NATS, and
        its consumer's last fetch worked."""
        if self._nc is None or not self._nc.is_connected:
            return "not connected to NATS"
        if not self._fetching:
            return f"consumer {self.durable} is not fetching"
        return None

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
        failing = False
        while not self._stopping:
            try:
                messages = await self._next_messages(subscription)
            except (TimeoutError, NatsTimeoutError):
                self._fetching = True
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # A NATS restart, a lost connection, or a consumer being made again: the
                # client reconnects and the clearing house re-creates what is missing. Said
                # once, not at every retry.
                if not failing:
                    log.warning("%s: fetching failed (%s); retrying until it works", self.name, e)
                failing = True
                self._fetching = False
                await asyncio.sleep(0.5)
                continue
            self._fetching = True
            if failing:
                log.info("%s: fetching works again", self.name)
                failing = False
            try:
                await self.handle_batch(js, messages)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Nothing acknowledged: JetStream delivers the batch again after ack_wait.
                log.exception("%s: a batch failed; it will be delivered again", self.name)
                await asyncio.sleep(0.5)

    @staticmethod
    async def _next_messages(subscription: Any) -> list[Msg]:
        """Wait for the next message, then take the others already waiting, up to a batch.

        Asked for a whole batch at once, nats-py's fetch, once a first message has come, waits
        for the batch to fill until its timeout (up to a second per hop when quiet); asked for
        "whatever is there" with a short timeout, the server holds the request that long even
        when nothing is. So the first message says how many more the consumer holds (its
        ``num_pending``) and exactly those are fetched: none when the bus is quiet."""
        messages: list[Msg] = await subscription.fetch(1, timeout=FETCH_WAIT_SECONDS)
        more = min(messages[-1].metadata.num_pending or 0, FETCH_BATCH - 1)
        if more:
            with contextlib.suppress(TimeoutError, NatsTimeoutError):
                messages += await subscription.fetch(more, timeout=MORE_WAIT_SECONDS)
        return messages

    async def handle_batch(self, js: JetStreamContext, messages: Sequence[Msg]) -> None:
        decoded: list[tuple[Msg, Envelope]] = []
        for msg in messages:
            try:
                decoded.append((msg, self.codec.decode(msg.data)))
            except ProtocolError as e:
                await self._dead_letter(js, msg, "undecodable", f"undecodable: {e}")
        if not decoded:
            return
        # One hand-off to a thread for both: checking each message, then applying the
        # authentic ones.
        refusals, authentic, results = await self._offload(self._check_and_receive, decoded)
        for (msg, _), refusal in zip(decoded, refusals, strict=True):
            if refusal is not None:
                await self._dead_letter(js, msg, "not_authentic", f"not authentic: {refusal}")
        by_envelope = {id(envelope): msg for msg, envelope in authentic}
        for result in results:
            msg = by_envelope[id(result.envelope)]
            match result.outcome:
                case Outcome.APPLIED | Outcome.DUPLICATE:
                    await msg.ack()
                case Outcome.REJECTED:
                    await self._dead_letter(js, msg, "rejected", result.reason, result.envelope)
                case Outcome.GAP:
                    await msg.nak(delay=GAP_RETRY_SECONDS)
                    self.observer.inbox_gap()
        self.wake()

    def _check_and_receive(
        self, decoded: Sequence[tuple[Msg, Envelope]]
    ) -> tuple[list[str | None], list[tuple[Msg, Envelope]], list[Received]]:
        """Which messages are what they claim, and what the inbox made of those. The check
        comes before the inbox sees anything: a message that is not what it claims never
        takes a sender's sequence number, so the genuine one with that number is still
        applied."""
        refusals = self._refusals(decoded)
        authentic = [
            pair for pair, refusal in zip(decoded, refusals, strict=True) if refusal is None
        ]
        results = self.receive([envelope for _, envelope in authentic]) if authentic else []
        return refusals, authentic, results

    def _refusals(self, decoded: Sequence[tuple[Msg, Envelope]]) -> list[str | None]:
        return [
            self.authenticator.refusal(
                msg.subject, envelope, msg.data, (msg.headers or {}).get(SIGNATURE_HEADER)
            )
            for msg, envelope in decoded
        ]

    async def _dead_letter(
        self,
        js: JetStreamContext,
        msg: Msg,
        kind: str,
        reason: str,
        envelope: Envelope | None = None,
    ) -> None:
        """Keep the message, with why it could not be used, where an operator can read it;
        counted once it is acknowledged (so a batch delivered again does not count it twice).
        Only an authentic message's transfer id is logged as a field."""
        log.warning(
            "%s: dead letter from %s: %s",
            self.name,
            msg.subject,
            reason,
            extra=transfer_fields(envelope),
        )
        headers = {
            DEAD_REASON_HEADER: header_safe(reason),
            DEAD_SUBJECT_HEADER: header_safe(msg.subject),
            DEAD_SEQUENCE_HEADER: str(msg.metadata.sequence.stream),
        }
        await js.publish(self.bus.dead_letters(self.durable), msg.data, headers=headers)
        await msg.ack()
        self.observer.dead_letter(kind)
