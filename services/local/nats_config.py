"""The NATS server's users for a federation: an nkey per participant (made once, kept in the
data dir, mode 600) and the permissions shared/bus.py gives it, written into the template in
deploy/ for nats-server's -c."""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from shared.bus import Bus

TEMPLATE = "nats-auth.conf.template"


def deploy_template(name: str = TEMPLATE) -> str:
    """A template of deploy/ (installed, it is packaged beside this module)."""
    packaged = resources.files("services.local").joinpath(name)
    if packaged.is_file():
        return packaged.read_text()
    return (Path(__file__).resolve().parents[2] / "deploy" / name).read_text()


def auth_config(bus: Bus, clearing_nkey: str, banks: Iterable[tuple[str, str]]) -> str:
    """The server's authorization: the clearing house's user and each bank's, each named by
    its public nkey."""
    users = [{"nkey": clearing_nkey, "permissions": bus.clearing_permissions()}]
    users += [
        {"nkey": nkey, "permissions": bus.bank_permissions(bank_id)} for bank_id, nkey in banks
    ]
    return string.Template(deploy_template()).substitute(
        users=json.dumps({"users": users}, indent=2)
    )


def write_auth_config(
    path: Path, bus: Bus, clearing_nkey: str, banks: Iterable[tuple[str, str]]
) -> None:
    path.write_text(auth_config(bus, clearing_nkey, banks))
    path.chmod(0o600)
