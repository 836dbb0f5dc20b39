"""`timebank join` (a new bank joins a running federation) and `timebank backup`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import app, configure_logging, fail


@app.command("join")
def join(
    bank: Annotated[str, typer.Option(help="The new bank's id (lower case, digits, '-').")],
    name: Annotated[str, typer.Option(help="Its name, as members and partners know it.")],
    limit_minutes: Annotated[
        int, typer.Option(min=0, help="How far the bank may owe the rest of the federation.")
    ],
    data_dir: Annotated[
        Path, typer.Option(help="The running federation's data dir (`timebank up`).")
    ] = Path("timebank-data"),
    overdraft_limit_minutes: Annotated[
        int, typer.Option(min=0, help="The bank's default overdraft per member.")
    ] = 600,
    url: Annotated[
        str | None,
        typer.Option(
            help="The bank runs on another host and serves at this URL: it is admitted and "
            "described, and the command that runs it there is printed. Default: `up` runs it."
        ),
    ] = None,
) -> None:
    """Admit a new bank to the federation that `timebank up` runs on DATA_DIR: make its keys
    and NATS user, admit it at the clearing house, and have `up` start it (or print how to run
    it elsewhere). It appears in DATA_DIR/federation.json."""
    from services.local.joining import JoinError, join_bank

    configure_logging("warning")
    if url is not None:
        check_url(url)
    try:
        described = join_bank(
            data_dir, bank, name, limit_minutes, overdraft_limit_minutes, url or ""
        )
    except JoinError as e:
        raise fail(str(e)) from None
    except OSError as e:  # the keys folder, or the joined one, cannot be written
        raise fail(
            f"cannot write {e.filename or data_dir}: {e.strerror}; is {data_dir} the data dir "
            "of a running `timebank up`?"
        ) from None
    except (KeyError, TypeError, AttributeError) as e:
        raise fail(not_described(data_dir, e)) from None
    typer.echo(f"{bank}: joined; operator token: {described['operator_token']}")
    if url is None:
        typer.echo(f"{bank}: serving at {described['url']} (run by `timebank up`)")
        return
    token_file = data_dir / "keys" / f"{bank}.token"
    token_file.write_text(described["operator_token"] + "\n")
    token_file.chmod(0o600)
    typer.echo(
        f"Run it on its host, with {bank}.key, {bank}.nk and {bank}.token from "
        f"{data_dir / 'keys'} copied there:"
    )
    typer.echo(_command_elsewhere(data_dir, bank, url, overdraft_limit_minutes))


def check_url(url: str) -> None:
    """The URL a bank run elsewhere serves at: http(s), a host, and a port if any."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (read for its ValueError on a bad port)
    except ValueError as e:
        raise fail(f"--url {url}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail(f"--url {url}: give the bank's URL, e.g. https://peckham.example:8001")


def not_described(data_dir: Path, error: Exception) -> str:
    """A description that lacks something `up` always writes, in one line."""
    missing = f"no {error.args[0]!r}" if isinstance(error, KeyError) else str(error)
    return f"{data_dir / 'federation.json'} does not describe a federation ({missing})"


def _command_elsewhere(data_dir: Path, bank: str, url: str, overdraft: int) -> str:
    from urllib.parse import urlsplit

    from services.local.datadir import read_description

    described = read_description(data_dir)
    port = urlsplit(url).port or 8001
    seed = f" --nats-seed {bank}.nk" if described["clearing"].get("nats_seed") else ""
    return (
        f'  TIMEBANK_OPERATOR_TOKEN="$(cat {bank}.token)" '
        f"timebank ledger serve --bank {bank} --store sqlite:///{bank}.db "
        f"--overdraft-limit-minutes {overdraft} --host 0.0.0.0 --port {port} "
        f"--nats-url {described['nats_url']}{seed} --nats-namespace "
        f"{described['nats_namespace']} --signing-key {bank}.key "
        f"--clearing-key {described['clearing']['public_key']}"
    )


@app.command("backup")
def backup(
    out: Annotated[Path, typer.Option(help="A new folder for the copy.")],
    data_dir: Annotated[
        Path, typer.Option(help="The federation's data dir (it may be running).")
    ] = Path("timebank-data"),
) -> None:
    """Copy a federation's data dir, running or not: every SQLite store by SQLite's online
    backup, and the keys and federation.json. Audit the copy with `timebank audit federation
    --data-dir OUT`; run it with `timebank up --data-dir OUT`."""
    from services.local.backup import BackupError, backup_data_dir

    try:
        copied = backup_data_dir(data_dir, out)
    except BackupError as e:
        raise fail(str(e)) from None
    except OSError as e:
        raise fail(f"cannot copy to {e.filename or out}: {e.strerror}") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise fail(not_described(data_dir, e)) from None
    typer.echo(f"{len(copied)} stores copied to {out}; audit the copy with:")
    typer.echo(f"  timebank audit federation --data-dir {out}")
