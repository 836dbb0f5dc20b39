"""The base of every service's eventsourcing application: a process recorder (events and
tracking records in one transaction), typed save listeners, lookups that answer None, and the
one follower of the application's own notification log."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, ProcessingEvent
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import Notification, Tracking
from eventsourcing.projection import EventSourcedProjection
from eventsourcing.system import NotificationLogReader
from eventsourcing.utils import Environment

A = TypeVar("A", bound=Aggregate)
M = TypeVar("M")

# Sections of the notification log that a follower reads at once: large, because the logs an
# audit or a restart reads on are long (eventsourcing's default of 10 would mean a query per
# ten events).
LOG_SECTION_SIZE = 10_000
DEFAULT_FOLLOW_BATCH = 1_000

SavedEvents = Sequence[DomainEventProtocol[UUID]]
SaveListener = Callable[[SavedEvents], None]


class _Decided:
    """What one tracked unit of work decided: the aggregates whose new events it saves."""

    def __init__(self, aggregates: Sequence[Aggregate]) -> None:
        self.aggregates = aggregates
        self.events: SavedEvents = ()


class ServiceApplication(EventSourcedProjection[UUID]):
    """An application of this project (a bank's ledger, the clearing house).

    Every save, plain or tracked, is told to the ``save_listeners`` with the events it stored,
    from the saving thread (the bus worker wakes its relay; the clearing keeps its index).
    """

    log_section_size = LOG_SECTION_SIZE

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.save_listeners: list[SaveListener] = []
        self._read_models: dict[type[Any], Any] = {}
        self._read_models_lock = threading.Lock()
        super().__init__(env=env)

    def read_model(self, cls: type[M]) -> M:
        """The application's one ``cls`` (a report's fold, a board's index), made at first use:
        it belongs to the application's log, so it lives as long as the application, whatever
        apps serve it and however often they restart."""
        with self._read_models_lock:
            found = self._read_models.get(cls)
            if found is None:
                found = self._read_models[cls] = cls()
            model: M = found
            return model

    def construct_env(self, name: str, env: Mapping[str, str] | None = None) -> Environment:
        # Configured only by the settings given, never by the process environment: a test can
        # open many applications side by side, and an audit reads the store it was told to.
        configured = dict(type(self).env)
        if type(self).is_snapshotting_enabled or type(self).snapshotting_intervals:
            configured["IS_SNAPSHOTTING_ENABLED"] = "y"
        configured.update(env or {})
        return Environment(name, configured)

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        recordings = super().save(*objs, **kwargs)
        self._tell_listeners([r.domain_event for r in recordings])
        return recordings

    def record_events(self, events: SavedEvents) -> None:
        """Store events already collected from their aggregates, in this order, in one
        transaction, and tell the listeners (a writer that batches many commands' events and
        takes its own snapshots)."""
        self.events.put(events)
        self._tell_listeners(events)

    def save_tracked(self, tracking: Tracking, aggregates: Sequence[Aggregate]) -> None:
        """Save aggregates' new events and a tracking record, in one transaction."""
        decided = _Decided(aggregates)
        self.process_event(decided, tracking)  # type: ignore[arg-type]
        self._tell_listeners(decided.events)

    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        # Called by process_event with what save_tracked decided: collect it, to be recorded
        # with the tracking record.
        processing_event.collect_events(*domain_event.aggregates)
        domain_event.events = processing_event.events

    def _tell_listeners(self, events: SavedEvents) -> None:
        for listener in list(self.save_listeners):
            listener(events)

    def find(self, aggregate_id: UUID, cls: type[A]) -> A | None:
        """The aggregate with this id if it exists and is a ``cls``; otherwise None."""
        try:
            aggregate: Aggregate = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return aggregate if isinstance(aggregate, cls) else None

    def recorded_version(self, aggregate_id: UUID) -> int:
        """The version of the aggregate's last recorded event; 0 if it has none."""
        last = self.recorder.select_events(aggregate_id, desc=True, limit=1)
        return last[0].originator_version if last else 0

    def exists(self, aggregate_id: UUID) -> bool:
        return self.find(aggregate_id, Aggregate) is not None

    def follow(
        self,
        start: int = 1,
        topics: Sequence[str] = (),
        batch_size: int = DEFAULT_FOLLOW_BATCH,
    ) -> Iterator[Sequence[Notification]]:
        """The log from position ``start`` on (only ``topics``, when given), in notification
        order, one batch at a time, until nothing is left.

        The store commits transactions in notification order, so a follower that reads on
        until nothing is left ends on a whole-transaction boundary.
        """
        reader = NotificationLogReader(self.notification_log, section_size=batch_size)
        return reader.select(start=start, topics=topics)

    def follow_events(
        self, start: int = 1, topics: Sequence[str] = (), batch_size: int = DEFAULT_FOLLOW_BATCH
    ) -> Iterator[tuple[int, DomainEventProtocol[UUID]]]:
        """Like ``follow``, each notification decoded: (position, domain event)."""
        for batch in self.follow(start, topics, batch_size):
            for notification in batch:
                yield notification.id, self.mapper.to_domain_event(notification)
