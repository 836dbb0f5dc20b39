"""How ledger commands are carried out: group commit over a working set of live aggregates.

Concurrent commands queue; one thread at a time takes every command waiting, decides each in
arrival order against the writer's in-memory aggregates (so each sees what the commands
before it did, exactly as one-at-a-time execution would), and saves all of their events,
with their idempotency records, in one transaction. A refused command refuses alone and
writes nothing. Another process writing the same store makes a save fail its optimistic
concurrency check: the working set is dropped and the batch decided again on fresh state.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar
from uuid import UUID

import msgspec
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import IntegrityError

from services.common.application import ServiceApplication
from services.common.idempotency import IdempotencyConflict, IdempotencyRecord, record_id
from services.common.inbox import LiveAggregates
from services.ledger.domain_terms import LedgerError

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A", bound=Aggregate)

# A batch that loses a race with another process is decided again on fresh state, this often.
MAX_ATTEMPTS = 10
RETRY_PAUSE_SECONDS = 0.001
# The most commands saved in one transaction.
MAX_BATCH = 1_000

Command = Callable[[], tuple[Sequence[Aggregate], T]]


class StoreBusy(LedgerError):
    """Other writers kept winning the race for the same accounts; the command can be retried."""


@dataclass(frozen=True)
class IdempotencyKey:
    key: str
    fingerprint: str


@dataclass(frozen=True)
class Executed(Generic[T]):
    """A command's result, and whether it is the stored result of an earlier identical request."""

    value: T
    replayed: bool = False


@dataclass(eq=False)
class _Request(Generic[T]):
    """One command waiting for its batch, then its answer: a result or the error it raised."""

    command: Command[T]
    idempotency: IdempotencyKey | None
    result_type: type[T]
    answer: Executed[T] | None = None
    error: BaseException | None = None
    finished: bool = False

    def outcome(self) -> Executed[T]:
        if self.error is not None:
            raise self.error
        assert self.answer is not None
        return self.answer

    def answer_or_error(self) -> Executed[T] | Exception:
        if isinstance(self.error, Exception):
            return self.error
        return self.outcome()


@dataclass
class _Decision:
    """What deciding a request gave, answered only once its batch is saved."""

    request: _Request[Any]
    answer: Executed[Any] | None = None
    error: BaseException | None = None


@dataclass
class _Batch:
    """The events a batch decided so far, in order, and how many each aggregate has."""

    events: list[DomainEventProtocol[UUID]] = field(default_factory=list)
    counts: Counter[UUID] = field(default_factory=Counter)
    # Idempotency keys decided in this batch: key -> (fingerprint, response).
    keys: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    def add(self, events: Sequence[DomainEventProtocol[UUID]]) -> None:
        self.events.extend(events)
        self.counts.update(e.originator_id for e in events)


class WorkingSet(LiveAggregates):
    """The writer's live aggregates: loaded once, then changed in place by each command, with
    no re-read from the store and no copy. Only the deciding thread (or the bus's handlers,
    under the writer's lock) touches it."""

    def __init__(self, app: ServiceApplication, size: int) -> None:
        super().__init__(app, size)
        # Those a command asked for, since it started: what its failure may have changed.
        self.handed_out: dict[UUID, Aggregate] = {}

    def get(self, aggregate_id: UUID, cls: type[A]) -> A | None:
        aggregate = super().get(aggregate_id, Aggregate)
        if aggregate is None:
            return None
        self.handed_out[aggregate_id] = aggregate
        return aggregate if isinstance(aggregate, cls) else None

    def evict_stale(self, batch: _Batch) -> bool:
        """Forget the aggregates a command read that another writer has changed in the store
        since they were loaded; whether there were any. (One this batch has changed too is
        left: the batch's save will fail its concurrency check and be decided again.)"""
        stale = [
            aggregate_id
            for aggregate_id, aggregate in self.handed_out.items()
            if aggregate_id not in batch.counts
            and self._app.recorded_version(aggregate_id) > aggregate.version
        ]
        self.forget(stale)
        return bool(stale)

    def undo(self, batch: _Batch) -> None:
        """Put back what a failed command changed: each aggregate it changed is read again
        from the store and given this batch's earlier events, as if the command never ran."""
        for aggregate_id, aggregate in self.handed_out.items():
            if not aggregate.pending_events:
                continue
            self.aggregates.pop(aggregate_id, None)
            restored = self.load(aggregate_id)
            for event in batch.events:
                if event.originator_id == aggregate_id:
                    restored = event.mutate(restored)  # type: ignore[attr-defined]
            if restored is not None:
                self.aggregates[aggregate_id] = restored


class Writer:
    """The one writer of an application in this process."""

    def __init__(self, app: ServiceApplication, working_set_size: int = 10_000) -> None:
        self.app = app
        # Held while a batch is decided and saved; the bus's handlers take it too.
        self.lock = threading.RLock()
        self.working = WorkingSet(app, working_set_size)
        self._queue: deque[_Request[Any]] = deque()
        self._turn = threading.Condition()
        self._leader: int | None = None
        self._deciding: int | None = None

    @property
    def deciding_here(self) -> bool:
        """Whether this thread is deciding a batch: its reads go to the working set."""
        return self._deciding == threading.get_ident()

    def execute(
        self,
        command: Command[T],
        idempotency: IdempotencyKey | None,
        result_type: type[T],
    ) -> Executed[T]:
        """Run ``command`` (which decides and returns the aggregates to save and the result)
        in the next batch, and answer once that batch is saved; with a key, a repeat returns
        the first result."""
        request = _Request(command, idempotency, result_type)
        self._submit([request])
        return request.outcome()

    def execute_all(
        self, commands: Sequence[tuple[Command[T], IdempotencyKey | None]], result_type: type[T]
    ) -> list[Executed[T] | Exception]:
        """Run many commands, in this order, in as few batches as they fit (one, up to
        MAX_BATCH, when nothing else waits): each with its own answer or the error it raised."""
        requests = [_Request(c, key, result_type) for c, key in commands]
        self._submit(requests)
        return [r.answer_or_error() for r in requests]

    def _submit(self, requests: Sequence[_Request[Any]]) -> None:
        """Queue the requests and wait until each is answered, deciding batches meanwhile
        whenever no other thread is."""
        me = threading.get_ident()
        if self._leader == me:
            raise RuntimeError("a ledger command may not run another command")

        def answered() -> bool:
            return all(r.finished for r in requests)

        with self._turn:
            self._queue.extend(requests)
            while not answered() and self._leader is not None:
                self._turn.wait()
            if answered():
                return
            self._leader = me
        try:
            while not answered():
                # The batch is taken once the lock is held: what queued meanwhile joins it.
                with self.lock:
                    with self._turn:
                        count = min(len(self._queue), MAX_BATCH)
                        batch = [self._queue.popleft() for _ in range(count)]
                    self._run(batch)
        finally:
            with self._turn:
                self._leader = None
                self._turn.notify_all()

    def recorded(self, idempotency: IdempotencyKey) -> dict[str, Any] | None:
        record = self.app.find(record_id(idempotency.key), IdempotencyRecord)
        if record is None:
            return None
        if record.fingerprint != idempotency.fingerprint:
            raise IdempotencyConflict(idempotency.key)
        return dict(record.response)

    def _run(self, requests: list[_Request[Any]]) -> None:
        for attempt in range(MAX_ATTEMPTS):
            try:
                decisions = self._decide_and_save(requests)
            except IntegrityError:
                log.info("lost a race with another writer; deciding again on fresh state")
                self.working.clear()
                # Jitter, so two writers that collided do not collide again in lockstep.
                time.sleep(random.uniform(0, RETRY_PAUSE_SECONDS * 2**attempt))  # noqa: S311
                continue
            except BaseException as e:
                self.working.clear()
                self._answer([_Decision(r, error=e) for r in requests])
                raise
            self._answer(decisions)
            return
        busy = StoreBusy("the store is busy with other writers to the same accounts; retry")
        self._answer([_Decision(r, error=busy) for r in requests])

    def _decide_and_save(self, requests: list[_Request[Any]]) -> list[_Decision]:
        batch = _Batch()
        self._deciding = threading.get_ident()
        try:
            decisions = [self._decide(request, batch) for request in requests]
        finally:
            self._deciding = None
        if batch.events:
            with self.working.saving(()):
                self.app.record_events(batch.events)
            try:
                self._take_snapshots(batch)
            except Exception:
                # The batch is saved; a snapshot only saves reading time, so it waits for
                # the next interval.
                log.exception("taking snapshots failed")
        self.working.trim()
        return decisions

    def _decide(self, request: _Request[Any], batch: _Batch) -> _Decision:
        idempotency = request.idempotency
        for _ in range(MAX_ATTEMPTS):
            self.working.handed_out.clear()
            try:
                if idempotency is not None:
                    earlier = self._earlier(idempotency, batch)
                    if earlier is not None:
                        # Converted, not just called: enums and times come back typed.
                        replay = msgspec.convert(earlier, request.result_type)
                        return _Decision(request, Executed(replay, replayed=True))
                aggregates, result = request.command()
            except Exception as e:
                self.working.undo(batch)
                # A refusal must not rest on what another process has since changed: decided
                # again on the store's state when it did.
                if self.working.evict_stale(batch):
                    continue
                return _Decision(request, error=e)
            break
        else:
            return _Decision(request, error=StoreBusy("the accounts kept changing; retry"))
        events: list[DomainEventProtocol[UUID]] = []
        for aggregate in aggregates:
            events.extend(aggregate.collect_events())
            self.working.put(aggregate)
        if idempotency is not None:
            response = asdict(result)
            record = IdempotencyRecord(
                key=idempotency.key, fingerprint=idempotency.fingerprint, response=response
            )
            events.extend(record.collect_events())
            batch.keys[idempotency.key] = (idempotency.fingerprint, response)
        batch.add(events)
        return _Decision(request, Executed(result))

    def _earlier(self, idempotency: IdempotencyKey, batch: _Batch) -> dict[str, Any] | None:
        """The stored answer to an earlier request with this key, in this batch or before."""
        if idempotency.key in batch.keys:
            fingerprint, response = batch.keys[idempotency.key]
            if fingerprint != idempotency.fingerprint:
                raise IdempotencyConflict(idempotency.key)
            return dict(response)
        return self.recorded(idempotency)

    def _take_snapshots(self, batch: _Batch) -> None:
        """Snapshot, from memory, each aggregate whose new events crossed its interval."""
        intervals = self.app.snapshotting_intervals
        if self.app.snapshots is None or not intervals:
            return
        for aggregate_id, count in batch.counts.items():
            aggregate = self.working.aggregates.get(aggregate_id)
            interval = intervals.get(type(aggregate)) if aggregate is not None else None
            if aggregate is None or interval is None:
                continue
            if aggregate.version // interval != (aggregate.version - count) // interval:
                snapshot_class = getattr(type(aggregate), "Snapshot", self.app.snapshot_class)
                if snapshot_class is not None:
                    self.app.snapshots.put([snapshot_class.take(aggregate)])

    def _answer(self, decisions: list[_Decision]) -> None:
        with self._turn:
            for decision in decisions:
                request = decision.request
                request.answer, request.error = decision.answer, decision.error
                request.finished = True
            self._turn.notify_all()
