"""Whether a message on the bus is what it claims to be, decided before anything else looks at
it: it came on the subject of the source it names, it is addressed here, and its signature
verifies against that source's registered key. A message that fails is set aside with the
reason and never reaches the inbox, so it takes no sender's sequence number."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shared.bus import Bus
from shared.protocol import Envelope
from shared.signing import envelope_payload, verify

# A participant's registered public key (base64), or None if it has none here.
KeyOf = Callable[[str], str | None]


@dataclass(frozen=True)
class Authenticator:
    """The checks of one receiver, ``me`` (a bank id or "clearing")."""

    bus: Bus
    me: str
    key_of: KeyOf

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
        key = self.key_of(envelope.source)
        if not key:
            return f"{envelope.source} has no key registered here"
        if not signature:
            return f"unsigned: a message from {envelope.source} must carry its signature"
        if not verify(key, envelope_payload(data), signature):
            return f"the signature does not verify against {envelope.source}'s key"
        return None
