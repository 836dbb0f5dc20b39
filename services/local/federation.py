"""A whole federation on one machine: NATS, the clearing house and every bank, as processes."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx2 as httpx

from services.ledger.settings import DEFAULT_CHECKPOINT_SECONDS
from services.local.config import FederationConfig
from services.local.nats_config import write_auth_config
from services.local.nats_server import NatsServer, free_ports
from shared.bus import DEFAULT_NAMESPACE, Bus
from shared.nats_users import new_seed, public_nkey
from shared.protocol import CLEARING
from shared.signing import SigningKey

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 30.0


def local_store_url(data_dir: Path, name: str) -> str:
    """Where `timebank up` keeps the clearing house's (``clearing``) or a bank's events."""
    return f"sqlite:///{data_dir.resolve() / (name + '.db')}"


class FederationError(RuntimeError):
    """A part of the local federation failed to start; the message says which and why."""


DESCRIPTION_FILE = "federation.json"


def read_description(data_dir: Path) -> dict[str, Any]:
    """DATA_DIR/federation.json, as `timebank up` and the demo write it (URLs, tokens, stores);
    OSError if it cannot be read, ValueError if it is not a JSON object."""
    path = data_dir / DESCRIPTION_FILE
    described = json.loads(path.read_text())
    if not isinstance(described, dict):
        raise ValueError(f"{path} holds no JSON object")
    return described


@dataclass
class Service:
    name: str
    url: str
    token: str
    # A bank's own token at the clearing house's API (to confirm settlement receipts).
    clearing_token: str | None = None
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = field(default=None, repr=False)


class LocalFederation:
    """Starts NATS (unless given a URL), the clearing house and each bank, on SQLite files in
    ``data_dir``; admits every bank; writes ``federation.json``; stops it all on exit.

    ``nats_namespace`` prefixes every subject and stream, so that federations can share a
    NATS server (``--nats-url``) without seeing each other's messages.
    """

    def __init__(
        self,
        config: FederationConfig,
        data_dir: Path,
        *,
        nats_url: str | None = None,
        nats_namespace: str = DEFAULT_NAMESPACE,
        checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS,
    ) -> None:
        self.config = config
        self.checkpoint_seconds = checkpoint_seconds
        self.data_dir = data_dir.resolve()
        self.nats: NatsServer | None = None
        # The banks' NATS users (id, public nkey) the server was last given.
        self._users_on_nats: frozenset[tuple[str, str]] = frozenset()
        # The clearing house's public key, read from its key file at start.
        self.clearing_public_key = ""
        self.nats_url = nats_url or ""
        self.bus = Bus(nats_namespace)
        self.clearing = Service("clearing", "", secrets.token_urlsafe(24))
        self.banks = {
            bank.id: Service(bank.id, "", secrets.token_urlsafe(24)) for bank in config.banks
        }

    @property
    def description_path(self) -> Path:
        return self.data_dir / DESCRIPTION_FILE

    def seed_path(self, name: str) -> Path:
        """A participant's NATS user (its nkey seed), when this federation runs its own NATS."""
        return self.data_dir / "keys" / f"{name}.nk"

    def key_path(self, name: str) -> Path:
        """A bank's or the clearing house's signing key (made at its first start, kept across
        runs)."""
        return self.data_dir / "keys" / f"{name}.key"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        (self.data_dir / "keys").mkdir(mode=0o700, exist_ok=True)
        for name in (CLEARING, *(bank.id for bank in self.config.banks)):
            if not self.key_path(name).exists():
                SigningKey.generate().save(self.key_path(name))
        self.clearing_public_key = SigningKey.load(self.key_path(CLEARING)).public_key
        try:
            if not self.nats_url:
                self.nats = NatsServer(self.data_dir / "nats", config_file=self._nats_users())
                self.nats.start()
                self.nats_url = self.nats.url
            self._prepare(
                self.clearing,
                ["clearing", "serve", "--store", self._store("clearing")],
                [
                    "--deadline-seconds",
                    str(self.config.clearing.deadline_seconds),
                    "--signing-key",
                    str(self.key_path(CLEARING)),
                ],
                {"TIMEBANK_ADMIN_TOKEN": self.clearing.token},
            )
            for bank in self.config.banks:
                self._prepare(
                    self.banks[bank.id],
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
                    {"TIMEBANK_OPERATOR_TOKEN": self.banks[bank.id].token},
                )
            # A bank is admitted (its key registered) before it starts: what it sends before
            # then could not be authenticated, and would be set aside.
            self._launch(self.clearing)
            self._wait_healthy(self.clearing)
            self._admit_banks()
            for service in self.banks.values():
                self._launch(service)
            for service in self.banks.values():
                self._wait_healthy(service)
            self._write_description()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the banks, then the clearing house, then NATS; each gets time to finish."""
        for service in (*self.banks.values(), self.clearing):
            if service.process is not None and service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in (*self.banks.values(), self.clearing):
            self._reap(service)
        if self.nats is not None:
            self.nats.stop()

    def service(self, name: str) -> Service:
        """The clearing house (``"clearing"``) or a bank, by id."""
        if name == self.clearing.name:
            return self.clearing
        return self.banks[name]

    def stop_service(self, name: str, *, kill: bool = False) -> None:
        """Stop one service: SIGTERM (it finishes what it is doing), or SIGKILL (a crash)."""
        service = self.service(name)
        if service.process is not None and service.process.poll() is None:
            service.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self._reap(service)

    def start_service(self, name: str) -> None:
        """Start a stopped service again, on its store and its port, and wait until it serves."""
        service = self.service(name)
        if service.process is not None and service.process.poll() is None:
            raise FederationError(f"{name} is already running")
        self._reap(service)
        self._launch(service)
        self._wait_healthy(service)

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
                bank.id: {
                    "url": self.banks[bank.id].url,
                    "operator_token": self.banks[bank.id].token,
                    "clearing_token": self.banks[bank.id].clearing_token,
                    "nats_seed": self._seed_named(bank.id),
                    "signing_key": str(self.key_path(bank.id)),
                    "store": self._store(bank.id),
                    "overdraft_limit_minutes": bank.overdraft_limit_minutes,
                }
                for bank in self.config.banks
            },
        }

    def _seed_named(self, name: str) -> str | None:
        return str(self.seed_path(name)) if self.nats is not None else None

    def failed(self) -> str | None:
        """The name of a service whose process has ended, if any."""
        for service in (self.clearing, *self.banks.values()):
            if service.process is not None and service.process.poll() is not None:
                return service.name
        return None

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

    def _store(self, name: str) -> str:
        return local_store_url(self.data_dir, name)

    def _nats_users(self) -> Path:
        """The NATS server's users at start: an nkey for the clearing house and each bank in
        the config (made once, kept in the data dir), each with only its own permissions."""
        for name in (CLEARING, *(bank.id for bank in self.config.banks)):
            if not self.seed_path(name).exists():
                new_seed(self.seed_path(name))
        self._users_on_nats = frozenset(
            (bank.id, public_nkey(self.seed_path(bank.id))) for bank in self.config.banks
        )
        return self._write_nats_users(self._users_on_nats)

    def _write_nats_users(self, banks: Iterable[tuple[str, str]]) -> Path:
        config = self.data_dir / "nats-auth.conf"
        clearing = public_nkey(self.seed_path(CLEARING))
        write_auth_config(config, self.bus, clearing, sorted(banks))
        return config

    def sync_nats_users(self) -> bool:
        """Give the NATS server this federation runs the users the clearing house's directory
        calls for, by a config reload (no restart): a bank admitted with a NATS key gets its
        user, a suspended bank loses it, a reinstated one gets it back. Returns whether
        anything changed."""
        if self.nats is None:
            return False
        response = httpx.get(
            f"{self.clearing.url}/v1/banks",
            headers={"Authorization": f"Bearer {self.clearing.token}"},
            timeout=10,
        )
        response.raise_for_status()
        users = frozenset(
            (bank["bank_id"], self._nats_key_of(bank))
            for bank in response.json()["banks"]
            if bank["status"] == "active" and self._nats_key_of(bank)
        )
        if users == self._users_on_nats:
            return False
        self._write_nats_users(users)
        self.nats.reload()
        before, self._users_on_nats = self._users_on_nats, users
        log.warning(
            "NATS users brought in line with the clearing house's directory: added %s; removed %s",
            ", ".join(sorted(b for b, _ in users - before)) or "none",
            ", ".join(sorted(b for b, _ in before - users)) or "none",
        )
        return True

    def _nats_key_of(self, bank: dict[str, Any]) -> str:
        """The bank's NATS user: the key it was admitted with, or for a bank in the config
        admitted without one (by an older run), the seed kept for it here."""
        key = str(bank.get("nats_key") or "")
        if not key and bank["bank_id"] in self.banks and self.seed_path(bank["bank_id"]).exists():
            key = public_nkey(self.seed_path(bank["bank_id"]))
        return key

    def _prepare(
        self, service: Service, command: list[str], options: list[str], tokens: dict[str, str]
    ) -> None:
        """Choose the service's port and command line; it keeps both across restarts."""
        port = free_ports(HOST, 1)[0]
        service.url = f"http://{HOST}:{port}"
        service.argv = [sys.executable, "-m", "services.cli", *command, *options]
        service.argv += ["--host", HOST, "--port", str(port), "--nats-url", self.nats_url]
        service.argv += ["--nats-namespace", self.bus.namespace]
        if self.nats is not None:
            service.argv += ["--nats-seed", str(self.seed_path(service.name))]
        service.env = {**os.environ, **tokens}

    def _launch(self, service: Service) -> None:
        service.log = (self.data_dir / "logs" / f"{service.name}.log").open("ab")
        service.process = subprocess.Popen(  # noqa: S603 (this interpreter, our arguments, no shell)
            service.argv,
            env=service.env,
            stdout=service.log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            # Its own session: Ctrl-C at the terminal reaches `up`, which stops them in order.
            start_new_session=True,
        )

    def _reap(self, service: Service) -> None:
        """Wait for a signalled process to end (killing it if it takes too long); close its log."""
        if service.process is not None:
            try:
                service.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", service.name)
                service.process.kill()
                service.process.wait(timeout=5)
            service.process = None
        if service.log is not None:
            service.log.close()
            service.log = None

    def _wait_healthy(self, service: Service) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if service.process is not None and service.process.poll() is not None:
                raise FederationError(f"{service.name} exited at start-up: {self._tail(service)}")
            try:
                if httpx.get(f"{service.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise FederationError(f"{service.name} did not start: {self._tail(service)}")
            time.sleep(0.1)

    def _admit_banks(self) -> None:
        headers = {"Authorization": f"Bearer {self.clearing.token}"}
        earlier = self._earlier_clearing_tokens()
        for bank in self.config.banks:
            body = {
                "bank_id": bank.id,
                "name": bank.name,
                "limit_minutes": bank.limit_minutes,
                "public_key": SigningKey.load(self.key_path(bank.id)).public_key,
            }
            if self.nats is not None:
                body["nats_key"] = public_nkey(self.seed_path(bank.id))
            response = httpx.post(f"{self.clearing.url}/v1/banks", json=body, headers=headers)
            if response.status_code == 201:
                self.banks[bank.id].clearing_token = response.json()["clearing_token"]
            elif response.status_code == 409:
                # Admitted by an earlier run on the same data dir: its token was shown then.
                self.banks[bank.id].clearing_token = earlier.get(bank.id)
            else:
                raise FederationError(f"admitting {bank.id} failed: {response.text}")

    def _earlier_clearing_tokens(self) -> dict[str, str]:
        try:
            banks = read_description(self.data_dir)["banks"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        return {
            bank_id: bank["clearing_token"]
            for bank_id, bank in banks.items()
            if isinstance(bank, dict) and bank.get("clearing_token")
        }

    def _write_description(self) -> None:
        path = self.description_path
        path.write_text(json.dumps(self.describe(), indent=2) + "\n")
        path.chmod(0o600)  # it holds the tokens

    def _tail(self, service: Service, lines: int = 15) -> str:
        path = self.data_dir / "logs" / f"{service.name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
