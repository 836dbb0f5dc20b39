"""The clearing service's settings, built explicitly from the command line and the environment."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from services.clearing.domain_terms import DEFAULT_DEADLINE_SECONDS
from services.common.auth import TokenRegistry
from services.common.settings import (
    SettingsError,
    bus_settings,
    check_seconds,
    check_store_url,
    load_signing_key,
    nats_seed_option,
    nats_tls_options,
    service_tokens,
)
from shared.bus import DEFAULT_BUS, DEFAULT_NAMESPACE, MAX_STREAM_REPLICAS, Bus
from shared.signing import SigningKey

ADMIN_TOKEN_VAR = "TIMEBANK_ADMIN_TOKEN"  # noqa: S105 (a variable's name, not a secret)
# In the current directory, under a name `timebank up` never gives a store (see the ledger's).
DEFAULT_STORE_URL = "sqlite:///clearing.house.db"


@dataclass(frozen=True)
class ClearingSettings:
    store_url: str
    tokens: TokenRegistry
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS
    nats_url: str | None = None
    bus: Bus = DEFAULT_BUS
    # The clearing house's own key: it signs what it puts on the bus (banks learn its public
    # half at admission). Needed with NATS.
    signing_key: SigningKey | None = None
    # The clearing house's NATS user (its nkey seed file); without it, the anonymous user.
    nats_seed: Path | None = None
    # TLS to NATS, between hosts (the CA, and this participant's certificate).
    nats_tls: ssl.SSLContext | None = None

    @property
    def bus_link(self) -> tuple[str, SigningKey] | None:
        """The NATS URL and the clearing house's key, when on the bus."""
        if self.nats_url is None or self.signing_key is None:
            return None
        return self.nats_url, self.signing_key

    @classmethod
    def build(
        cls,
        environ: Mapping[str, str],
        *,
        store_url: str | None = None,
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
        nats_url: str | None = None,
        nats_namespace: str = DEFAULT_NAMESPACE,
        signing_key_path: Path | None = None,
        nats_seed: Path | None = None,
        nats_tls_ca: Path | None = None,
        nats_tls_cert: Path | None = None,
        nats_tls_key: Path | None = None,
        stream_replicas: int = 1,
    ) -> ClearingSettings:
        """Check everything the clearing needs before it starts; tokens come from ``environ``.
        ``stream_replicas``: on how many NATS servers the clearing house, which sets up the
        streams, has each kept (3 on a cluster of three)."""
        url = check_store_url(store_url or DEFAULT_STORE_URL)
        tokens = service_tokens(environ, "admin", ADMIN_TOKEN_VAR, "clearing house")
        check_seconds("deadline", deadline_seconds)
        if not 1 <= stream_replicas <= MAX_STREAM_REPLICAS:
            raise SettingsError(
                f"--stream-replicas {stream_replicas}: a stream is kept on 1 to "
                f"{MAX_STREAM_REPLICAS} NATS servers (1 on a single server, 3 on a cluster "
                "of three)"
            )
        bus = replace(bus_settings(nats_url, nats_namespace), stream_replicas=stream_replicas)
        signing_key = load_signing_key(signing_key_path)
        if nats_url is not None and signing_key is None:
            raise SettingsError(
                "on the federation's bus (--nats-url) the clearing house signs what it sends: "
                "give --signing-key (its key, from `timebank keys new`)"
            )
        return cls(
            store_url=url,
            tokens=tokens,
            deadline_seconds=deadline_seconds,
            nats_url=nats_url,
            bus=bus,
            signing_key=signing_key,
            nats_seed=nats_seed_option(nats_seed),
            nats_tls=nats_tls_options(nats_tls_ca, nats_tls_cert, nats_tls_key),
        )
