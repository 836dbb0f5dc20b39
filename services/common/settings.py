"""What both services' settings check alike: the error they raise, the NATS options, the store."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path

import nkeys

from services.common.auth import TokenError, TokenRegistry, tokens_from_environ
from services.common.stores import StoreURLError, parse_store_url
from shared.bus import Bus, InvalidNamespace, server_urls
from shared.signing import SigningKey, SigningKeyError, check_public_key


class SettingsError(ValueError):
    """The service cannot start with these settings; the message says what to fix."""


def bus_settings(nats_url: str | None, nats_namespace: str) -> Bus:
    """Check a service's NATS options; the federation's subjects and streams on that server.
    The URL may list a cluster's servers, comma-separated: each is checked."""
    servers = server_urls(nats_url) if nats_url is not None else []
    if nats_url is not None and (
        not servers or not all(url.startswith(("nats://", "tls://")) for url in servers)
    ):
        raise SettingsError(f"--nats-url {nats_url!r} must start with nats:// or tls://")
    try:
        return Bus(nats_namespace)
    except InvalidNamespace as e:
        raise SettingsError(str(e)) from e


def check_store_url(url: str) -> str:
    """The store URL, if it can be used."""
    try:
        parse_store_url(url)
    except StoreURLError as e:
        raise SettingsError(str(e)) from e
    return url


def check_seconds(what: str, seconds: float, maximum: float = 24 * 3600) -> float:
    if not 0 < seconds <= maximum:
        raise SettingsError(f"the {what} must be between 0 and {maximum:g} seconds")
    return seconds


def service_tokens(
    environ: Mapping[str, str], role: str, variable: str, service: str
) -> TokenRegistry:
    """The service's bearer tokens from the environment given (see ``tokens_from_environ``)."""
    try:
        return tokens_from_environ(environ, role, variable, service)
    except TokenError as e:
        raise SettingsError(str(e)) from e


def load_signing_key(path: Path | None) -> SigningKey | None:
    """The participant's Ed25519 key from its file, if one is named."""
    try:
        return SigningKey.load(path) if path else None
    except SigningKeyError as e:
        raise SettingsError(str(e)) from e


def public_key_option(option: str, text: str | None) -> str | None:
    """A base64 Ed25519 public key given as ``option``, checked."""
    if text is None:
        return None
    try:
        return check_public_key(text)
    except SigningKeyError as e:
        raise SettingsError(f"{option}: {e}") from e


def nats_seed_option(path: Path | None) -> Path | None:
    """A participant's NATS nkey seed file (``--nats-seed``), checked: readable, and a user's
    seed. The seed itself is read by the NATS client when it connects."""
    if path is None:
        return None
    try:
        seed = path.read_bytes().strip()
    except OSError as e:
        raise SettingsError(f"--nats-seed {path}: cannot read it ({e.strerror})") from e
    try:
        nkeys.from_seed(seed)
    except Exception as e:
        raise SettingsError(f"--nats-seed {path}: not an nkey seed ({e})") from e
    if not seed.startswith(b"SU"):
        raise SettingsError(f"--nats-seed {path}: not a NATS user's seed (it starts with SU)")
    return path


def nats_tls_options(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext | None:
    """A client TLS context for NATS between hosts: the CA that signed the server's
    certificate, and this participant's own certificate and key when the server asks for one.
    None when no CA is given (and then no certificate may be)."""
    if ca_file is None:
        if cert_file is not None or key_file is not None:
            raise SettingsError("--nats-tls-cert and --nats-tls-key need --nats-tls-ca")
        return None
    if (cert_file is None) != (key_file is None):
        raise SettingsError("--nats-tls-cert and --nats-tls-key go together")
    try:
        context = ssl.create_default_context(cafile=str(ca_file))
        if cert_file is not None and key_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as e:
        raise SettingsError(f"NATS TLS: cannot use the certificates given ({e})") from e
    return context
