"""Ed25519 keys for log checkpoints: what a signature covers, and keys kept safely on disk."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from shared.signing import (
    SigningKey,
    SigningKeyError,
    check_public_key,
    checkpoint_payload,
    verify,
)

PAYLOAD = checkpoint_payload("rushey-green", 41, "ab" * 32)


def test_a_signature_verifies_with_the_signers_public_key() -> None:
    key = SigningKey.generate()

    assert verify(key.public_key, PAYLOAD, key.sign(PAYLOAD))


def test_a_signature_does_not_verify_with_another_banks_key() -> None:
    signer, other = SigningKey.generate(), SigningKey.generate()

    assert not verify(other.public_key, PAYLOAD, signer.sign(PAYLOAD))


@pytest.mark.parametrize(
    "changed",
    [
        checkpoint_payload("lewisham-college", 41, "ab" * 32),
        checkpoint_payload("rushey-green", 42, "ab" * 32),
        checkpoint_payload("rushey-green", 41, "ac" + "ab" * 31),
    ],
    ids=["bank", "position", "hash"],
)
def test_a_signature_covers_the_bank_the_position_and_the_hash(changed: bytes) -> None:
    key = SigningKey.generate()

    assert not verify(key.public_key, changed, key.sign(PAYLOAD))


@pytest.mark.parametrize("signature", ["", "not base64!", base64.b64encode(b"x" * 64).decode()])
def test_a_malformed_signature_does_not_verify(signature: str) -> None:
    assert not verify(SigningKey.generate().public_key, PAYLOAD, signature)


def test_a_saved_key_is_readable_by_its_owner_only_and_loads_back(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "bank.key"

    key.save(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SigningKey.load(path).public_key == key.public_key


def test_a_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "bank.key"
    first = SigningKey.generate()
    first.save(path)

    with pytest.raises(FileExistsError):
        SigningKey.generate().save(path)
    assert SigningKey.load(path).public_key == first.public_key


def test_loading_a_missing_file_or_not_a_key_says_which(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="cannot read"):
        SigningKey.load(tmp_path / "missing.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("hello")
    with pytest.raises(SigningKeyError, match="not a PEM private key"):
        SigningKey.load(garbage)


def test_a_key_of_another_algorithm_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ec.key"
    path.write_bytes(
        generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    with pytest.raises(SigningKeyError, match="not an Ed25519 key"):
        SigningKey.load(path)


def test_a_public_key_is_32_bytes_of_base64() -> None:
    good = SigningKey.generate().public_key

    assert check_public_key(good) == good
    with pytest.raises(SigningKeyError, match="base64"):
        check_public_key("not base64!")
    with pytest.raises(SigningKeyError, match="32 bytes"):
        check_public_key(base64.b64encode(b"short").decode())
