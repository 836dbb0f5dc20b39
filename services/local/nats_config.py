"""The NATS server's users for a federation: an nkey per participant (made once, kept in the
data dir, mode 600) and the permissions shared/bus.py gives it, written into the template in
deploy/ for nats-server's -c."""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import nkeys

from shared.bus import Bus

TEMPLATE = "nats-auth.conf.template"


def new_seed(path: Path) -> None:
    """Make a NATS user's nkey seed at ``path``, readable by its owner only; never replace
    one (the server knows its public half)."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(seed)


def public_nkey(seed_path: Path) -> str:
    """The user's public nkey (``U...``), as the server's config names it."""
    key: str = nkeys.from_seed(seed_path.read_bytes().strip()).public_key.decode()
    return key


def _template() -> str:
    # Installed, it is packaged beside this module; in a checkout, it is in deploy/.
    packaged = resources.files("services.local").joinpath(TEMPLATE)
    if packaged.is_file():
        return packaged.read_text()
    return (Path(__file__).resolve().parents[2] / "deploy" / TEMPLATE).read_text()


def auth_config(bus: Bus, clearing_seed: Path, banks: Iterable[tuple[str, Path]]) -> str:
    """The server's authorization: the clearing house's user and each bank's."""
    users = [{"nkey": public_nkey(clearing_seed), "permissions": bus.clearing_permissions()}]
    users += [
        {"nkey": public_nkey(seed), "permissions": bus.bank_permissions(bank_id)}
        for bank_id, seed in banks
    ]
    return string.Template(_template()).substitute(users=json.dumps({"users": users}, indent=2))


def write_auth_config(
    path: Path, bus: Bus, clearing_seed: Path, banks: Iterable[tuple[str, Path]]
) -> None:
    path.write_text(auth_config(bus, clearing_seed, banks))
    path.chmod(0o600)
