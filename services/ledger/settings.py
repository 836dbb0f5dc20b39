"""A ledger service's settings, built explicitly from the command line and the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.auth import (
    AUDITOR_TOKEN_VAR,
    TokenError,
    TokenRegistry,
    tokens_from_environ,
)
from services.common.stores import StoreURLError, parse_store_url
from services.ledger.application import DEFAULT_MAX_EXCHANGE_MINUTES, DEFAULT_OVERDRAFT_MINUTES
from services.ledger.checkpoints import DEFAULT_CHECKPOINT_SECONDS
from shared.bus import DEFAULT_BUS, DEFAULT_NAMESPACE, Bus, InvalidNamespace
from shared.identifiers import InvalidBankId, check_bank_id
from shared.signing import SigningKey, SigningKeyError

# Names of environment variables, not secrets.
OPERATOR_TOKEN_VAR = "TIMEBANK_OPERATOR_TOKEN"  # noqa: S105
__all__ = ["AUDITOR_TOKEN_VAR", "OPERATOR_TOKEN_VAR", "LedgerSettings", "SettingsError"]


class SettingsError(ValueError):
    """The service cannot start with these settings; the message says what to fix."""


@dataclass(frozen=True)
class LedgerSettings:
    bank_id: str
    store_url: str
    tokens: TokenRegistry
    default_overdraft_minutes: int = DEFAULT_OVERDRAFT_MINUTES
    max_exchange_minutes: int = DEFAULT_MAX_EXCHANGE_MINUTES
    # Without it the bank works alone: local exchanges only.
    nats_url: str | None = None
    bus: Bus = DEFAULT_BUS
    # With a key, the bank sends the clearing house signed checkpoints of its log's hash chain.
    signing_key: SigningKey | None = None
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS

    @classmethod
    def build(
        cls,
        environ: Mapping[str, str],
        *,
        bank_id: str,
        store_url: str | None = None,
        default_overdraft_minutes: int = DEFAULT_OVERDRAFT_MINUTES,
        max_exchange_minutes: int = DEFAULT_MAX_EXCHANGE_MINUTES,
        nats_url: str | None = None,
        nats_namespace: str = DEFAULT_NAMESPACE,
        signing_key_path: Path | None = None,
        checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS,
    ) -> LedgerSettings:
        """Check everything a ledger needs before it starts; tokens come from ``environ``."""
        try:
            check_bank_id(bank_id)
            url = store_url or default_store_url(bank_id)
            parse_store_url(url)
            tokens = tokens_from_environ(environ, "operator", OPERATOR_TOKEN_VAR, "ledger")
        except (InvalidBankId, StoreURLError, TokenError) as e:
            raise SettingsError(str(e)) from e
        if default_overdraft_minutes < 0:
            raise SettingsError("the default overdraft limit must be >= 0 minutes")
        if max_exchange_minutes <= 0:
            raise SettingsError("the maximum per exchange must be > 0 minutes")
        bus = bus_settings(nats_url, nats_namespace)
        try:
            signing_key = SigningKey.load(signing_key_path) if signing_key_path else None
        except SigningKeyError as e:
            raise SettingsError(str(e)) from e
        if not 0 < checkpoint_seconds <= 24 * 3600:
            raise SettingsError("the checkpoint interval must be between 0 and 86400 seconds")
        return cls(
            bank_id=bank_id,
            store_url=url,
            tokens=tokens,
            default_overdraft_minutes=default_overdraft_minutes,
            max_exchange_minutes=max_exchange_minutes,
            nats_url=nats_url,
            bus=bus,
            signing_key=signing_key,
            checkpoint_seconds=checkpoint_seconds,
        )


def bus_settings(nats_url: str | None, nats_namespace: str) -> Bus:
    """Check a service's NATS options; the federation's subjects and streams on that server."""
    if nats_url is not None and not nats_url.startswith(("nats://", "tls://")):
        raise SettingsError(f"--nats-url {nats_url!r} must start with nats:// or tls://")
    try:
        return Bus(nats_namespace)
    except InvalidNamespace as e:
        raise SettingsError(str(e)) from e


def default_store_url(bank_id: str) -> str:
    """``./timebank-data/<bank>.db`` under the current directory."""
    return f"sqlite:///timebank-data/{bank_id}.db"
