"""The log's own order: row ids without gaps (on SQLite), each aggregate's versions in sequence
and stamped in order (the ``log-gap``, ``version-sequence`` and ``event-order`` rules)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from services.audit.decoding import IDEMPOTENCY_RECORDED
from services.audit.findings import EVENT_ORDER, LOG_GAP, VERSION_SEQUENCE, EventRef, Report

# Aggregates with exactly one event: nothing to remember after it.
_SINGLE_EVENT_TOPICS = frozenset({IDEMPOTENCY_RECORDED})


class LogOrder:
    """Where each aggregate's events have got to, and the log's next row id."""

    def __init__(self, report: Report, label: Callable[[EventRef], str], contiguous_ids: bool):
        self._report = report
        # What the event is of (its account), to name it in a finding.
        self._label = label
        self.contiguous_ids = contiguous_ids
        self._next_id = 1
        # Aggregate -> (last version, its timestamp); finished aggregates are dropped.
        self._versions: dict[int | str, tuple[int, datetime | None]] = {}

    def check(self, ref: EventRef, timestamp: datetime | None) -> None:
        """An event read from the log: where it is, its version and when it was stamped."""
        if ref.position != self._next_id:
            self.check_gap(ref)
        self._next_id = ref.position + 1
        version = ref.version
        if type(version) is not int:
            self._report(ref, VERSION_SEQUENCE, f"version {version!r} is not a number")
            return
        previous = self._versions.get(ref.key)
        if previous is None:
            if version != 1:
                self._out_of_sequence(ref, previous)
        else:
            if version != previous[0] + 1:
                self._out_of_sequence(ref, previous)
            stamped = previous[1]
            if timestamp is not None and stamped is not None and timestamp < stamped:
                self._moved(ref, timestamp, previous[0], stamped)
        if ref.topic not in _SINGLE_EVENT_TOPICS:
            self._versions[ref.key] = (version, timestamp)

    def forget(self, key: int | str) -> None:
        """The aggregate has ended: no more of its events are expected."""
        self._versions.pop(key, None)

    def check_gap(self, ref: EventRef) -> None:
        position = ref.position
        if self.contiguous_ids and position != self._next_id:
            first, last = self._next_id, position - 1
            missing = f"position {first} is" if first == last else f"positions {first}-{last} are"
            self._report(
                ref,
                LOG_GAP,
                f"{missing} missing from the log before this event (SQLite never skips a row id)",
                self._label(ref),
            )
        self._next_id = position + 1

    def _moved(self, ref: EventRef, timestamp: datetime, version: int, stamped: datetime) -> None:
        """Stamped before the aggregate's previous event: the event-order rule."""
        self._report(
            ref,
            EVENT_ORDER,
            f"stamped {timestamp.isoformat()}, before version {version} of the same "
            f"aggregate ({stamped.isoformat()}): events moved",
            self._label(ref),
        )

    def _out_of_sequence(self, ref: EventRef, previous: tuple[int, datetime | None] | None) -> None:
        version = ref.version
        if previous is None:
            detail = (
                f"version {version} of an aggregate with no earlier event in the log "
                "(expected version 1)"
            )
        elif version <= previous[0]:
            detail = f"version {version} again after version {previous[0]}"
        else:
            detail = f"version {version} follows version {previous[0]}: events are missing"
        self._report(ref, VERSION_SEQUENCE, detail, self._label(ref))
