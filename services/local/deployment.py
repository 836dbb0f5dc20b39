"""What docker-compose.yml reads, made by `timebank deploy init` into one folder: every key,
NATS user, token and database password as a file of its own (mode 600, never overwritten),
the NATS nodes' configs, the banks to admit, and compose.env (the paths and public values the
compose file interpolates; no secret). Then `timebank deploy admit` admits the banks."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import nkeys

from services.local.config import BankConfig
from services.local.nats_cluster import CLUSTER_SIZE, ClusterNode, node_config
from services.local.nats_config import auth_config
from shared.bus import DEFAULT_BUS
from shared.nats_users import new_seed, public_nkey
from shared.protocol import CLEARING
from shared.signing import SigningKey, SigningKeyError

# The banks docker-compose.yml runs (its services bank-<id>); their names and limits are
# admitted from admissions.json, which may be edited before the first start.
BANKS = (
    BankConfig(id="rushey-green", name="Rushey Green Time Bank (GP surgery)", limit_minutes=6000),
    BankConfig(id="lewisham-college", name="Lewisham College Time Bank", limit_minutes=3000),
    BankConfig(id="deptford-community", name="Deptford Community Time Bank", limit_minutes=3000),
)
ENV_FILE = "compose.env"
ADMISSIONS_FILE = "admissions.json"
DEFAULT_NATS_HOSTS = tuple(f"nats-{i + 1}" for i in range(CLUSTER_SIZE))
NATS_CLIENT_PORT, NATS_CLUSTER_PORT, NATS_MONITOR_PORT = 4222, 6222, 8222
HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")
# The values compose.env may hold unquoted; others are single-quoted (taken literally).
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./:@+=,-]*\Z")


class DeploymentError(RuntimeError):
    """The deployment folder cannot be made or used; the message says why, in one line."""


@dataclass
class Made:
    """The files written, and those already there (kept as they were)."""

    made: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def check_nats_hosts(hosts: list[str]) -> list[str]:
    """The three NATS nodes' host names: compose's service names on one host, or each
    node's own host when they run on three."""
    if len(hosts) != CLUSTER_SIZE or not all(HOSTNAME.match(host) for host in hosts):
        raise DeploymentError(
            f"--nats-hosts: give {CLUSTER_SIZE} host names, comma-separated "
            f"(e.g. {','.join(DEFAULT_NATS_HOSTS)})"
        )
    return hosts


class DeploymentDir:
    """The folder docker-compose.yml reads (``TIMEBANK_DEPLOY_DIR``)."""

    def __init__(self, root: Path, nats_hosts: list[str] | None = None) -> None:
        self.root = root.resolve()
        self.secrets = self.root / "secrets"
        self.nats = self.root / "nats"
        # Where `deploy admit` writes each bank's clearing token (shown once at admission).
        self.tokens = self.root / "tokens"
        self.nats_hosts = check_nats_hosts(nats_hosts or list(DEFAULT_NATS_HOSTS))
        self.result = Made()

    def secret(self, name: str) -> Path:
        return self.secrets / name

    @property
    def nats_url(self) -> str:
        return ",".join(f"nats://{host}:{NATS_CLIENT_PORT}" for host in self.nats_hosts)

    def init(self) -> Made:
        """Make whatever is missing, from what is there: a file never changes once made."""
        self.result = Made()
        try:
            for folder in (self.root, self.secrets, self.nats, self.tokens):
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            for name in (CLEARING, *(bank.id for bank in BANKS)):
                self._participant(name)
            self._nats_configs()
            self._admissions()
            self._env_file()
        except OSError as e:
            raise DeploymentError(
                f"cannot write in {self.root}: {e.strerror} ({e.filename})"
            ) from None
        except (SigningKeyError, nkeys.NkeysError) as e:
            # A key file kept from before that is not one: it is never replaced, so say so.
            raise DeploymentError(f"{self.secrets} holds a key that cannot be used: {e}") from None
        return self.result

    def _participant(self, name: str) -> None:
        """A participant's signing key, NATS user, token, and database password (with the
        libpq password file its service reads it from: PGPASSFILE)."""
        key = self.secret(f"{name}.key")
        self._made_by(key, lambda: SigningKey.generate().save(key))
        seed = self.secret(f"{name}.nk")
        self._made_by(seed, lambda: new_seed(seed))
        role = "admin" if name == CLEARING else "operator"
        self._write(self.secret(f"{name}.{role}-token"), secrets.token_urlsafe(32))
        password = self._write(self.secret(f"{name}.db-password"), secrets.token_urlsafe(24))
        # Any host, port, database and user: the file is given to this one service only.
        self._write(self.secret(f"{name}.pgpass"), f"*:*:*:*:{password}\n")

    def _nats_configs(self) -> None:
        route_password = self._write(self.secret("nats-route-password"), secrets.token_urlsafe(24))
        banks = [(bank.id, public_nkey(self.secret(f"{bank.id}.nk"))) for bank in BANKS]
        users = auth_config(DEFAULT_BUS, public_nkey(self.secret(f"{CLEARING}.nk")), banks)
        self._write(self.nats / "nats-auth.conf", users)
        nodes = [
            ClusterNode(
                f"nats-{i + 1}", host, NATS_CLIENT_PORT, NATS_CLUSTER_PORT, NATS_MONITOR_PORT
            )
            for i, host in enumerate(self.nats_hosts)
        ]
        for node in nodes:
            config = node_config(
                node,
                nodes,
                store_dir="/data",
                route_password=route_password,
                listen_host="0.0.0.0",  # noqa: S104 - inside its container
                monitor_host="127.0.0.1",
                users_file="nats-auth.conf",
            )
            self._write(self.nats / f"{node.name}.conf", config)

    def _admissions(self) -> None:
        banks = [
            {
                "bank_id": bank.id,
                "name": bank.name,
                "limit_minutes": bank.limit_minutes,
                "public_key": SigningKey.load(self.secret(f"{bank.id}.key")).public_key,
                "nats_key": public_nkey(self.secret(f"{bank.id}.nk")),
            }
            for bank in BANKS
        ]
        self._write(self.root / ADMISSIONS_FILE, json.dumps({"banks": banks}, indent=2) + "\n")

    def _env_file(self) -> None:
        clearing_key = SigningKey.load(self.secret(f"{CLEARING}.key")).public_key
        values = {
            "TIMEBANK_DEPLOY_DIR": str(self.root),
            # The services run as the owner of these files, which only their owner may read.
            "TIMEBANK_UID": str(os.getuid()),
            "TIMEBANK_GID": str(os.getgid()),
            "TIMEBANK_NATS_URL": self.nats_url,
            "TIMEBANK_CLEARING_PUBLIC_KEY": clearing_key,
            # Where the published ports listen: this host only, until set to its address.
            "TIMEBANK_PUBLISH_ADDRESS": "127.0.0.1",
        }
        lines = ["# Made by `timebank deploy init`: what docker-compose.yml interpolates."]
        lines += [f"{name}={env_value(value)}" for name, value in values.items()]
        self._write(self.root / ENV_FILE, "\n".join(lines) + "\n")

    def _write(self, path: Path, text: str) -> str:
        """Write a new file, readable by its owner only; an existing one is kept. Returns
        the file's text, as it is now."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            self.result.kept.append(path)
            return path.read_text().strip()
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self.result.made.append(path)
        return text.strip()

    def _made_by(self, path: Path, make: Callable[[], object]) -> None:
        if path.exists():
            self.result.kept.append(path)
            return
        make()
        self.result.made.append(path)


def env_value(value: str) -> str:
    if PLAIN_VALUE.match(value):
        return value
    if "'" in value or "\n" in value:
        raise DeploymentError(f"{value!r} cannot be written to {ENV_FILE}")
    return f"'{value}'"


def admit(deployment: Path, clearing_url: str) -> list[str]:
    """Admit every bank of ``admissions.json`` not yet admitted at the clearing house (as
    its admin); each new bank's clearing token goes to ``tokens/<bank>.clearing-token``.
    Returns what was done, a line per bank."""
    root = deployment.resolve()
    try:
        admin_token = (root / "secrets" / f"{CLEARING}.admin-token").read_text().strip()
        banks = json.loads((root / ADMISSIONS_FILE).read_text())["banks"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DeploymentError(
            f"{root} is not a deployment folder (`timebank deploy init --out {root}`): {e}"
        ) from None
    if not isinstance(banks, list) or not all(
        isinstance(bank, dict) and isinstance(bank.get("bank_id"), str) for bank in banks
    ):
        raise DeploymentError(
            f"{root / ADMISSIONS_FILE}: each bank must be an object with a bank_id"
        )
    headers = {"Authorization": f"Bearer {admin_token}"}
    url = clearing_url.rstrip("/")
    with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
        listed = {bank["bank_id"] for bank in _answer(http, "GET", "/v1/banks")["banks"]}
        said = []
        for bank in banks:
            bank_id = bank.get("bank_id")
            if bank_id in listed:
                said.append(f"{bank_id}: already admitted")
                continue
            token_file = root / "tokens" / f"{bank_id}.clearing-token"
            if token_file.exists():
                raise DeploymentError(
                    f"{token_file} exists but {bank_id} is not admitted at {url}: is this "
                    "the clearing house of this deployment?"
                )
            admitted = _answer(http, "POST", "/v1/banks", json=bank)
            try:
                fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(admitted["clearing_token"] + "\n")
            except OSError as e:
                raise DeploymentError(
                    f"{bank_id} is admitted but its clearing token could not be kept in "
                    f"{token_file} ({e.strerror}): issue it a new one with POST "
                    f"{url}/v1/banks/{bank_id}/token"
                ) from None
            said.append(f"{bank_id}: admitted; its clearing token is in {token_file}")
    return said


def _answer(http: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    where = f"{method} {http.base_url}{path}"
    try:
        response = http.request(method, path, **kwargs)
    except httpx.HTTPError as e:
        raise DeploymentError(f"{where}: {e}") from None
    if not response.is_success:
        raise DeploymentError(f"{where}: {response.status_code} {response.text[:300]}")
    try:
        return response.json()
    except ValueError:
        raise DeploymentError(f"{where}: the answer is not JSON") from None
