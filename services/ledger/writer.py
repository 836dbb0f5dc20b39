"""How a ledger command is carried out: decided on the latest state under the process's write
lock, saved in one transaction with its idempotency record, and decided again on fresh state
when another process writing the same store won the race."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

import msgspec
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from services.common.application import ServiceApplication
from services.common.idempotency import IdempotencyConflict, IdempotencyRecord, record_id
from services.ledger.domain_terms import (
    LedgerError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# A command that loses a race with another process re-reads and decides again, this often.
MAX_ATTEMPTS = 10
RETRY_PAUSE_SECONDS = 0.001

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


class Writer:
    """The one writer of an application in this process."""

    def __init__(self, app: ServiceApplication) -> None:
        self.app = app
        self.lock = threading.RLock()

    def execute(
        self,
        command: Command[T],
        idempotency: IdempotencyKey | None,
        result_type: type[T],
    ) -> Executed[T]:
        """Run ``command`` (which decides and returns the aggregates to save and the result)
        and save what it decided; with a key, a repeat returns the first result."""
        with self.lock:
            for attempt in range(MAX_ATTEMPTS):
                if idempotency is not None:
                    earlier = self.recorded(idempotency)
                    if earlier is not None:
                        # Converted, not just called: enums and times come back typed.
                        return Executed(msgspec.convert(earlier, result_type), replayed=True)
                aggregates, result = command()
                to_save: list[Aggregate] = list(aggregates)
                if idempotency is not None:
                    to_save.append(
                        IdempotencyRecord(
                            key=idempotency.key,
                            fingerprint=idempotency.fingerprint,
                            response=asdict(result),  # type: ignore[call-overload]
                        )
                    )
                try:
                    self.app.save(*to_save)
                except IntegrityError:
                    log.info("lost a race with another writer; deciding again on fresh state")
                    # Jitter, so two writers that collided do not collide again in lockstep.
                    time.sleep(random.uniform(0, RETRY_PAUSE_SECONDS * 2**attempt))  # noqa: S311
                    continue
                return Executed(result)
        raise StoreBusy("the store is busy with other writers to the same accounts; retry")

    def recorded(self, idempotency: IdempotencyKey) -> dict[str, Any] | None:
        record = self.app.find(record_id(idempotency.key), IdempotencyRecord)
        if record is None:
            return None
        if record.fingerprint != idempotency.fingerprint:
            raise IdempotencyConflict(idempotency.key)
        return dict(record.response)
