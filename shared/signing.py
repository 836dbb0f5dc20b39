"""Ed25519 keys and signatures: every participant signs what it puts on the bus (each bank with
the key it was admitted with, the clearing house with its own), and each bank signs the
checkpoints of its log's hash chain; receivers verify against the public keys they hold."""

from __future__ import annotations

import base64
import binascii
import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBLIC_KEY_BYTES = 32


class SigningKeyError(ValueError):
    """A key file or a public key that cannot be used; the message says why."""


def envelope_payload(data: bytes) -> bytes:
    """What an envelope's signature covers: the envelope's bytes as published (its source,
    destination, sequence number and message), after a context line of their own so that no
    signature over anything else can pass for one."""
    return b"timebank-envelope-v1\n" + data


def confirmation_payload(bank_id: str, settlement_id: int, number: int) -> bytes:
    """What a creditor bank signs to confirm it was paid obligation ``number`` of a cycle."""
    return f"timebank-settlement-confirmation-v1\n{bank_id}\n{settlement_id}\n{number}".encode()


def rotation_payload(bank_id: str, public_key: str, previous_key_until_seq: int) -> bytes:
    """What a bank signs, with its current key, to register ``public_key`` in its place."""
    return f"timebank-key-rotation-v1\n{bank_id}\n{public_key}\n{previous_key_until_seq}".encode()


def checkpoint_payload(bank_id: str, position: int, chain_hash: str) -> bytes:
    """What a checkpoint's signature covers: the bank, the log position and the chain hash."""
    return f"timebank-checkpoint-v1\n{bank_id}\n{position}\n{chain_hash}".encode()


@dataclass(frozen=True)
class SigningKey:
    """A bank's private key (kept in a file readable by its owner only)."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as e:
            raise SigningKeyError(f"cannot read the signing key {path}: {e.strerror}") from None
        except ValueError as e:
            raise SigningKeyError(f"{path} is not a PEM private key: {e}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"{path} is not an Ed25519 key")
        return cls(key)

    def save(self, path: Path) -> None:
        """Write the key as PKCS#8 PEM, readable by its owner only; never overwrite one."""
        pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)

    @property
    def public_key(self) -> str:
        """The public key as the clearing house stores it: 32 raw bytes, base64."""
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode()

    def sign(self, payload: bytes) -> str:
        return base64.b64encode(self.private.sign(payload)).decode()


def check_public_key(text: str) -> str:
    """A base64 Ed25519 public key, checked; returned as given."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyError("public_key must be base64") from None
    if len(raw) != PUBLIC_KEY_BYTES:
        raise SigningKeyError(f"public_key must be {PUBLIC_KEY_BYTES} bytes (an Ed25519 key)")
    Ed25519PublicKey.from_public_bytes(raw)
    return text


@functools.lru_cache(maxsize=1024)
def _public_key(text: str) -> Ed25519PublicKey:
    # Every message is verified against one of a few keys: each is decoded once.
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))


def verify(public_key: str, payload: bytes, signature: str) -> bool:
    """True if ``signature`` (base64) is the holder of ``public_key``'s over ``payload``."""
    try:
        _public_key(public_key).verify(base64.b64decode(signature, validate=True), payload)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def verify_any(public_keys: Iterable[str], payload: bytes, signature: str) -> bool:
    """True if ``signature`` is by the holder of one of ``public_keys`` (empty ones skipped:
    a participant without a key signs nothing)."""
    return any(key and verify(key, payload, signature) for key in public_keys)
