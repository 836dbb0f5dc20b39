"""A NATS user's nkey: its seed (kept by the participant, mode 600) and its public half (which
the server's config names, and which a bank gives at admission)."""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

import nkeys

# A user's public nkey is 56 characters of base32: a prefix byte, 32 key bytes, a CRC16.
_PUBLIC_NKEY_LENGTH = 56


class InvalidNatsKey(ValueError):
    """Not a NATS user's public nkey."""


def new_seed(path: Path) -> str:
    """Make a NATS user's nkey seed at ``path``, readable by its owner only, and return its
    public nkey. Never replaces a seed (the server knows its public half)."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(seed)
    return public_nkey(path)


def public_nkey(seed_path: Path) -> str:
    """The user's public nkey (``U...``), as the server's config names it."""
    key: str = nkeys.from_seed(seed_path.read_bytes().strip()).public_key.decode()
    return key


def check_user_nkey(key: str) -> str:
    """``key`` if it is a NATS user's public nkey (``U...``, checksum intact); else
    InvalidNatsKey saying why."""
    if len(key) != _PUBLIC_NKEY_LENGTH or not key.startswith("U"):
        raise InvalidNatsKey("a NATS user's public nkey is 56 characters starting with U")
    try:
        raw = base64.b32decode(key)
    except (binascii.Error, ValueError):
        raise InvalidNatsKey("a NATS user's public nkey is base32") from None
    body, checksum = raw[:-2], int.from_bytes(raw[-2:], "little")
    if body[0] != nkeys.PREFIX_BYTE_USER or nkeys.crc16(body) != checksum:
        raise InvalidNatsKey("the NATS user's public nkey does not check out")
    return key
