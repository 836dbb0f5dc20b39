"""Applying received envelopes exactly once: per-sender sequence checks, one unit of work per
batch, saved with a tracking record in the same transaction."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Tracking

from services.common.application import ServiceApplication
from services.common.outbox import Outbox, outbox_id
from shared.protocol import AnyMessage, Envelope

A = TypeVar("A", bound=Aggregate)


class Outcome(enum.Enum):
    APPLIED = "applied"  # its effect is saved
    DUPLICATE = "duplicate"  # seen before: no second effect
    GAP = "gap"  # an earlier message from the sender is missing: not applied yet
    REJECTED = "rejected"  # cannot be applied; belongs in the dead-letter stream


@dataclass(frozen=True)
class Received:
    envelope: Envelope
    outcome: Outcome
    reason: str = ""


class MessageRejected(Exception):
    """A message that can never be applied; the reason goes with it to the dead letters."""


class UnitOfWork:
    """The aggregates one batch touches, loaded once, so later messages see earlier effects."""

    def __init__(self, app: ServiceApplication, source: str) -> None:
        self.app = app
        self.source = source
        self._aggregates: dict[UUID, Aggregate] = {}

    def get(self, aggregate_id: UUID, cls: type[A]) -> A | None:
        if aggregate_id not in self._aggregates:
            found = self.app.find(aggregate_id, Aggregate)
            if found is None:
                return None
            self._aggregates[aggregate_id] = found
        aggregate = self._aggregates[aggregate_id]
        if not isinstance(aggregate, cls):
            raise TypeError(f"{aggregate_id} is a {type(aggregate).__name__}, not {cls.__name__}")
        return aggregate

    def add(self, aggregate: A) -> A:
        self._aggregates[aggregate.id] = aggregate
        return aggregate

    def send(self, destination: str, message: AnyMessage, *, sender: str) -> None:
        outbox = self.get(outbox_id(sender, destination), Outbox)
        if outbox is None:
            outbox = self.add(Outbox(source=sender, destination=destination))
        outbox.queue(message)

    @property
    def aggregates(self) -> list[Aggregate]:
        return list(self._aggregates.values())


def inbox_name(source: str) -> str:
    return f"inbox:{source}"


Handler = Callable[[str, AnyMessage, UnitOfWork], None]


def receive_from(
    app: ServiceApplication, source: str, envelopes: Sequence[Envelope], handle: Handler
) -> list[Received]:
    """Apply one sender's envelopes in sequence order, all in one transaction.

    A message whose handler raises MessageRejected is skipped (its sequence number still
    counts, since it will never become valid); the batch is then applied again without it,
    so nothing it half-did is saved.
    """
    rejected: dict[int, str] = {}
    ordered = sorted(envelopes, key=lambda e: e.seq)
    while True:
        last = app.recorder.max_tracking_id(inbox_name(source)) or 0
        uow = UnitOfWork(app, source)
        results: list[Received] = []
        applied_to = last
        try:
            for envelope in ordered:
                if envelope.seq <= applied_to:
                    results.append(Received(envelope, Outcome.DUPLICATE))
                elif envelope.seq > applied_to + 1:
                    results.append(Received(envelope, Outcome.GAP))
                elif envelope.seq in rejected:
                    results.append(Received(envelope, Outcome.REJECTED, rejected[envelope.seq]))
                    applied_to = envelope.seq
                else:
                    try:
                        handle(source, envelope.message, uow)
                    except MessageRejected as e:
                        rejected[envelope.seq] = str(e)
                        raise _Retry from None
                    results.append(Received(envelope, Outcome.APPLIED))
                    applied_to = envelope.seq
        except _Retry:
            continue
        if applied_to > last:
            app.save_tracked(Tracking(inbox_name(source), applied_to), uow.aggregates)
        return results


class _Retry(Exception):
    pass
