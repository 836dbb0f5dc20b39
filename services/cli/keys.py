"""`timebank keys new`: a bank's Ed25519 key pair."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import app, fail

keys_app = typer.Typer(help="Ed25519 keys that sign each bank's log checkpoints.")
app.add_typer(keys_app, name="keys")


@keys_app.command("new")
def keys_new(
    out: Annotated[
        Path, typer.Option(help="Where to write the private key (PEM, readable by you only).")
    ],
) -> None:
    """Make a bank's key pair: the private key goes to OUT (never overwritten) for
    `timebank ledger serve --signing-key OUT`; the public key is printed, for the bank's
    admission at the clearing house (`"public_key"` in POST /v1/banks)."""
    from shared.signing import SigningKey

    key = SigningKey.generate()
    try:
        key.save(out)
    except FileExistsError:
        raise fail(f"{out} exists; a signing key is never overwritten") from None
    except OSError as e:
        raise fail(f"cannot write {out}: {e.strerror}") from None
    typer.echo(key.public_key)
