"""`timebank keys new` and `timebank keys nats`: a participant's Ed25519 signing key, and its
NATS user's nkey."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import app, fail

keys_app = typer.Typer(
    help="Ed25519 keys that sign what each participant sends on the bus, and each bank's "
    "log checkpoints."
)
app.add_typer(keys_app, name="keys")


@keys_app.command("new")
def keys_new(
    out: Annotated[
        Path, typer.Option(help="Where to write the private key (PEM, readable by you only).")
    ],
) -> None:
    """Make a key pair: the private key goes to OUT (never overwritten) for `--signing-key
    OUT` of `timebank ledger serve` or `timebank clearing serve`; the public key is printed:
    a bank's for its admission (`"public_key"` in POST /v1/banks), the clearing house's for
    each bank's `--clearing-key`."""
    from shared.signing import SigningKey

    key = SigningKey.generate()
    try:
        key.save(out)
    except FileExistsError:
        raise fail(f"{out} exists; a signing key is never overwritten") from None
    except OSError as e:
        raise fail(f"cannot write {out}: {e.strerror}") from None
    typer.echo(key.public_key)


@keys_app.command("nats")
def keys_nats(
    out: Annotated[
        Path, typer.Option(help="Where to write the NATS user's nkey seed (readable by you only).")
    ],
) -> None:
    """Make a NATS user (an nkey): the seed goes to OUT (never overwritten) for `--nats-seed
    OUT` of `timebank ledger serve` or `timebank clearing serve`; its public nkey is printed,
    for the bank's admission (`"nats_key"` in POST /v1/banks), which gives that user the
    bank's permissions on the federation's NATS server."""
    from shared.nats_users import new_seed

    try:
        typer.echo(new_seed(out))
    except FileExistsError:
        raise fail(f"{out} exists; a NATS seed is never overwritten") from None
    except OSError as e:
        raise fail(f"cannot write {out}: {e.strerror}") from None
