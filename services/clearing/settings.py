"""The clearing service's settings, built explicitly from the command line and the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.clearing.domain_terms import DEFAULT_DEADLINE_SECONDS
from services.common.auth import TokenRegistry
from services.common.settings import bus_settings, check_seconds, check_store_url, service_tokens
from shared.bus import DEFAULT_BUS, DEFAULT_NAMESPACE, Bus

ADMIN_TOKEN_VAR = "TIMEBANK_ADMIN_TOKEN"  # noqa: S105 (a variable's name, not a secret)
DEFAULT_STORE_URL = "sqlite:///timebank-data/clearing.db"


@dataclass(frozen=True)
class ClearingSettings:
    store_url: str
    tokens: TokenRegistry
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS
    nats_url: str | None = None
    bus: Bus = DEFAULT_BUS

    @classmethod
    def build(
        cls,
        environ: Mapping[str, str],
        *,
        store_url: str | None = None,
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
        nats_url: str | None = None,
        nats_namespace: str = DEFAULT_NAMESPACE,
    ) -> ClearingSettings:
        """Check everything the clearing needs before it starts; tokens come from ``environ``."""
        url = check_store_url(store_url or DEFAULT_STORE_URL)
        tokens = service_tokens(environ, "admin", ADMIN_TOKEN_VAR, "clearing house")
        check_seconds("deadline", deadline_seconds)
        return cls(
            store_url=url,
            tokens=tokens,
            deadline_seconds=deadline_seconds,
            nats_url=nats_url,
            bus=bus_settings(nats_url, nats_namespace),
        )
