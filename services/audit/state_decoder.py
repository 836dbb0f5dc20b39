"""Stored events' attributes decoded as the application's mapper decodes them, most of them
by msgspec's faster JSON parser (the audit's hot loop)."""

from __future__ import annotations

from typing import Any

import msgspec
from eventsourcing.persistence import JSONTranscoder, Mapper, StoredEvent
from eventsourcing.utils import resolve_topic

from services.common.chain import StoredEventRow


class StateDecoder:
    """A stored event's attributes, decoded exactly as the application's mapper decodes them.

    The mapper is the authority, but it is most of a replay's cost. For the usual event (plain
    JSON, no cipher or compressor, a class at its first version, flat fields besides its
    timestamp), the same values come from msgspec's much faster JSON parser, with the mapper's
    transcoding of the timestamp (a ``_type_`` / ``_data_`` object) applied; msgspec accepts
    only strict JSON, a subset of what the mapper's parser accepts, and parses it to the same
    values. Anything else (another nested value, an unknown topic, a class with upcasting, JSON
    msgspec refuses) goes to the mapper itself, and so does every failure: its error is the
    one shown.
    """

    def __init__(self, mapper: Mapper[Any]) -> None:
        self._mapper = mapper
        transcoder = mapper.transcoder
        self._transcodings = (
            transcoder.names
            if isinstance(transcoder, JSONTranscoder)
            and mapper.cipher is None
            and mapper.compressor is None
            else None
        )
        self._json = msgspec.json.Decoder()
        # Topic -> whether events of it may take the fast way.
        self._plain_topics: dict[str, bool] = {}

    def __call__(self, row: StoredEventRow) -> dict[str, Any]:
        state = row.state
        if self._transcodings is not None and type(state) is bytes:
            plain = self._plain_topics.get(row.topic)
            if plain is None:
                plain = self._plain_topics[row.topic] = self._is_plain(row.topic)
            if plain:
                decoded = self._fast(state)
                if decoded is not None:
                    return decoded
        stored = StoredEvent(row.originator_id, row.originator_version, row.topic, row.state)
        return dict(vars(self._mapper.to_domain_event(stored)))

    @staticmethod
    def _is_plain(topic: str) -> bool:
        try:
            cls = resolve_topic(topic)
        except Exception:
            return False
        return isinstance(cls, type) and getattr(cls, "class_version", 1) == 1

    def _fast(self, state: bytes) -> dict[str, Any] | None:
        assert self._transcodings is not None
        # At most one object inside the event (its timestamp) and no array, counted on the
        # raw bytes: a brace or bracket inside a string only sends the event the slow way.
        if state.count(b"{") != 2 or b"[" in state:
            return None
        try:
            decoded = self._json.decode(state)
        except msgspec.DecodeError:
            return None
        if type(decoded) is not dict or "class_version" in decoded:
            return None
        stamp = decoded.get("timestamp")
        if type(stamp) is not dict or len(stamp) != 2 or "_data_" not in stamp:
            return None
        name = stamp.get("_type_")
        transcoding = self._transcodings.get(name) if type(name) is str else None
        if transcoding is None:
            return None
        try:
            decoded["timestamp"] = transcoding.decode(stamp["_data_"])
        except Exception:
            return None
        return decoded
