"""Whether a message on the bus is what it claims to be, decided before anything else looks at
it: it came on the subject of the source it names, it is addressed here, and its signature
verifies against that source's registered key. A message that fails is set aside with the
reason and never reaches the inbox, so it takes no sender's sequence number."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shared.bus import Bus
from shared.protocol import Envelope
from shared.signing import envelope_payload, verify_any

# The public keys (base64) that may sign a participant's message with this sequence number (a
# bank that rotated its key signed its earlier messages with the earlier key); none: unknown.
KeysOf = Callable[[str, int], Sequence[str]]


@dataclass(frozen=True)
class Authenticator:
    """The checks of one receiver, ``me`` (a bank id or "clearing")."""

    bus: Bus
    me: str
    keys_of: KeysOf

    def refusal(
        self, subject: str, envelope: Envelope, data: bytes, signature: str | None
    ) -> str | None:
        """Why the message (``data``, as it arrived on ``subject``) does not count, or None."""
        if envelope.destination != self.me:
            return f"addressed to {envelope.destination}, not {self.me}"
        expected = self.bus.subject_for(envelope)
        if subject != expected:
            return (
                f"a message from {envelope.source} to {envelope.destination} comes on "
                f"{expected}, not on {subject}"
            )
        keys = self.keys_of(envelope.source, envelope.seq)
        if not keys:
            return f"{envelope.source} has no key registered here"
        if not signature:
            return f"unsigned: a message from {envelope.source} must carry its signature"
        payload = envelope_payload(data)
        if not verify_any(keys, payload, signature):
            return f"the signature does not verify against {envelope.source}'s key"
        return None
