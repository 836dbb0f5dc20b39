"""`timebank up`, `timebank demo` and `timebank settle`: a whole federation on this machine, and
its settlement cycles."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli.common import (
    LogFormat,
    NatsNamespace,
    app,
    configure_logging,
    exit_cleanly_on_signals,
    fail,
)
from shared.bus import DEFAULT_NAMESPACE

# How often (in half-second turns) `up` gives NATS the users the clearing's directory calls for.
NATS_SYNC_TURNS = 4


def sync_nats_users(federation: Any) -> None:
    """A bank suspended at the clearing house loses its NATS user; reinstated, it gets it back.
    A failure is said and tried again next time (the clearing house may be restarting)."""
    try:
        federation.sync_nats_users()
    except Exception as e:
        typer.secho(f"warning: could not bring NATS's users up to date: {e}", err=True)


@app.command("up")
def up(
    config: Annotated[Path, typer.Option(help="The federation file (see federation.toml).")],
    data_dir: Annotated[
        Path, typer.Option(help="Where NATS, the stores and the logs are kept.")
    ] = Path("timebank-data"),
    nats_url: Annotated[
        str | None, typer.Option(help="Use this NATS server instead of starting one.")
    ] = None,
    nats_namespace: NatsNamespace = DEFAULT_NAMESPACE,
    store_template: Annotated[
        str | None,
        typer.Option(
            help="Each service's store, as a URL with {name} or {schema} (its name, '-' as "
            "'_'), e.g. 'postgresql://user@host:5432/db?schema=tb_{schema}'. Default: the "
            "config's store_template, else SQLite files in the data dir."
        ),
    ] = None,
    log_format: Annotated[
        LogFormat, typer.Option(help="The services' logs in DATA_DIR/logs: text or json.")
    ] = LogFormat.TEXT,
    nats_cluster: Annotated[
        int,
        typer.Option(
            min=1,
            max=5,
            help="Run NATS as a JetStream cluster of this many nodes (3: every stream kept on "
            "all three, so one node may fail), as across hosts. 1: one server.",
        ),
    ] = 1,
) -> None:
    """Run a whole federation here: NATS, the clearing house and every bank in the config.
    Prints every URL and token, writes them to DATA_DIR/federation.json, and stops everything
    cleanly on Ctrl-C or SIGTERM."""
    import httpx2 as httpx

    from services.local.config import ConfigError, load_config
    from services.local.federation import FederationError, LocalFederation
    from shared.bus import InvalidNamespace

    configure_logging("warning")
    try:
        federation = LocalFederation(
            load_config(config),
            data_dir,
            nats_url=nats_url,
            nats_namespace=nats_namespace,
            store_template=store_template,
            log_format=log_format.value,
            nats_cluster=nats_cluster,
        )
    except (ConfigError, InvalidNamespace) as e:
        raise fail(str(e)) from None
    with exit_cleanly_on_signals():
        try:
            federation.start()
        except (FederationError, httpx.HTTPError) as e:
            raise fail(one_line(str(e), data_dir)) from None
        except OSError as e:  # the data dir, or a file in it, cannot be made or written
            raise fail(f"cannot use {e.filename or data_dir}: {e.strerror}") from None
        try:
            described = federation.describe()
            typer.echo(f"NATS:     {described['nats_url']}")
            clearing = described["clearing"]
            typer.echo(f"clearing: {clearing['url']}  admin token: {clearing['admin_token']}")
            for bank_id, bank in described["banks"].items():
                typer.echo(f"{bank_id}: {bank['url']}  operator token: {bank['operator_token']}")
            show_dashboards(described)
            for note in federation.notes:
                typer.secho(note, err=note.startswith("warning"))
            typer.echo(f"written to {federation.description_path}; Ctrl-C stops everything")
            supervise(federation)
        finally:
            federation.stop()


def one_line(message: str, data_dir: Path) -> str:
    """A service's failure to start carries the end of its log: the first words and the last
    line say what happened; the rest stays in the log."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return message.strip()
    what = lines[0].split(": ", 1)[0]
    return f"{what}: {lines[-1]} (more in {data_dir / 'logs'})"


def supervise(federation: Any) -> None:
    """Until stopped by a signal: every half second, start again what crashed (after its
    backoff) and the banks that joined; every few turns, bring NATS's users up to date."""
    turns = 0
    while True:
        time.sleep(0.5)
        turns += 1
        try:
            for line in federation.supervise():
                typer.secho(f"{time.strftime('%H:%M:%S')} {line}", err=True)
        except Exception as e:  # a bank that joined failed to start: said, tried next turn
            typer.secho(f"warning: {e}", err=True)
        if turns % NATS_SYNC_TURNS == 0:
            sync_nats_users(federation)


@app.command("demo")
def demo(
    keep: Annotated[
        Path | None,
        typer.Option(help="Keep the federation's data in this folder (new, or empty)."),
    ] = None,
    stay: Annotated[
        bool,
        typer.Option(
            "--stay",
            help="Keep the federation running after the story, with a coordinator's and a "
            "member's login at each bank, to look at the dashboards; Ctrl-C stops it.",
        ),
    ] = False,
) -> None:
    """Start three linked time banks and a clearing house, tell a short story through their
    APIs, show balances and positions, and check the design's invariants (exit 0 if they hold,
    1 if not, 2 if the demo could not run). The dashboards' addresses are printed at the end."""
    import tempfile

    import httpx2 as httpx
    from rich.console import Console

    from services.local.client import RequestFailed
    from services.local.demo import run_demo
    from services.local.federation import FederationError

    if keep is not None:
        check_new_folder(keep)
    configure_logging("warning")
    console = Console()
    with exit_cleanly_on_signals(), tempfile.TemporaryDirectory(prefix="timebank-demo-") as tmp:
        data_dir = keep.resolve() if keep else Path(tmp)
        try:
            ok = run_demo(console, data_dir, stay)
        except (RequestFailed, FederationError, httpx.HTTPError) as e:
            raise fail(one_line(str(e), data_dir)) from None
    raise typer.Exit(0 if ok else 1)


def show_dashboards(described: dict[str, Any]) -> None:
    """Where the dashboards are, and how a bank's first coordinator gets in."""
    typer.echo("dashboards:")
    typer.echo(f"  federation (clearing admin): {described['clearing']['url']}/ui/")
    for bank_id, bank in described["banks"].items():
        typer.echo(f"  {bank_id} (coordinators, members): {bank['url']}/ui/")
    typer.echo('  a first coordinator: timebank invite BANK ID --coordinator "Full Name"')


def check_new_folder(folder: Path) -> None:
    """The demo's story starts from nothing: an earlier run's members and positions would make
    it fail half-way, so a folder that holds anything is refused, not reused."""
    if folder.exists() and not folder.is_dir():
        raise fail(f"--keep {folder}: it is a file; give a new or empty folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        empty = not any(folder.iterdir())
    except OSError as e:
        raise fail(f"--keep {folder}: cannot use it ({e.strerror})") from None
    if not empty:
        raise fail(
            f"--keep {folder}: it is not empty (an earlier demo?); the demo starts a new "
            "federation: give a new or empty folder"
        )


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
        said = str(e) if str(path) in str(e) else f"{path}: {e}"
        raise fail(f"{said}; it is not a federation's description") from None
    clearing = described.get("clearing")
    if (
        not isinstance(clearing, dict)
        or not isinstance(clearing.get("url"), str)
        or not isinstance(clearing.get("admin_token"), str)
        or not isinstance(described.get("banks"), dict)
    ):
        raise fail(
            f"{path} is not a federation's description: it names no clearing house URL and "
            "admin token, or no banks"
        )
    return FederationClient(described)


@contextmanager
def reaching(data_dir: Path) -> Iterator[None]:
    """A federation that cannot be reached, or that refuses a request, in one line (exit 2)."""
    import httpx2 as httpx

    from services.local.client import RequestFailed
    from services.local.federation import DESCRIPTION_FILE

    try:
        yield
    except httpx.RequestError as e:  # refused, timed out, reset, a URL it cannot use
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise fail(
            f"cannot reach {_url_of(e)} ({reason}): is the federation running? start it with "
            f"`timebank up --config FILE --data-dir {data_dir}`"
        ) from None
    except httpx.InvalidURL as e:
        raise fail(f"{data_dir / DESCRIPTION_FILE} names a URL that cannot be used: {e}") from None
    except RequestFailed as e:
        raise fail(str(e)) from None


def _url_of(error: Any) -> str:
    try:
        return str(error.request.url)
    except RuntimeError:  # raised before a request was made
        return "the federation"


@settle_app.callback(invoke_without_command=True)
def settle(ctx: typer.Context, data_dir: DataDir = Path("timebank-data")) -> None:
    """Close a settlement cycle now on a running federation and print its obligations: who
    pays whom, outside the system. Each creditor bank then confirms what it received."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console

    from services.local.demo import show_obligations

    client = federation_client(data_dir)
    with reaching(data_dir):
        cycle = client.open_settlement()
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
    signing_key: Annotated[
        Path | None,
        typer.Option(
            help="The creditor bank's own key, which signs the confirmation. Default: the "
            "bank's key file named in federation.json."
        ),
    ] = None,
) -> None:
    """Confirm, as the creditor bank (with its own clearing token, signed with its own key),
    that an obligation was paid. The last confirmation completes the cycle."""
    from shared.signing import SigningKeyError

    client = federation_client(data_dir)
    described = client.described["banks"].get(bank)
    if not isinstance(described, dict):
        raise fail(f"{bank} is not a bank of this federation")
    if not isinstance(described.get("clearing_token"), str):
        raise fail(f"federation.json in {data_dir} has no clearing token for {bank}")
    with reaching(data_dir):
        try:
            cycle = client.ok(client.confirm_obligation(settlement_id, number, bank, signing_key))
        except (SigningKeyError, KeyError) as e:
            raise fail(f"no usable signing key for {bank}: {e}") from None
    typer.echo(
        f"settlement {settlement_id}: obligation {number} confirmed; cycle {cycle['status']}"
    )
