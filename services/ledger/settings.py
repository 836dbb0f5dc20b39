"""A ledger service's settings, built explicitly from the command line and the environment."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.auth import AUDITOR_TOKEN_VAR, TokenRegistry
from services.common.settings import (
    SettingsError,
    bus_settings,
    check_seconds,
    check_store_url,
    load_signing_key,
    nats_seed_option,
    nats_tls_options,
    public_key_option,
    service_tokens,
)
from services.ledger.domain_terms import (
    DEFAULT_MAX_EXCHANGE_MINUTES,
    DEFAULT_OVERDRAFT_MINUTES,
)
from shared.bus import DEFAULT_BUS, DEFAULT_NAMESPACE, Bus
from shared.identifiers import InvalidBankId, check_bank_id
from shared.signing import SigningKey

# Names of environment variables, not secrets.
OPERATOR_TOKEN_VAR = "TIMEBANK_OPERATOR_TOKEN"  # noqa: S105
DEFAULT_CHECKPOINT_SECONDS = 10.0
__all__ = ["AUDITOR_TOKEN_VAR", "OPERATOR_TOKEN_VAR", "LedgerSettings", "SettingsError"]


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
    # The bank's own key (the one it was admitted with): it signs what the bank puts on the
    # bus and the checkpoints of its log's hash chain. Needed with NATS.
    signing_key: SigningKey | None = None
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS
    # The clearing house's public key, learnt at admission: only what it signed is applied.
    clearing_key: str | None = None
    # The bank's NATS user (its nkey seed file); without it, the server's anonymous user.
    nats_seed: Path | None = None
    # TLS to NATS, between hosts (the CA, and this participant's certificate).
    nats_tls: ssl.SSLContext | None = None

    @property
    def bus_link(self) -> tuple[str, SigningKey, str] | None:
        """The NATS URL, the bank's key and the clearing house's key, when on the bus."""
        if self.nats_url is None or self.signing_key is None or self.clearing_key is None:
            return None
        return self.nats_url, self.signing_key, self.clearing_key

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
        clearing_key: str | None = None,
        nats_seed: Path | None = None,
        nats_tls_ca: Path | None = None,
        nats_tls_cert: Path | None = None,
        nats_tls_key: Path | None = None,
    ) -> LedgerSettings:
        """Check everything a ledger needs before it starts; tokens come from ``environ``."""
        try:
            check_bank_id(bank_id)
        except InvalidBankId as e:
            raise SettingsError(str(e)) from e
        url = check_store_url(store_url or default_store_url(bank_id))
        tokens = service_tokens(environ, "operator", OPERATOR_TOKEN_VAR, "ledger")
        if default_overdraft_minutes < 0:
            raise SettingsError("the default overdraft limit must be >= 0 minutes")
        if max_exchange_minutes <= 0:
            raise SettingsError("the maximum per exchange must be > 0 minutes")
        bus = bus_settings(nats_url, nats_namespace)
        signing_key = load_signing_key(signing_key_path)
        clearing_key = public_key_option("--clearing-key", clearing_key)
        if nats_url is not None and (signing_key is None or clearing_key is None):
            raise SettingsError(
                "on the federation's bus (--nats-url) a bank signs what it sends and trusts "
                "only the clearing house's signature: give --signing-key (the bank's key, as "
                "admitted) and --clearing-key (the clearing house's public key)"
            )
        return cls(
            bank_id=bank_id,
            store_url=url,
            tokens=tokens,
            default_overdraft_minutes=default_overdraft_minutes,
            max_exchange_minutes=max_exchange_minutes,
            nats_url=nats_url,
            bus=bus,
            signing_key=signing_key,
            checkpoint_seconds=check_seconds("checkpoint interval", checkpoint_seconds),
            clearing_key=clearing_key,
            nats_seed=nats_seed_option(nats_seed),
            nats_tls=nats_tls_options(nats_tls_ca, nats_tls_cert, nats_tls_key),
        )


def default_store_url(bank_id: str) -> str:
    """``./<bank>.ledger.db`` in the current directory: `timebank up` names its stores
    ``<name>.db`` and an id has no dot, so a bank started by hand beside a federation never
    opens one of the federation's stores by default."""
    return f"sqlite:///{bank_id}.ledger.db"
