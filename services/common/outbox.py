"""The transactional outbox: a message is queued in the same save as the decision that sends it
(the relay, services/common/relay.py, publishes it)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec
from eventsourcing.domain import Aggregate, event
from eventsourcing.utils import get_topic

from shared.protocol import AnyMessage, Envelope

_NAMESPACE = uuid5(NAMESPACE_URL, "urn:timebank-federation:outbox")


# Every message a service sends names its outbox: a service has one per peer.
@lru_cache(maxsize=4_096)
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
