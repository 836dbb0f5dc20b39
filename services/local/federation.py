"""A whole federation on one machine: NATS, the clearing house and every bank, as processes,
supervised (a crashed one is started again), on a data dir that one run holds at a time."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from services.ledger.settings import DEFAULT_CHECKPOINT_SECONDS
from services.local.config import BankConfig, FederationConfig
from services.local.datadir import DESCRIPTION_FILE as DESCRIPTION_FILE
from services.local.datadir import (
    LOCK_FILE,
    StoreTemplateError,
    earlier_description,
    port_of,
    store_from_template,
    write_description,
)
from services.local.datadir import local_store_url as local_store_url
from services.local.datadir import read_description as read_description
from services.local.held_file import HeldElsewhere, HeldFile
from services.local.joining import JoinedBank, joined_banks
from services.local.local_nats import local_nats, restart_stopped
from services.local.nats_cluster import NatsCluster
from services.local.nats_server import NatsServer, NatsServerError, free_ports
from services.local.nats_users import NatsUsers
from services.local.processes import FederationError as FederationError
from services.local.processes import Service, wait_for_leftovers
from services.local.reconcile import ClearingAdmin, reconcile_clearing
from shared.bus import DEFAULT_NAMESPACE, Bus
from shared.protocol import CLEARING
from shared.signing import SigningKey

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


class LocalFederation:
    """Starts NATS (unless given a URL), the clearing house and each bank, on SQLite files in
    ``data_dir``; admits every bank and applies the config's changes at the clearing house;
    writes ``federation.json``; stops it all on exit. ``supervise()``, called every so often,
    starts again whatever crashed and starts the banks that joined meanwhile.

    Ports and tokens are those of the last run on the same data dir (or the config's ports), so
    what was written down stays true. ``nats_namespace`` prefixes every subject and stream, so
    federations can share a NATS server (``--nats-url``) without seeing each other's messages.
    """

    def __init__(
        self,
        config: FederationConfig,
        data_dir: Path,
        *,
        nats_url: str | None = None,
        nats_namespace: str = DEFAULT_NAMESPACE,
        checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS,
        store_template: str | None = None,
        log_format: str = "text",
        nats_cluster: int = 1,
    ) -> None:
        self.config = config
        self.log_format = log_format
        self.store_template = store_template or config.store_template
        self.checkpoint_seconds = checkpoint_seconds
        self.data_dir = data_dir.resolve()
        # The NATS this federation runs itself (none when given a URL): one server, or a
        # cluster of ``nats_cluster`` nodes with every stream on three of them.
        self.nats: NatsServer | NatsCluster | None = None
        self.nats_cluster = nats_cluster
        # The clearing house's public key, read from its key file at start.
        self.clearing_public_key = ""
        self.nats_url = nats_url or ""
        self.bus = Bus(nats_namespace)
        self.users = NatsUsers(self.data_dir, self.bus)
        self.clearing = Service("clearing", "", "")
        self.bank_configs: dict[str, BankConfig] = {bank.id: bank for bank in config.banks}
        self.joined: dict[str, JoinedBank] = {}
        self.banks = {bank.id: Service(bank.id, "", "") for bank in config.banks}
        # What starting found and did at the clearing house, for the operator to read.
        self.notes: list[str] = []
        # One run per data dir: held while it runs.
        self._lock = HeldFile(self.data_dir / LOCK_FILE)
        self._earlier: dict[str, Any] = {}

    @property
    def description_path(self) -> Path:
        return self.data_dir / DESCRIPTION_FILE

    def seed_path(self, name: str) -> Path:
        """A participant's NATS user (its nkey seed), when this federation runs its own NATS."""
        return self.users.seed_path(name)

    def key_path(self, name: str) -> Path:
        """A bank's or the clearing house's signing key (made at its first start, kept across
        runs)."""
        return self.data_dir / "keys" / f"{name}.key"

    def start(self) -> None:
        try:
            self._lock.acquire("")
        except HeldElsewhere as e:
            raise FederationError(
                f"{self.data_dir} is in use by another `timebank up` ({e}); stop it first, "
                "or give this one another --data-dir"
            ) from None
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        # An earlier `up` killed just now: its children are still stopping.
        wait_for_leftovers(self.data_dir)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        (self.data_dir / "keys").mkdir(mode=0o700, exist_ok=True)
        self._earlier = earlier_description(self.data_dir)
        for joined in joined_banks(self.data_dir):
            self._add_joined(joined)
        for name in (CLEARING, *self.bank_configs):
            if not self.key_path(name).exists():
                SigningKey.generate().save(self.key_path(name))
        self.clearing_public_key = SigningKey.load(self.key_path(CLEARING)).public_key
        if not self.nats_url:
            # The port of the NATS an earlier run ran here (not of one it was given).
            ran_nats = (self._earlier.get("clearing") or {}).get("nats_seed")
            earlier = port_of(self._earlier.get("nats_url")) if ran_nats else None
            port = self.config.nats_port or earlier or 0
            config_file = self.users.at_start(self.bank_configs)
            self.nats = local_nats(self.data_dir / "nats", config_file, port, self.nats_cluster)
            self.nats.start()
            self.nats_url = self.nats.url
        self._prepare_clearing()
        for bank_id in self.bank_configs:
            if bank_id in self.banks:
                self._prepare_bank(bank_id)
        # A bank is admitted (its key registered) before it starts: what it sends before
        # then could not be authenticated, and would be set aside.
        self.clearing.launch()
        self.clearing.wait_healthy()
        self.notes = reconcile_clearing(self, self._earlier_clearing_tokens())
        for bank_id in self.banks:
            self._launch_bank(bank_id)
        for service in self.banks.values():
            if service.process is not None:
                service.wait_healthy()
        self._write_description()

    def stop(self) -> None:
        """Stop the banks, then the clearing house, then NATS; each gets time to finish."""
        for service in (*self.banks.values(), self.clearing):
            service.restart_at = None
            service.signal(signal.SIGTERM)
        for service in (*self.banks.values(), self.clearing):
            service.reap()
        if self.nats is not None:
            self.nats.stop()
        self._lock.release()

    def supervise(self) -> list[str]:
        """One turn of supervision: NATS started again if it died; a service that exited is
        started again after its backoff; banks that joined since are started. Returns what
        happened, a line each, for the operator."""
        said: list[str] = []
        if self.nats is not None and not self.nats.running:
            try:
                said.append(restart_stopped(self.nats))
            except NatsServerError as e:
                said.append(f"NATS had stopped and failed to start again: {e}")
        now = time.monotonic()
        for service in (self.clearing, *self.banks.values()):
            if not service.argv:
                continue  # a bank run elsewhere
            if service.process is not None and service.process.poll() is not None:
                delay = service.crashed(now)
                said.append(f"{service.name} exited; starting it again in {delay:.0f} s")
            elif service.process is None and (due := service.restart_at) is not None and due <= now:
                service.restart_at = None
                service.launch()
                said.append(f"{service.name} started again at {service.url}")
        return said + self._start_joined()

    def service(self, name: str) -> Service:
        """The clearing house (``"clearing"``) or a bank, by id."""
        if name == self.clearing.name:
            return self.clearing
        return self.banks[name]

    def stop_service(self, name: str, *, kill: bool = False) -> None:
        """Stop one service: SIGTERM (it finishes what it is doing), or SIGKILL (a crash)."""
        service = self.service(name)
        service.signal(signal.SIGKILL if kill else signal.SIGTERM)
        service.reap()

    def start_service(self, name: str) -> None:
        """Start a stopped service again, on its store and its port, and wait until it serves."""
        service = self.service(name)
        if service.running:
            raise FederationError(f"{name} is already running")
        service.reap()
        service.launch()
        service.wait_healthy()

    def describe(self) -> dict[str, Any]:
        return {
            "nats_url": self.nats_url,
            "nats_namespace": self.bus.namespace,
            "clearing": {
                "url": self.clearing.url,
                "admin_token": self.clearing.token,
                "store": self._store("clearing"),
                "public_key": self.clearing_public_key,
                "nats_seed": self._seed_named(CLEARING),
            },
            "banks": {
                bank_id: {
                    "url": self.banks[bank_id].url,
                    "operator_token": self.banks[bank_id].token,
                    "clearing_token": self.banks[bank_id].clearing_token,
                    "nats_seed": self._seed_named(bank_id),
                    "signing_key": str(self.key_path(bank_id)),
                    "store": self._store(bank_id) if self.banks[bank_id].argv else None,
                    "overdraft_limit_minutes": bank.overdraft_limit_minutes,
                }
                for bank_id, bank in self.bank_configs.items()
                if bank_id in self.banks
            },
        }

    def _seed_named(self, name: str) -> str | None:
        return str(self.seed_path(name)) if self.nats is not None else None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def clearing_admin(self) -> ClearingAdmin:
        """The clearing house's API, as its admin."""
        return ClearingAdmin(self.clearing.url, self.clearing.token)

    def _store(self, name: str) -> str:
        if not self.store_template:
            return local_store_url(self.data_dir, name)
        try:
            return store_from_template(self.store_template, name)
        except StoreTemplateError as e:
            raise FederationError(str(e)) from None

    def sync_nats_users(self) -> bool:
        """Give the NATS server this federation runs the users the clearing house's directory
        calls for, by a config reload (no restart): a bank admitted with a NATS key gets its
        user, a suspended bank loses it, a reinstated one gets it back. Returns whether
        anything changed."""
        if self.nats is None:
            return False
        listed = self.clearing_admin().get("/v1/banks")["banks"]
        return self.users.sync(self.nats, listed, self.banks)

    # Services: their command lines, ports and tokens.

    def _prepare_clearing(self) -> None:
        earlier = self._earlier.get("clearing") or {}
        self.clearing.token = earlier.get("admin_token") or secrets.token_urlsafe(24)
        self._prepare(
            self.clearing,
            self.config.clearing.port or port_of(earlier.get("url")),
            ["clearing", "serve", "--store", self._store("clearing")],
            [
                "--deadline-seconds",
                str(self.config.clearing.deadline_seconds),
                # Every stream on three nodes of a cluster it runs: one may fail. On a NATS it
                # was given, the clearing house's environment says (TIMEBANK_STREAM_REPLICAS).
                *(["--stream-replicas", str(min(self.nats_cluster, 3))] if self.nats else []),
                "--signing-key",
                str(self.key_path(CLEARING)),
            ],
            {"TIMEBANK_ADMIN_TOKEN": self.clearing.token},
        )

    def _prepare_bank(self, bank_id: str) -> None:
        bank, service = self.bank_configs[bank_id], self.banks[bank_id]
        earlier = (self._earlier.get("banks") or {}).get(bank_id) or {}
        joined = self.joined.get(bank_id)
        service.token = (
            (joined.operator_token if joined else "")
            or earlier.get("operator_token")
            or secrets.token_urlsafe(24)
        )
        if joined is not None and joined.url:  # run on another host: only described here
            service.url, service.clearing_token = joined.url, joined.clearing_token
            return
        self._prepare(
            service,
            bank.port or port_of(earlier.get("url")),
            ["ledger", "serve", "--bank", bank.id, "--store", self._store(bank.id)],
            [
                "--overdraft-limit-minutes",
                str(bank.overdraft_limit_minutes),
                "--signing-key",
                str(self.key_path(bank.id)),
                "--checkpoint-seconds",
                str(self.checkpoint_seconds),
                "--clearing-key",
                self.clearing_public_key,
            ],
            {"TIMEBANK_OPERATOR_TOKEN": service.token},
        )

    def _prepare(
        self,
        service: Service,
        port: int | None,
        command: list[str],
        options: list[str],
        tokens: dict[str, str],
    ) -> None:
        """The service's port and command line; it keeps both across restarts."""
        port = port or free_ports(HOST, 1)[0]
        service.url = f"http://{HOST}:{port}"
        service.argv = [sys.executable, "-m", "services.cli", *command, *options]
        service.argv += ["--host", HOST, "--port", str(port), "--nats-url", self.nats_url]
        service.argv += ["--nats-namespace", self.bus.namespace, "--log-format", self.log_format]
        if self.nats is not None:
            service.argv += ["--nats-seed", str(self.seed_path(service.name))]
        service.env = {**os.environ, **tokens}
        service.cwd = self.data_dir
        service.log_path = self.data_dir / "logs" / f"{service.name}.log"

    def _launch_bank(self, bank_id: str) -> None:
        service = self.banks[bank_id]
        if service.argv:
            service.launch()

    # Banks that joined a running federation (`timebank join`).

    def _add_joined(self, joined: JoinedBank) -> None:
        self.joined[joined.id] = joined
        self.bank_configs[joined.id] = joined.config()
        self.banks[joined.id] = Service(joined.id, "", "", clearing_token=joined.clearing_token)

    def _start_joined(self) -> list[str]:
        """Start the banks `timebank join` admitted since the last turn (or describe the ones
        run on another host), and write the description again."""
        new = [j for j in joined_banks(self.data_dir) if j.id not in self.banks]
        if not new:
            return []
        said = []
        self.sync_nats_users()
        for joined in new:
            self._add_joined(joined)
            self._prepare_bank(joined.id)
            if self.banks[joined.id].argv:
                self._launch_bank(joined.id)
                self.banks[joined.id].wait_healthy()
                said.append(f"{joined.id} joined; serving at {self.banks[joined.id].url}")
            else:
                said.append(f"{joined.id} joined; run on another host at {joined.url}")
        self._write_description()
        return said

    def _earlier_clearing_tokens(self) -> dict[str, str]:
        banks = self._earlier.get("banks") or {}
        tokens = {
            bank_id: bank["clearing_token"]
            for bank_id, bank in banks.items()
            if isinstance(bank, dict) and bank.get("clearing_token")
        }
        return tokens | {j.id: j.clearing_token for j in self.joined.values()}

    def _write_description(self) -> None:
        write_description(self.data_dir, self.describe())
