"""Durable Idempotency-Key records, saved in the same transaction as the effect they guard."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

_NAMESPACE = uuid5(NAMESPACE_URL, "urn:timebank-federation:idempotency-key")
MAX_KEY_LENGTH = 255


class IdempotencyConflict(Exception):
    """The key was used before for a different request."""

    def __init__(self, key: str) -> None:
        detail = f"Idempotency-Key {key!r} was already used for a different request"
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, Any] = {}


class InvalidIdempotencyKey(ValueError):
    pass


def fingerprint(operation: str, body: Any) -> str:
    """A digest of what was asked: the operation and the request body in canonical JSON."""
    canonical = json.dumps([operation, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyRecord(Aggregate):
    """The first successful response to a request that carried this key."""

    @staticmethod
    def create_id(key: str, **_: Any) -> UUID:
        return record_id(key)

    @event("Recorded")
    def __init__(self, key: str, fingerprint: str, response: dict[str, Any]) -> None:
        self.key = key
        self.fingerprint = fingerprint
        self.response = response


def record_id(key: str) -> UUID:
    return uuid5(_NAMESPACE, key)


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise InvalidIdempotencyKey(
            f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable ASCII characters"
        )
    return key
