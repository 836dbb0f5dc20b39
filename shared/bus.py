"""Subjects, JetStream streams and consumers, and the NATS connection: all named here, once.

Subjects are laid out so that NATS permissions can confine each bank to its own:
a bank publishes only to ``tb.clearing.in.<bank>`` and reads only ``tb.bank.<bank>.in``.
"""

from __future__ import annotations

import logging
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
from nats.js.errors import NotFoundError

from shared.protocol import CLEARING, Envelope

log = logging.getLogger(__name__)

TO_CLEARING_STREAM: Final = "TB_TO_CLEARING"
TO_BANKS_STREAM: Final = "TB_TO_BANKS"
DEAD_LETTER_STREAM: Final = "TB_DEAD_LETTERS"
CLEARING_CONSUMER: Final = "clearing"

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


def to_clearing(bank_id: str) -> str:
    return f"tb.clearing.in.{bank_id}"


def to_bank(bank_id: str) -> str:
    return f"tb.bank.{bank_id}.in"


def dead_letters(consumer: str) -> str:
    return f"tb.dead.{consumer}"


def subject_for(envelope: Envelope) -> str:
    if envelope.destination == CLEARING:
        return to_clearing(envelope.source)
    return to_bank(envelope.destination)


def bank_consumer(bank_id: str) -> str:
    return f"bank-{bank_id}"


STREAMS: Final = (
    StreamConfig(
        name=TO_CLEARING_STREAM,
        description="What banks send the clearing house",
        subjects=[to_clearing("*")],
    ),
    StreamConfig(
        name=TO_BANKS_STREAM,
        description="What the clearing house sends each bank",
        subjects=[to_bank("*")],
    ),
    StreamConfig(
        name=DEAD_LETTER_STREAM,
        description="Messages a consumer could not use, with the reason, for an operator",
        subjects=[dead_letters("*")],
    ),
)


def _with_defaults(config: StreamConfig) -> StreamConfig:
    return StreamConfig(
        name=config.name,
        description=config.description,
        subjects=config.subjects,
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        max_age=RETENTION_SECONDS,
    )


async def connect(url: str, name: str) -> NATS:
    """Connect, reconnecting for ever: a restarted NATS server is waited for, not fatal."""

    async def on_disconnect() -> None:
        log.warning("%s: disconnected from NATS at %s", name, url)

    async def on_reconnect() -> None:
        log.info("%s: reconnected to NATS at %s", name, url)

    async def on_error(e: Exception) -> None:
        log.warning("%s: NATS error: %s", name, e)

    return await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )


async def ensure_streams(js: JetStreamContext) -> None:
    """Create the federation's streams, or bring their settings up to date."""
    for config in STREAMS:
        wanted = _with_defaults(config)
        try:
            await js.stream_info(config.name or "")
        except NotFoundError:
            await js.add_stream(config=wanted)
        else:
            await js.update_stream(config=wanted)


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
