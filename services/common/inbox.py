"""Applying received envelopes exactly once: per-sender sequence checks, one unit of work per
batch, saved with a tracking record in the same transaction."""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate, DomainEventProtocol
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


class LiveAggregates:
    """Aggregates kept in memory from one batch to the next, for an application whose batches
    are applied one at a time (under its lock): each is read from the store once, then changed
    in place, with no re-read and no copy per batch. A batch that fails forgets everything it
    touched (its changes were never saved); a save by any other path (a command, a periodic
    job) makes the copies of what it saved stale, so they are forgotten too."""

    def __init__(self, app: ServiceApplication, size: int = 10_000) -> None:
        self._app = app
        self._size = size
        self.aggregates: OrderedDict[UUID, Aggregate] = OrderedDict()
        self._saving = False
        app.save_listeners.append(self._saved)

    def get(self, aggregate_id: UUID, cls: type[A]) -> A | None:
        aggregate = self.aggregates.get(aggregate_id)
        if aggregate is None:
            aggregate = self.load(aggregate_id)
            if aggregate is None:
                return None
            self.aggregates[aggregate_id] = aggregate
        return aggregate if isinstance(aggregate, cls) else None

    def load(self, aggregate_id: UUID) -> Aggregate | None:
        """The aggregate's recorded state, read from the store (a copy of its own)."""
        return ServiceApplication.find(self._app, aggregate_id, Aggregate)

    def put(self, aggregate: Aggregate) -> None:
        self.aggregates[aggregate.id] = aggregate
        self.aggregates.move_to_end(aggregate.id)

    def forget(self, aggregate_ids: Iterable[UUID]) -> None:
        for aggregate_id in aggregate_ids:
            self.aggregates.pop(aggregate_id, None)

    def clear(self) -> None:
        self.aggregates.clear()

    def trim(self) -> None:
        """Forget the least recently used beyond the size (never while a unit of work holds
        changes not yet saved)."""
        while len(self.aggregates) > self._size:
            self.aggregates.popitem(last=False)

    @contextmanager
    def saving(self, aggregates: Sequence[Aggregate]) -> Iterator[None]:
        """Around the save of what was changed here: kept if it succeeds, forgotten if not;
        that save makes nothing stale."""
        self._saving = True
        try:
            yield
        except BaseException:
            self.forget(a.id for a in aggregates)
            raise
        finally:
            self._saving = False
        for aggregate in aggregates:
            self.put(aggregate)
        self.trim()

    def _saved(self, events: Sequence[DomainEventProtocol[UUID]]) -> None:
        """Anything saved by another path makes the copies of those aggregates stale: they
        are read again when next needed."""
        if not self._saving:
            self.forget({e.originator_id for e in events})


class UnitOfWork:
    """The aggregates one batch touches, loaded once, so later messages see earlier effects;
    from ``live`` when given (kept between batches), else read from the store."""

    def __init__(
        self, app: ServiceApplication, source: str, live: LiveAggregates | None = None
    ) -> None:
        self.app = app
        self.source = source
        self.live = live
        self._aggregates: dict[UUID, Aggregate] = {}

    def get(self, aggregate_id: UUID, cls: type[A]) -> A | None:
        if aggregate_id not in self._aggregates:
            if self.live is not None:
                found = self.live.get(aggregate_id, Aggregate)
            else:
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
    app: ServiceApplication,
    source: str,
    envelopes: Sequence[Envelope],
    handle: Handler,
    live: LiveAggregates | None = None,
) -> list[Received]:
    """Apply one sender's envelopes in sequence order, all in one transaction.

    A message whose handler raises MessageRejected is skipped (its sequence number still
    counts, since it will never become valid); the batch is then applied again without it,
    so nothing it half-did is saved (nor kept in ``live``).
    """
    rejected: dict[int, str] = {}
    ordered = sorted(envelopes, key=lambda e: e.seq)
    while True:
        last = app.recorder.max_tracking_id(inbox_name(source)) or 0
        uow = UnitOfWork(app, source, live)
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
            _forget(uow)
            continue
        except BaseException:
            _forget(uow)
            raise
        if applied_to > last:
            _save(uow, Tracking(inbox_name(source), applied_to))
        return results


def _save(uow: UnitOfWork, tracking: Tracking) -> None:
    if uow.live is None:
        uow.app.save_tracked(tracking, uow.aggregates)
    else:
        with uow.live.saving(uow.aggregates):
            uow.app.save_tracked(tracking, uow.aggregates)


def _forget(uow: UnitOfWork) -> None:
    """What a failed batch changed in memory was never saved: forget it."""
    if uow.live is not None:
        uow.live.forget(a.id for a in uow.aggregates)


class _Retry(Exception):
    pass
