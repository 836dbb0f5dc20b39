"""Subjects, JetStream streams and consumers, and the NATS connection: all named here, once.

Subjects are laid out so that NATS permissions can confine each bank to its own:
a bank publishes only to ``<ns>.clearing.in.<bank>`` and reads only ``<ns>.bank.<bank>.in``,
where ``<ns>`` is the federation's namespace (``tb`` by default).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError, ServerError

from shared.protocol import CLEARING, Envelope

log = logging.getLogger(__name__)

# JetStream drops a message whose Nats-Msg-Id it has seen within this window; receivers
# de-duplicate by sequence as well, so the window only saves work.
DUPLICATE_WINDOW_SECONDS: Final = 10 * 60
RETENTION_SECONDS: Final = 30 * 24 * 3600
# A message not acknowledged in this time is delivered again. After a NATS restart, what was
# in flight waits this long (and what follows it waits behind it as a gap); receivers
# de-duplicate by sequence, so an early redelivery costs only work.
ACK_WAIT_SECONDS: Final = 10.0

# Headers on a dead letter, saying what it was and why it was set aside.
DEAD_REASON_HEADER: Final = "Tb-Dead-Reason"
DEAD_SUBJECT_HEADER: Final = "Tb-Dead-Subject"
DEAD_SEQUENCE_HEADER: Final = "Tb-Dead-Stream-Sequence"

# The source's Ed25519 signature over the envelope's bytes (shared.signing.envelope_payload).
SIGNATURE_HEADER: Final = "Tb-Signature"

CLEARING_CONSUMER: Final = "clearing"
DEFAULT_NAMESPACE: Final = "tb"
NAMESPACE_PATTERN: Final = r"[a-z][a-z0-9]{0,15}\Z"
# JetStream keeps a stream on 1 to 5 servers; 3 on a three-node cluster survives one loss.
MAX_STREAM_REPLICAS: Final = 5


class InvalidNamespace(ValueError):
    pass


class InvalidStreamReplicas(ValueError):
    pass


class StreamSetupError(RuntimeError):
    """NATS refused a stream's settings (e.g. 3 replicas on a server that is not a cluster)."""


def server_urls(url: str) -> list[str]:
    """The servers of a NATS URL: one, or several separated by commas (a cluster's nodes).
    nats-py takes a list, not a comma-separated string, so every connection goes through this."""
    return [part.strip() for part in url.split(",") if part.strip()]


@dataclass(frozen=True)
class Bus:
    """The subjects and streams of one federation on a NATS server.

    Every name starts with the namespace (``tb`` unless told otherwise), so that several
    federations (production and a rehearsal, or one per test) can share one NATS server.
    """

    namespace: str = DEFAULT_NAMESPACE
    # On how many NATS servers each stream is kept: 1 on a single server, 3 on a cluster of
    # three (so one server can be lost, or restarted, without losing or stopping anything).
    stream_replicas: int = 1

    def __post_init__(self) -> None:
        if not re.match(NAMESPACE_PATTERN, self.namespace):
            raise InvalidNamespace(
                f"NATS namespace {self.namespace!r} must be 1-16 lowercase letters and digits,"
                " starting with a letter"
            )
        if not 1 <= self.stream_replicas <= MAX_STREAM_REPLICAS:
            raise InvalidStreamReplicas(
                f"stream replicas must be between 1 and {MAX_STREAM_REPLICAS}, "
                f"not {self.stream_replicas}"
            )

    @property
    def to_clearing_stream(self) -> str:
        return f"{self.namespace.upper()}_TO_CLEARING"

    @property
    def to_banks_stream(self) -> str:
        return f"{self.namespace.upper()}_TO_BANKS"

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.namespace.upper()}_DEAD_LETTERS"

    def to_clearing(self, bank_id: str) -> str:
        return f"{self.namespace}.clearing.in.{bank_id}"

    def to_bank(self, bank_id: str) -> str:
        return f"{self.namespace}.bank.{bank_id}.in"

    def dead_letters(self, consumer: str) -> str:
        return f"{self.namespace}.dead.{consumer}"

    def subject_for(self, envelope: Envelope) -> str:
        if envelope.destination == CLEARING:
            return self.to_clearing(envelope.source)
        return self.to_bank(envelope.destination)

    def streams(self) -> tuple[StreamConfig, ...]:
        return (
            StreamConfig(
                name=self.to_clearing_stream,
                description="What banks send the clearing house",
                subjects=[self.to_clearing("*")],
            ),
            StreamConfig(
                name=self.to_banks_stream,
                description="What the clearing house sends each bank",
                subjects=[self.to_bank("*")],
            ),
            StreamConfig(
                name=self.dead_letter_stream,
                description="Messages a consumer could not use, with the reason, for an operator",
                subjects=[self.dead_letters("*")],
            ),
        )

    async def ensure_streams(self, js: JetStreamContext) -> None:
        """Create the federation's streams, or bring their settings up to date (their
        replicas too: a stream is moved to as many servers as ``stream_replicas`` says)."""
        for config in self.streams():
            try:
                await self._put_stream(js, _with_defaults(config, self.stream_replicas))
            except (BadRequestError, ServerError) as e:
                raise StreamSetupError(
                    f"NATS refused stream {config.name} with {self.stream_replicas} "
                    f"replica(s): {e.description or e}. A single NATS server keeps 1 replica, "
                    "a cluster of N servers up to N"
                ) from e

    async def _put_stream(self, js: JetStreamContext, wanted: StreamConfig) -> None:
        try:
            info = await js.stream_info(wanted.name or "")
        except NotFoundError:
            await js.add_stream(config=wanted)
            return
        had = info.config.num_replicas or 1
        if had != wanted.num_replicas:
            log.warning("stream %s: replicas %d -> %s", wanted.name, had, wanted.num_replicas)
        await js.update_stream(config=wanted)

    def inbox_prefix(self, participant: str) -> str:
        """Where a participant's replies come (JetStream answers, fetched messages): an inbox
        of its own, so that it may read no one else's."""
        return f"_INBOX_{self.namespace}_{participant}"

    def bank_permissions(self, bank_id: str) -> dict[str, dict[str, list[str]]]:
        """What a bank's NATS user may do: publish its own messages towards the clearing
        house and its dead letters, fetch and acknowledge from its own consumer, and read its
        own inbox. Nothing else: no stream or consumer made, deleted or read, no other bank's
        subject."""
        stream, consumer = self.to_banks_stream, bank_consumer(bank_id)
        return {
            "publish": {
                "allow": [
                    self.to_clearing(bank_id),
                    self.dead_letters(consumer),
                    f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
                    f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
                    f"$JS.ACK.{stream}.{consumer}.>",
                ]
            },
            "subscribe": {"allow": [f"{self.inbox_prefix(bank_id)}.>"]},
        }

    def clearing_permissions(self) -> dict[str, dict[str, list[str]]]:
        """What the clearing house's NATS user may do: the mirror image of a bank's, and the
        JetStream API, since it sets up the streams and every consumer."""
        stream = self.to_clearing_stream
        return {
            "publish": {
                "allow": [
                    self.to_bank("*"),
                    self.dead_letters(CLEARING_CONSUMER),
                    "$JS.API.>",
                    f"$JS.ACK.{stream}.{CLEARING_CONSUMER}.>",
                ]
            },
            "subscribe": {"allow": [f"{self.inbox_prefix(CLEARING)}.>"]},
        }

    async def delete_streams(self, js: JetStreamContext) -> None:
        """Remove the federation's streams and everything in them (for tests and rehearsals)."""
        for config in self.streams():
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(config.name or "")


DEFAULT_BUS: Final = Bus()


def publish_headers(envelope: Envelope, data: bytes, signature: str) -> dict[str, str]:
    """The headers an envelope is published with: its signature, and a de-duplication id that
    names the bytes too, so that a forgery claiming the same sender and sequence number can
    never make JetStream drop the genuine message as its duplicate (a genuine message published
    again has the same bytes, and so the same id)."""
    digest = hashlib.sha256(data).hexdigest()[:32]
    return {"Nats-Msg-Id": f"{envelope.msg_id}:{digest}", SIGNATURE_HEADER: signature}


def bank_consumer(bank_id: str) -> str:
    return f"bank-{bank_id}"


def _with_defaults(config: StreamConfig, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=config.name,
        description=config.description,
        subjects=config.subjects,
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        max_age=RETENTION_SECONDS,
        num_replicas=replicas,
    )


async def connect(
    url: str,
    name: str,
    *,
    seed_file: Path | None = None,
    inbox_prefix: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> NATS:
    """Connect, reconnecting for ever: a restarted NATS server is waited for, not fatal.
    ``url`` may name several servers, comma-separated (a cluster's nodes): any of them will do,
    and another is tried when one goes away. With ``seed_file``, as the NATS user of that
    nkey; with ``tls``, over TLS (the server's certificate checked, and the client's own
    presented when the context holds one)."""

    async def on_disconnect() -> None:
        log.warning("%s: disconnected from NATS at %s", name, url)

    async def on_reconnect() -> None:
        log.info("%s: reconnected to NATS at %s", name, url)

    async def on_error(e: Exception) -> None:
        log.warning("%s: NATS error: %s", name, e)

    return await nats.connect(
        server_urls(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
        nkeys_seed=str(seed_file) if seed_file is not None else None,
        inbox_prefix=inbox_prefix or "_INBOX",
        tls=tls,
    )


def consumer_config(durable: str, filter_subject: str) -> ConsumerConfig:
    """A durable pull consumer that sees every message and needs each one acknowledged."""
    return ConsumerConfig(
        durable_name=durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_SECONDS,
        max_ack_pending=4096,
        filter_subject=filter_subject,
    )
