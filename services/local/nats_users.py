"""The NATS users of a federation that `timebank up` runs its own NATS for: an nkey seed per
participant in DATA_DIR/keys, and the server's users kept in line with the clearing house's
directory (a bank admitted gets its user, a suspended one loses it) by a config reload."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from services.local.nats_cluster import NatsCluster
from services.local.nats_config import write_auth_config
from services.local.nats_server import NatsServer
from shared.bus import Bus
from shared.nats_users import new_seed, public_nkey
from shared.protocol import CLEARING

log = logging.getLogger(__name__)


class NatsUsers:
    def __init__(self, data_dir: Path, bus: Bus) -> None:
        self.data_dir = data_dir
        self.bus = bus
        # The banks' users (id, public nkey) the server was last given.
        self.on_server: frozenset[tuple[str, str]] = frozenset()

    def seed_path(self, name: str) -> Path:
        """A participant's NATS user (its nkey seed)."""
        return self.data_dir / "keys" / f"{name}.nk"

    def at_start(self, bank_ids: Iterable[str]) -> Path:
        """The server's users at start: the clearing house's and each bank's (seeds made once,
        kept), each with only its own permissions. Returns the config file."""
        bank_ids = list(bank_ids)
        for name in (CLEARING, *bank_ids):
            if not self.seed_path(name).exists():
                new_seed(self.seed_path(name))
        self.on_server = frozenset(
            (bank_id, public_nkey(self.seed_path(bank_id))) for bank_id in bank_ids
        )
        return self._write(self.on_server)

    def sync(
        self,
        nats: NatsServer | NatsCluster,
        listed: Iterable[dict[str, Any]],
        local: Collection[str],
    ) -> bool:
        """Give the server the users the clearing house's directory (``listed``, as GET
        /v1/banks answers) calls for; returns whether anything changed. ``local``: the banks of
        this data dir, whose seeds are here (one admitted by an older run without a NATS key
        has its user from its seed)."""
        users = frozenset(
            (bank["bank_id"], key)
            for bank in listed
            if bank["status"] == "active" and (key := self._key_of(bank, local))
        )
        if users == self.on_server:
            return False
        self._write(users)
        nats.reload()
        before, self.on_server = self.on_server, users
        log.warning(
            "NATS users brought in line with the clearing house's directory: added %s; removed %s",
            ", ".join(sorted(b for b, _ in users - before)) or "none",
            ", ".join(sorted(b for b, _ in before - users)) or "none",
        )
        return True

    def _key_of(self, bank: dict[str, Any], local: Collection[str]) -> str:
        key = str(bank.get("nats_key") or "")
        seed = self.seed_path(bank["bank_id"])
        if not key and bank["bank_id"] in local and seed.exists():
            key = public_nkey(seed)
        return key

    def _write(self, banks: Iterable[tuple[str, str]]) -> Path:
        config = self.data_dir / "nats-auth.conf"
        clearing = public_nkey(self.seed_path(CLEARING))
        write_auth_config(config, self.bus, clearing, sorted(banks))
        return config
