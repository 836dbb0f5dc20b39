"""A bank joining a running federation (`timebank join`): its keys and NATS user are made in
the data dir, it is admitted at the clearing house, and it is written down in
DATA_DIR/joined/, where the running `timebank up` finds it on its next turn and starts it (or,
for a bank run on another host, only describes it)."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import msgspec

from services.local.config import BankConfig
from services.local.datadir import read_description
from shared.identifiers import InvalidBankId, check_bank_id
from shared.nats_users import new_seed, public_nkey
from shared.signing import SigningKey

JOINED_DIR = "joined"
JOIN_WAIT_SECONDS = 60.0


class JoinError(RuntimeError):
    """The bank could not join; the message says why, in one line."""


@dataclass(frozen=True)
class JoinedBank:
    id: str
    name: str
    limit_minutes: int
    overdraft_limit_minutes: int
    operator_token: str
    clearing_token: str
    # Where it serves, when it runs on another host; empty: `up` runs it here.
    url: str = ""

    def config(self) -> BankConfig:
        return BankConfig(
            id=self.id,
            name=self.name,
            limit_minutes=self.limit_minutes,
            overdraft_limit_minutes=self.overdraft_limit_minutes,
        )


def joined_banks(data_dir: Path) -> list[JoinedBank]:
    """The banks that joined the federation on this data dir, in the order they joined."""
    folder = data_dir / JOINED_DIR
    if not folder.is_dir():
        return []
    banks = []
    for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
        try:
            banks.append(msgspec.json.decode(path.read_bytes(), type=JoinedBank))
        except (OSError, msgspec.DecodeError):
            continue  # being written: read on a later turn
    return banks


def join_bank(
    data_dir: Path,
    bank_id: str,
    name: str,
    limit_minutes: int,
    overdraft_limit_minutes: int,
    url: str = "",
) -> dict[str, Any]:
    """Admit the bank at the running federation's clearing house and hand it to `up`; wait
    until `up` describes it (and, for a bank run here, serves it). Returns its description."""
    try:
        check_bank_id(bank_id)
    except InvalidBankId as e:
        raise JoinError(str(e)) from None
    try:
        described = read_description(data_dir)
    except (OSError, ValueError) as e:
        raise JoinError(f"no running federation described in {data_dir}: {e}") from None
    if bank_id in described.get("banks", {}):
        raise JoinError(f"{bank_id} is already a bank of this federation")
    keys = data_dir / "keys"
    signing_key = keys / f"{bank_id}.key"
    if not signing_key.exists():
        SigningKey.generate().save(signing_key)
    body: dict[str, Any] = {
        "bank_id": bank_id,
        "name": name,
        "limit_minutes": limit_minutes,
        "public_key": SigningKey.load(signing_key).public_key,
    }
    if described["clearing"].get("nats_seed"):  # `up` runs NATS: the bank needs a user
        seed = keys / f"{bank_id}.nk"
        if not seed.exists():
            new_seed(seed)
        body["nats_key"] = public_nkey(seed)
    clearing = described["clearing"]
    try:
        response = httpx.post(
            f"{clearing['url']}/v1/banks",
            json=body,
            headers={"Authorization": f"Bearer {clearing['admin_token']}"},
            timeout=10,
        )
    except httpx.HTTPError as e:
        raise JoinError(f"cannot reach the clearing house at {clearing['url']}: {e}") from None
    if response.status_code != 201:
        raise JoinError(f"the clearing house refused {bank_id}: {_problem(response)}")
    joined = JoinedBank(
        bank_id,
        name,
        limit_minutes,
        overdraft_limit_minutes,
        secrets.token_urlsafe(24),
        response.json()["clearing_token"],
        url,
    )
    _write(data_dir, joined)
    return _wait_until_described(data_dir, bank_id)


def _write(data_dir: Path, joined: JoinedBank) -> None:
    folder = data_dir / JOINED_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    partial = folder / f"{joined.id}.json.partial"
    partial.write_text(json.dumps(asdict(joined), indent=2))
    partial.chmod(0o600)  # it holds the bank's tokens
    partial.replace(folder / f"{joined.id}.json")


def _wait_until_described(data_dir: Path, bank_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOIN_WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            bank = read_description(data_dir)["banks"].get(bank_id)
        except (OSError, ValueError, KeyError):
            bank = None
        if isinstance(bank, dict):
            return bank
        time.sleep(0.2)
    raise JoinError(
        f"{bank_id} was admitted, but `timebank up` on {data_dir} has not started it within "
        f"{JOIN_WAIT_SECONDS:.0f} s: is it running? It will start {bank_id} when it next runs"
    )


def _problem(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail") or response.text)
    except ValueError:
        return response.text[:200]
