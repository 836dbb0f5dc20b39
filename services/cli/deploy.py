"""`timebank deploy init` and `timebank deploy admit`: the federation on docker compose
(docker-compose.yml), its secrets made once into a folder of files, its banks admitted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import app, fail

deploy_app = typer.Typer(
    help="Run the federation on docker compose: NATS as a 3-node JetStream cluster, the "
    "clearing house and three banks, each on its own PostgreSQL.",
    no_args_is_help=True,
)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("init")
def deploy_init(
    out: Annotated[
        Path,
        typer.Option(
            help="The folder to write to (keep it outside the source tree, which goes into "
            "the image's build context)."
        ),
    ],
    nats_hosts: Annotated[
        str,
        typer.Option(
            help="The three NATS nodes' host names, comma-separated: the compose services' "
            "names on one host, or each node's host when they run on three."
        ),
    ] = "nats-1,nats-2,nats-3",
) -> None:
    """Write everything docker-compose.yml reads: each participant's signing key, NATS user
    (nkey), token and database password, the NATS nodes' configs and users, the banks to
    admit, and OUT/compose.env. Secrets are files of mode 600; an existing file is never
    overwritten, so running it again only adds what is missing."""
    from services.local.deployment import DeploymentDir, DeploymentError

    try:
        deployment = DeploymentDir(out, [host.strip() for host in nats_hosts.split(",")])
        result = deployment.init()
    except DeploymentError as e:
        raise fail(str(e)) from None
    typer.echo(f"{deployment.root}: made {len(result.made)} file(s), kept {len(result.kept)}")
    if os.getuid() == 0:
        typer.echo(
            "warning: made as root, so the services will run as root; run this as the user "
            "who runs docker compose"
        )
    typer.echo(
        f"next: docker compose --env-file {deployment.root}/compose.env up -d --build\n"
        "(the banks are admitted at the clearing house by the one-shot service `admit`; "
        f"their clearing tokens are then in {deployment.tokens})"
    )


@deploy_app.command("admit")
def deploy_admit(
    folder: Annotated[Path, typer.Option("--dir", help="The folder `deploy init` wrote.")],
    clearing_url: Annotated[
        str, typer.Option(help="The clearing house's URL.")
    ] = "http://127.0.0.1:8000",
) -> None:
    """Admit the banks of DIR/admissions.json that the clearing house does not know yet, as
    its admin; each new bank's clearing token (shown once) goes to DIR/tokens/. docker
    compose runs this once the clearing house is healthy; running it again changes nothing."""
    from services.local.deployment import DeploymentError, admit

    try:
        for line in admit(folder, clearing_url):
            typer.echo(line)
    except DeploymentError as e:
        raise fail(str(e)) from None
