"""`timebank ledger serve` and `timebank clearing serve`: one service over HTTP until SIGTERM
or Ctrl-C, both through one path (settings, store, app, serve)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import typer

from services.cli.common import (
    LogFormat,
    NatsNamespace,
    app,
    configure_logging,
    exit_cleanly_on_signals,
    fail,
    uvicorn_log_config,
)
from services.ledger.domain_terms import DEFAULT_MAX_EXCHANGE_MINUTES, DEFAULT_OVERDRAFT_MINUTES
from services.ledger.settings import DEFAULT_CHECKPOINT_SECONDS
from shared.bus import DEFAULT_NAMESPACE

# Options both services take.
NatsSeed = Annotated[
    Path | None,
    typer.Option(
        envvar="TIMEBANK_NATS_SEED",
        help="The NATS user's nkey seed file (mode 600) this service connects with.",
    ),
]
LogLevel = Annotated[str, typer.Option(help="debug, info, warning or error.")]
LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        help="text, or json: one JSON object per line (uvicorn's access log too), with a "
        "transfer's transfer_id and bank as fields."
    ),
]
NatsTlsCa = Annotated[
    Path | None,
    typer.Option(help="TLS to NATS (between hosts): the CA that signed the server's certificate."),
]
NatsTlsCert = Annotated[
    Path | None, typer.Option(help="This service's own TLS certificate, for the NATS server.")
]
NatsTlsKey = Annotated[Path | None, typer.Option(help="The key of --nats-tls-cert.")]

ledger_app = typer.Typer(help="Run and inspect one bank's ledger service.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")
clearing_app = typer.Typer(help="Run the federation's clearing house.", no_args_is_help=True)
app.add_typer(clearing_app, name="clearing")


@ledger_app.command("serve")
def ledger_serve(
    bank: Annotated[str, typer.Option(help="This bank's id, e.g. rushey-green.")],
    store: Annotated[
        str | None,
        typer.Option(
            help="sqlite:///path.db (relative), sqlite:////abs/path.db, or "
            "postgresql://user@host:5432/db?schema=name. Default: "
            "sqlite:///<bank>.ledger.db in the current directory. A SQLite store is held by "
            "one service at a time."
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
    nats_namespace: NatsNamespace = DEFAULT_NAMESPACE,
    signing_key: Annotated[
        Path | None,
        typer.Option(
            help="The bank's Ed25519 key (`timebank keys new`), the one it was admitted with: "
            "it signs what the bank sends on the bus and the checkpoints of its log; needed "
            "with --nats-url."
        ),
    ] = None,
    checkpoint_seconds: Annotated[
        float, typer.Option(help="How often a checkpoint is sent, when anything is new.")
    ] = DEFAULT_CHECKPOINT_SECONDS,
    clearing_key: Annotated[
        str | None,
        typer.Option(
            help="The clearing house's Ed25519 public key (base64), given at the bank's "
            "admission: with --nats-url, only messages it signed are applied."
        ),
    ] = None,
    nats_seed: NatsSeed = None,
    nats_tls_ca: NatsTlsCa = None,
    nats_tls_cert: NatsTlsCert = None,
    nats_tls_key: NatsTlsKey = None,
    log_level: LogLevel = "info",
    log_format: LogFormatOption = LogFormat.TEXT,
) -> None:
    """Serve one bank's ledger over HTTP. Tokens come from TIMEBANK_OPERATOR_TOKEN
    (required) and TIMEBANK_AUDITOR_TOKEN (optional, read-only)."""
    from services.ledger import APPLICATION_NAME as LEDGER
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
            clearing_key=clearing_key,
            nats_seed=nats_seed,
            nats_tls_ca=nats_tls_ca,
            nats_tls_cert=nats_tls_cert,
            nats_tls_key=nats_tls_key,
        )

    serve_service(
        settings,
        open_ledger,
        create_app,
        lambda s: f"bank {s.bank_id}",
        host,
        port,
        log_level,
        log_format,
        application_name=LEDGER,
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
    log_format: LogFormat = LogFormat.TEXT,
    *,
    application_name: str,
) -> None:
    """Check the settings, open the service's store, and serve it until SIGTERM or Ctrl-C.
    ``application_name``: whose log the store must hold, if it holds one."""
    from services.cli.guards import Refused, StoreLock, check_listening, check_log_owner
    from services.common.settings import SettingsError
    from services.common.stores import parse_store_url

    configure_logging(log_level, log_format)
    try:
        settings = build_settings()
    except SettingsError as e:
        raise fail(str(e)) from None
    store = parse_store_url(settings.store_url)
    lock = StoreLock(store)
    try:
        check_listening(host, port)
        lock.acquire(label(settings))
        check_log_owner(store, application_name)
    except Refused as e:
        lock.release()
        raise fail(str(e)) from None
    try:
        application = open_application(settings)
    except Exception as e:
        lock.release()
        raise fail(f"cannot open the store ({store.description}): {e}") from None
    banner = f"{label(settings)}: store {store.description}; http://{host}:{port}"
    if log_format == LogFormat.JSON:  # every line a JSON object, this one too
        logging.getLogger("services.cli").warning(banner)
    else:
        typer.echo(banner)
    asgi_app = create_app(settings, application)

    def close() -> None:
        application.close()
        lock.release()

    serve(asgi_app, host, port, log_level, on_exit=close, log_format=log_format)


def serve(
    asgi_app: Any,
    host: str,
    port: int,
    log_level: str,
    on_exit: Callable[[], None],
    log_format: LogFormat = LogFormat.TEXT,
) -> None:
    """Run an app with uvicorn until SIGTERM or Ctrl-C, then close what it used."""
    import uvicorn

    config = uvicorn.Config(
        asgi_app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=uvicorn_log_config(log_format),
    )
    server = uvicorn.Server(config)
    # Its start-up may find a setting it cannot run with: then it stops the server.
    asgi_app.state.stop_server = lambda: setattr(server, "should_exit", True)
    try:
        with exit_cleanly_on_signals():
            server.run()
    finally:
        on_exit()
    refused = getattr(asgi_app.state, "refused", None)
    if refused:
        raise fail(refused)
    if not server.started:
        raise fail(f"the server did not start on {host}:{port}; see the lines above", 3)


@clearing_app.command("serve")
def clearing_serve(
    store: Annotated[
        str | None,
        typer.Option(
            help="Store URL, as for a ledger. Default: sqlite:///clearing.house.db in the "
            "current directory."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    nats_url: Annotated[
        str | None,
        typer.Option(help="The federation's NATS server. Without it no transfer moves."),
    ] = None,
    nats_namespace: NatsNamespace = DEFAULT_NAMESPACE,
    deadline_seconds: Annotated[
        float, typer.Option(help="A transfer whose payee bank has not answered by then aborts.")
    ] = 30.0,
    signing_key: Annotated[
        Path | None,
        typer.Option(
            help="The clearing house's Ed25519 key (`timebank keys new`): it signs everything "
            "the clearing house sends on the bus; needed with --nats-url."
        ),
    ] = None,
    nats_seed: NatsSeed = None,
    nats_tls_ca: NatsTlsCa = None,
    nats_tls_cert: NatsTlsCert = None,
    nats_tls_key: NatsTlsKey = None,
    stream_replicas: Annotated[
        int,
        typer.Option(
            envvar="TIMEBANK_STREAM_REPLICAS",
            help="On how many NATS servers each stream is kept: 1 on a single server, 3 on a "
            "cluster of three (then one server may be lost without losing a message).",
        ),
    ] = 1,
    log_level: LogLevel = "info",
    log_format: LogFormatOption = LogFormat.TEXT,
) -> None:
    """Serve the clearing house over HTTP. The admin token comes from TIMEBANK_ADMIN_TOKEN
    (required); TIMEBANK_AUDITOR_TOKEN (optional) may read."""
    from services.clearing import APPLICATION_NAME as CLEARING
    from services.clearing.service import create_app, open_clearing
    from services.clearing.settings import ClearingSettings

    def settings() -> ClearingSettings:
        return ClearingSettings.build(
            os.environ,
            store_url=store,
            deadline_seconds=deadline_seconds,
            nats_url=nats_url,
            nats_namespace=nats_namespace,
            signing_key_path=signing_key,
            nats_seed=nats_seed,
            nats_tls_ca=nats_tls_ca,
            nats_tls_cert=nats_tls_cert,
            nats_tls_key=nats_tls_key,
            stream_replicas=stream_replicas,
        )

    serve_service(
        settings,
        open_clearing,
        create_app,
        lambda _: "clearing house",
        host,
        port,
        log_level,
        log_format,
        application_name=CLEARING,
    )
