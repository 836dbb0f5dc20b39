"""The rolling hash over a log's stored events that makes any edit, deletion or re-ordering show.

``h_0`` is 32 zero bytes and ``h_n = sha256(h_{n-1} || canonical_bytes(event n))``, where event
``n`` is the n-th stored event in notification order and its *position* is its notification id.
The canonical bytes are five fields, each preceded by its length as 8 big-endian bytes, so no
two different events can encode alike by moving bytes from one field to the next:

1. the notification id, in ASCII decimal;
2. the originator id: a UUID's 16 bytes, any other id as UTF-8;
3. the originator version, in ASCII decimal;
4. the topic, in UTF-8;
5. the state, byte for byte as stored (after any compression or encryption).

Numbers are written in decimal rather than fixed width so that a column an editor filled with
something other than an integer still hashes (to something different) instead of failing.
Signing the heads and publishing checkpoints is done elsewhere; this module only computes and
compares them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)
_LENGTH_BYTES = 8


class StoredEventRow(Protocol):
    """What the chain reads of a stored event: an eventsourcing Notification has all of it."""

    @property
    def id(self) -> int: ...

    @property
    def originator_id(self) -> UUID | str: ...

    @property
    def originator_version(self) -> int: ...

    @property
    def topic(self) -> str: ...

    @property
    def state(self) -> bytes: ...


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(_LENGTH_BYTES, "big") + data


def _as_bytes(value: object) -> bytes:
    """A column's value as bytes: bytes as they are, anything else by its text."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, UUID):
        return value.bytes
    return str(value).encode("utf-8", "surrogatepass")


_UUID_FIELD_PREFIX = (16).to_bytes(_LENGTH_BYTES, "big")
# Length prefixes of short fields, and whole topic fields: the replay hashes every event.
_PREFIXES = [n.to_bytes(_LENGTH_BYTES, "big") for n in range(32)]
_topic_fields: dict[str, bytes] = {}


def canonical_bytes(event: StoredEventRow) -> bytes:
    """The bytes of one stored event that its link in the chain covers."""
    position, originator_id = event.id, event.originator_id
    version, topic, state = event.originator_version, event.topic, event.state
    if (
        type(position) is int
        and type(version) is int
        and type(originator_id) is UUID
        and type(topic) is str
        and type(state) is bytes
    ):
        # The usual row, spelled out for speed; the same bytes as the general case below.
        position_text = b"%d" % position
        version_text = b"%d" % version
        topic_field = _topic_fields.get(topic)
        if topic_field is None:
            topic_field = _topic_fields[topic] = _field(topic.encode())
        return b"".join(
            (
                _PREFIXES[len(position_text)],
                position_text,
                _UUID_FIELD_PREFIX,
                originator_id.bytes,
                _PREFIXES[len(version_text)],
                version_text,
                topic_field,
                len(state).to_bytes(_LENGTH_BYTES, "big"),
                state,
            )
        )
    return b"".join(
        (
            _field(str(position).encode()),
            _field(_as_bytes(originator_id)),
            _field(str(version).encode()),
            _field(_as_bytes(topic)),
            _field(_as_bytes(state)),
        )
    )


def next_head(head: bytes, event: StoredEventRow) -> bytes:
    """The chain's head after ``event``, given the head before it."""
    return hashlib.sha256(head + canonical_bytes(event)).digest()


def rolling_hashes(
    events: Iterable[StoredEventRow], head: bytes = ZERO_HASH
) -> Iterator[tuple[int, bytes]]:
    """Yield (position, head after the event at that position) for each event, streaming."""
    for event in events:
        head = next_head(head, event)
        yield event.id, head


@dataclass(frozen=True)
class CheckpointMismatch:
    """The first checkpoint the log does not reproduce."""

    position: int
    expected: str
    # None when the log has no event at that position (deleted, or the log ends before it).
    actual: str | None
    detail: str


def parse_checkpoint(position: int, hash_hex: str) -> tuple[int, bytes]:
    """A checkpoint as (position, 32-byte hash); ValueError if it is not one."""
    if isinstance(position, bool) or not isinstance(position, int) or position < 1:
        raise ValueError(f"checkpoint position must be a notification id >= 1, not {position!r}")
    try:
        digest = bytes.fromhex(hash_hex)
    except (TypeError, ValueError):
        raise ValueError(f"checkpoint at {position}: {hash_hex!r} is not hexadecimal") from None
    if len(digest) != HASH_SIZE:
        raise ValueError(f"checkpoint at {position}: a hash is {HASH_SIZE} bytes")
    return position, digest


def first_mismatch(
    events: Iterable[StoredEventRow], checkpoints: Iterable[tuple[int, str]]
) -> CheckpointMismatch | None:
    """Replay the chain over ``events`` (from the log's first event) and compare it with each
    checkpoint ``(position, hash_hex)``, in position order; return the first that differs, or
    None when every checkpoint holds. Reads only as far as the last checkpoint."""
    wanted = sorted(parse_checkpoint(position, hash_hex) for position, hash_hex in checkpoints)
    if not wanted:
        return None
    index = 0
    last_position = 0
    for position, head in rolling_hashes(events):
        if wanted[index][0] < position:
            missing = wanted[index][0]
            return CheckpointMismatch(
                position=missing,
                expected=wanted[index][1].hex(),
                actual=None,
                detail=f"the log has no event at position {missing} (the next is {position})",
            )
        # Several checkpoints may name one position: all must agree with the chain.
        while index < len(wanted) and wanted[index][0] == position:
            if wanted[index][1] != head:
                return CheckpointMismatch(
                    position=position,
                    expected=wanted[index][1].hex(),
                    actual=head.hex(),
                    detail=f"the chain's head at position {position} differs from the checkpoint",
                )
            index += 1
        if index == len(wanted):
            return None
        last_position = position
    expected = wanted[index][0]
    return CheckpointMismatch(
        position=expected,
        expected=wanted[index][1].hex(),
        actual=None,
        detail=f"the log ends at position {last_position}, before the checkpoint at {expected}",
    )
