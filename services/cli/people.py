"""`timebank invite`: on a running federation, invite a bank's first coordinator (or a member)
to log in, and print the one-time code and where to use it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import app, fail
from services.cli.federation import DataDir, federation_client, reaching


@app.command()
def invite(
    bank: Annotated[str, typer.Argument(help="The bank, as named in the federation's config.")],
    login: Annotated[str, typer.Argument(help="The member's id, or the new coordinator's.")],
    coordinator: Annotated[
        str | None,
        typer.Option(
            "--coordinator",
            metavar="NAME",
            help="Invite a coordinator with this full name (a coordinator does what the "
            "operator does, on the dashboard, under their own name).",
        ),
    ] = None,
    data_dir: DataDir = Path("timebank-data"),
) -> None:
    """Invite someone to log in at a bank with the operator's token: print a code, valid for
    14 days, to hand over on paper or read out. They set a passphrase with it at the bank's
    /ui/welcome page."""
    client = federation_client(data_dir)
    described = client.described["banks"].get(bank)
    if not isinstance(described, dict):
        raise fail(f"{bank} is not a bank of this federation")
    with reaching(data_dir):
        if coordinator is not None:
            body = {"coordinator_id": login, "name": coordinator}
            invited = client.ok(client.bank(bank, "POST", "/v1/coordinators", json=body))
        else:
            invited = client.ok(client.bank(bank, "POST", f"/v1/members/{login}/invitation"))
    typer.echo(f"{invited['role']} {invited['login']} at {bank}: code {invited['code']}")
    typer.echo(
        f"valid until {invited['expires_at']}; set a passphrase at {described['url']}/ui/welcome"
    )
