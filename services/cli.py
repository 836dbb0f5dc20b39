"""The `timebank` command: run a bank's ledger and the clearing house (later: the demo, audits)."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, Protocol, TypeVar

import typer

from services.audit.cli import audit_app
from services.ledger.domain_terms import (
    DEFAULT_MAX_EXCHANGE_MINUTES,
    DEFAULT_OVERDRAFT_MINUTES,
)
from services.ledger.settings import DEFAULT_CHECKPOINT_SECONDS
from shared.bus import DEFAULT_NAMESPACE

app = typer.Typer(
    help="timebank-federation: linked time banks, one event-sourced ledger each.",
    no_args_is_help=True,
    add_completion=False,
)
ledger_app = typer.Typer(help="Run and inspect one bank's ledger service.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")
app.add_typer(audit_app, name="audit")


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@ledger_app.command("serve")
def ledger_serve(
    bank: Annotated[str, typer.Option(help="This bank's id, e.g. rushey-green.")],
    store: Annotated[
        str | None,
        typer.Option(
            help="sqlite:///path.db (relative), sqlite:////abs/path.db, or "
            "postgresql://user@host:5432/db?schema=name. Default: "
            "sqlite:///timebank-data/<bank>.db under the current directory."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    overdraft_limit_minutes: Annotated[
        int, typer.Option(help="The bank's default overdraft limit per member.")
    ] = DEFAULT_OVERDRAFT_MINUTES,
    max_exchange_minutes: Annotated[
        int, typer.Option(help="The largest single exchange accepted.")
    ] = DEFAULT_MAX_EXCHANGE_MINUTES,
    nats_url: Annotated[
        str | None,
        typer.Option(
            help="The federation's NATS server, e.g. nats://127.0.0.1:4222. "
            "Without it the bank runs alone (local exchanges only)."
        ),
    ] = None,
    nats_namespace: Annotated[
        str,
        typer.Option(help="Prefix of the federation's NATS subjects and streams."),
    ] = DEFAULT_NAMESPACE,
    signing_key: Annotated[
        Path | None,
        typer.Option(
            help="The bank's Ed25519 key (`timebank keys new`): with it, the bank sends the "
            "clearing house signed checkpoints of its log for audits."
        ),
    ] = None,
    checkpoint_seconds: Annotated[
        float, typer.Option(help="How often a checkpoint is sent, when anything is new.")
    ] = DEFAULT_CHECKPOINT_SECONDS,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve one bank's ledger over HTTP. Tokens come from TIMEBANK_OPERATOR_TOKEN
    (required) and TIMEBANK_AUDITOR_TOKEN (optional, read-only)."""
    from services.ledger.service import create_app, open_ledger
    from services.ledger.settings import LedgerSettings

    def settings() -> LedgerSettings:
        return LedgerSettings.build(
            os.environ,
            bank_id=bank,
            store_url=store,
            default_overdraft_minutes=overdraft_limit_minutes,
            max_exchange_minutes=max_exchange_minutes,
            nats_url=nats_url,
            nats_namespace=nats_namespace,
            signing_key_path=signing_key,
            checkpoint_seconds=checkpoint_seconds,
        )

    serve_service(
        settings, open_ledger, create_app, lambda s: f"bank {s.bank_id}", host, port, log_level
    )


class ServiceSettings(Protocol):
    @property
    def store_url(self) -> str: ...


class ServiceApplication(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=ServiceSettings)
A = TypeVar("A", bound=ServiceApplication)


def serve_service(
    build_settings: Callable[[], S],
    open_application: Callable[[S], A],
    create_app: Callable[[S, A], Any],
    label: Callable[[S], str],
    host: str,
    port: int,
    log_level: str,
) -> None:
    """Check the settings, open the service's store, and serve it until SIGTERM or Ctrl-C."""
    from services.common.settings import SettingsError
    from services.common.stores import parse_store_url

    configure_logging(log_level)
    try:
        settings = build_settings()
    except SettingsError as e:
        raise fail(str(e)) from None
    store = parse_store_url(settings.store_url)
    try:
        application = open_application(settings)
    except Exception as e:
        raise fail(f"cannot open the store ({store.description}): {e}") from None
    typer.echo(f"{label(settings)}: store {store.description}; http://{host}:{port}")
    serve(create_app(settings, application), host, port, log_level, on_exit=application.close)


def serve(asgi_app: Any, host: str, port: int, log_level: str, on_exit: Callable[[], None]) -> None:
    """Run an app with uvicorn until SIGTERM or Ctrl-C, then close what it used."""
    import uvicorn

    try:
        with exit_cleanly_on_signals():
            uvicorn.run(asgi_app, host=host, port=port, log_level=log_level)
    finally:
        on_exit()


def configure_logging(log_level: str) -> None:
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


clearing_app = typer.Typer(help="Run the federation's clearing house.", no_args_is_help=True)
app.add_typer(clearing_app, name="clearing")


@clearing_app.command("serve")
def clearing_serve(
    store: Annotated[
        str | None,
        typer.Option(
            help="Store URL, as for a ledger. Default: sqlite:///timebank-data/clearing.db"
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    nats_url: Annotated[
        str | None,
        typer.Option(help="The federation's NATS server. Without it no transfer moves."),
    ] = None,
    nats_namespace: Annotated[
        str,
        typer.Option(help="Prefix of the federation's NATS subjects and streams."),
    ] = DEFAULT_NAMESPACE,
    deadline_seconds: Annotated[
        float, typer.Option(help="A transfer whose payee bank has not answered by then aborts.")
    ] = 30.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve the clearing house over HTTP. The admin token comes from TIMEBANK_ADMIN_TOKEN
    (required); TIMEBANK_AUDITOR_TOKEN (optional) may read."""
    from services.clearing.service import create_app, open_clearing
    from services.clearing.settings import ClearingSettings

    def settings() -> ClearingSettings:
        return ClearingSettings.build(
            os.environ,
            store_url=store,
            deadline_seconds=deadline_seconds,
            nats_url=nats_url,
            nats_namespace=nats_namespace,
        )

    serve_service(
        settings, open_clearing, create_app, lambda _: "clearing house", host, port, log_level
    )


@contextmanager
def exit_cleanly_on_signals() -> Iterator[None]:
    """Make SIGTERM and Ctrl-C end the process with status 0 once the server has shut down.

    Uvicorn shuts down gracefully on these signals, then restores the handlers it found and
    raises the signal again; without handlers of ours, the process would die by the signal
    before the store is closed.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        # A second signal (a supervisor that repeats itself) must not cut the shutdown short.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        raise SystemExit(0)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command("up")
def up(
    config: Annotated[Path, typer.Option(help="The federation file (see federation.toml).")],
    data_dir: Annotated[
        Path, typer.Option(help="Where NATS, the stores and the logs are kept.")
    ] = Path("timebank-data"),
    nats_url: Annotated[
        str | None, typer.Option(help="Use this NATS server instead of starting one.")
    ] = None,
    nats_namespace: Annotated[
        str,
        typer.Option(help="Prefix of the federation's NATS subjects and streams."),
    ] = DEFAULT_NAMESPACE,
) -> None:
    """Run a whole federation here: NATS, the clearing house and every bank in the config.
    Prints every URL and token, writes them to DATA_DIR/federation.json, and stops everything
    cleanly on Ctrl-C or SIGTERM."""
    from services.local.config import ConfigError, load_config
    from services.local.federation import FederationError, LocalFederation
    from shared.bus import InvalidNamespace

    configure_logging("warning")
    try:
        federation = LocalFederation(
            load_config(config), data_dir, nats_url=nats_url, nats_namespace=nats_namespace
        )
    except (ConfigError, InvalidNamespace) as e:
        raise fail(str(e)) from None
    with exit_cleanly_on_signals():
        try:
            federation.start()
        except FederationError as e:
            raise fail(str(e)) from None
        try:
            described = federation.describe()
            typer.echo(f"NATS:     {described['nats_url']}")
            clearing = described["clearing"]
            typer.echo(f"clearing: {clearing['url']}  admin token: {clearing['admin_token']}")
            for bank_id, bank in described["banks"].items():
                typer.echo(f"{bank_id}: {bank['url']}  operator token: {bank['operator_token']}")
            typer.echo(f"written to {federation.description_path}; Ctrl-C stops everything")
            while (failed := federation.failed()) is None:
                time.sleep(0.5)
            raise fail(f"{failed} stopped unexpectedly; see {data_dir}/logs/{failed}.log", 1)
        finally:
            federation.stop()


@app.command("demo")
def demo(
    keep: Annotated[
        Path | None, typer.Option(help="Keep the federation's data in this folder.")
    ] = None,
) -> None:
    """Start three linked time banks and a clearing house, tell a short story through their
    APIs, show balances and positions, and check the design's invariants (exit 0 if they hold)."""
    import tempfile

    from rich.console import Console

    from services.local.client import RequestFailed
    from services.local.demo import run_demo
    from services.local.federation import FederationError

    configure_logging("warning")
    console = Console()
    with exit_cleanly_on_signals(), tempfile.TemporaryDirectory(prefix="timebank-demo-") as tmp:
        try:
            ok = run_demo(console, keep.resolve() if keep else Path(tmp))
        except (RequestFailed, FederationError) as e:
            raise fail(str(e), 1) from None
    raise typer.Exit(0 if ok else 1)


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


settle_app = typer.Typer(
    help="Settle the banks' net positions in cycles (partner institutions).",
    no_args_is_help=False,
)
app.add_typer(settle_app, name="settle")
DataDir = Annotated[
    Path,
    typer.Option(help="The running federation's data dir (`timebank up`): its federation.json."),
]


def federation_client(data_dir: Path) -> Any:
    """A client for the federation described in DATA_DIR/federation.json (URLs and tokens)."""
    from services.local.client import FederationClient
    from services.local.federation import DESCRIPTION_FILE, read_description

    path = data_dir / DESCRIPTION_FILE
    try:
        described = read_description(data_dir)
    except OSError as e:
        raise fail(f"cannot read {path} ({e.strerror}); is `timebank up` running there?") from None
    except ValueError as e:
        raise fail(f"{path} is not a federation's description: {e}") from None
    return FederationClient(described)


@settle_app.callback(invoke_without_command=True)
def settle(ctx: typer.Context, data_dir: DataDir = Path("timebank-data")) -> None:
    """Close a settlement cycle now on a running federation and print its obligations: who
    pays whom, outside the system. Each creditor bank then confirms what it received."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console

    from services.local.client import RequestFailed
    from services.local.demo import show_obligations

    client = federation_client(data_dir)
    try:
        cycle = client.open_settlement()
    except (RequestFailed, OSError) as e:
        raise fail(str(e), 1) from None
    console = Console()
    show_obligations(console, cycle)
    if cycle["status"] == "completed":
        console.print("Nothing to settle: every position nets to zero. The cycle is complete.")
        return
    console.print(
        f"When a creditor has been paid: timebank settle confirm {cycle['settlement_id']} "
        "<number> --bank <creditor>"
    )


@settle_app.command("confirm")
def settle_confirm(
    settlement_id: Annotated[int, typer.Argument(help="The cycle's number.")],
    number: Annotated[int, typer.Argument(help="The obligation's number in the cycle.")],
    bank: Annotated[str, typer.Option(help="The creditor bank that was paid.")],
    data_dir: DataDir = Path("timebank-data"),
) -> None:
    """Confirm, as the creditor bank (with its own clearing token), that an obligation was
    paid. The last confirmation completes the cycle."""
    from services.local.client import RequestFailed

    client = federation_client(data_dir)
    if bank not in client.described.get("banks", {}):
        raise fail(f"{bank} is not a bank of this federation")
    try:
        cycle = client.ok(client.confirm_obligation(settlement_id, number, bank))
    except (RequestFailed, OSError) as e:
        raise fail(str(e), 1) from None
    typer.echo(
        f"settlement {settlement_id}: obligation {number} confirmed; cycle {cycle['status']}"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
