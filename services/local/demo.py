"""`timebank demo`: three linked time banks, one story told through their real HTTP APIs, and
the design's invariants checked at the end."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from services.local.client import FederationClient
from services.local.config import BankConfig, ClearingConfig, FederationConfig
from services.local.federation import LocalFederation

SURGERY, COLLEGE, COMMUNITY = "rushey-green", "lewisham-college", "deptford-community"
DEMO_CONFIG = FederationConfig(
    clearing=ClearingConfig(deadline_seconds=10),
    banks=[
        # A small limit, so that the story can show a transfer refused for it.
        BankConfig(id=SURGERY, name="Rushey Green Time Bank (GP surgery)", limit_minutes=240),
        BankConfig(id=COLLEGE, name="Lewisham College Time Bank", limit_minutes=3000),
        BankConfig(id=COMMUNITY, name="Deptford Community Time Bank", limit_minutes=3000),
    ],
)
MEMBERS = {
    SURGERY: [("amara", "Amara Osei"), ("george", "George Whitfield")],
    COLLEGE: [("priya", "Priya Natarajan")],
    COMMUNITY: [("tom", "Tom Brennan")],
}


def hours(minutes: int) -> str:
    sign = "-" if minutes < 0 else ""
    h, m = divmod(abs(minutes), 60)
    return f"{sign}{h}h {m:02d}m"


def member_ids() -> dict[str, list[str]]:
    return {bank_id: [m for m, _ in members] for bank_id, members in MEMBERS.items()}


def run_demo(console: Console, data_dir: Path, stay: bool = False) -> bool:
    """Tell the story; True if every invariant holds at the end. With ``stay``, keep the
    federation running afterwards, with logins to look at its dashboards, until Ctrl-C."""
    console.rule("[bold]timebank-federation demo")
    console.print(f"Starting NATS, the clearing house and three banks in {data_dir} ...")
    with (
        LocalFederation(DEMO_CONFIG, data_dir, checkpoint_seconds=1) as federation,
        FederationClient(federation.describe()) as client,
    ):
        for bank_id, members in MEMBERS.items():
            for member_id, name in members:
                client.open_member(bank_id, member_id, name)
        console.print("Members opened: " + ", ".join(
            f"{m}@{b}" for b, ms in MEMBERS.items() for m, _ in ms))  # fmt: skip

        say(console, "Amara drives George to a hospital appointment at the GP surgery's bank.")
        lift = {"payer": "george", "payee": "amara", "minutes": 120, "memo": "Lift to hospital"}
        client.ok(client.bank(SURGERY, "POST", "/v1/exchanges", json=lift))
        console.print("  George pays Amara 2h 00m: a local exchange.")

        say(console, "Amara spends 1h 30m of it at the college, on a course Priya teaches.")
        course = client.transfer(SURGERY, "amara", COLLEGE, "priya", 90, "Evening pottery course")
        show_outcome(console, client.outcome(SURGERY, course))

        say(console, "She tries to pay 'nobody' at the college: the college refuses.")
        unknown = client.transfer(SURGERY, "amara", COLLEGE, "nobody", 30, "Mistyped name")
        show_outcome(console, client.outcome(SURGERY, unknown))

        say(console, "George pays Tom at the community bank 3h 20m: over the surgery's limit.")
        too_much = client.transfer(SURGERY, "george", COMMUNITY, "tom", 200, "Decorating")
        show_outcome(console, client.outcome(SURGERY, too_much))

        say(console, "Priya pays Tom 45m at the community bank for mending her bicycle.")
        bicycle = client.transfer(COLLEGE, "priya", COMMUNITY, "tom", 45, "Bicycle repair")
        show_outcome(console, client.outcome(COLLEGE, bicycle))

        # The payee banks apply their decisions a moment later; wait until nothing is held.
        client.wait_until_settled(member_ids())
        show_balances(console, client)
        show_positions(console, client)

        say(console, "The partner institutions settle: the clearing house closes a cycle.")
        cycle = client.open_settlement()
        show_obligations(console, cycle)
        for obligation in cycle["obligations"]:
            creditor = obligation["creditor"]
            client.ok(client.confirm_obligation(cycle["settlement_id"], obligation["number"],
                                                creditor))  # fmt: skip
            console.print(f"  {creditor} confirms it received {hours(obligation['minutes'])} "
                          f"from {obligation['debtor']}.")  # fmt: skip
        completed = client.clearing(f"/v1/settlements/{cycle['settlement_id']}")
        console.print(f"  Settlement cycle {completed['settlement_id']}: {completed['status']}.")
        # Each bank posts the settled amount when the clearing house's message reaches it.
        client.wait_until_mirrored()
        show_positions(console, client)
        show_balances(console, client, accounts=("federation", "settlement"))
        expected = {
            course: "committed",
            unknown: "aborted",
            too_much: "aborted",
            bicycle: "committed",
        }
        problems = client.check_invariants(member_ids(), expected)
        if completed["status"] != "completed":
            problems.append(f"settlement cycle {completed['settlement_id']} did not complete")
        show_dashboards(console, client, stay and not problems)
        while stay and not problems:  # until Ctrl-C (SystemExit, from the CLI's handler)
            time.sleep(1)
    if problems:
        console.print("[bold red]Invariants broken:[/]")
        for problem in problems:
            console.print(f"  [red]x[/] {problem}")
        return False
    console.print("[bold green]All invariants hold[/] (1-5 of the design), after settlement too.")
    return True


def show_dashboards(console: Console, client: FederationClient, stay: bool) -> None:
    """Where the dashboards are; with ``stay``, a coordinator and a member who can log in."""
    clearing = client.described["clearing"]
    console.print("\n[bold]Dashboards[/]")
    # Whole lines, never wrapped: a token or a passphrase is copied from them.
    console.print(
        f"  federation: {clearing['url']}/ui/  (the admin token: {clearing['admin_token']})",
        soft_wrap=True,
    )
    for bank_id, bank in client.described["banks"].items():
        console.print(f"  {bank_id}: {bank['url']}/ui/")
    if not stay:
        console.print("  (they stop with the demo: `timebank demo --stay` keeps them up)")
        return
    new_coordinator = {"coordinator_id": "coordinator", "name": "Demo Coordinator"}
    for bank_id, (member_id, _) in ((b, m[0]) for b, m in MEMBERS.items()):
        coordinator = demo_login(client, bank_id, "/v1/coordinators", new_coordinator)
        member = demo_login(client, bank_id, f"/v1/members/{member_id}/invitation", None)
        console.print(
            f"  {bank_id}: coordinator / {coordinator}   {member_id} / {member}", soft_wrap=True
        )
    console.print("Ctrl-C stops everything.")


def demo_login(client: FederationClient, bank_id: str, path: str, body: Any) -> str:
    """A login made for the demo: invited, then given a random passphrase, which is shown."""
    invited = client.ok(client.bank(bank_id, "POST", path, json=body))
    passphrase = "-".join(secrets.token_hex(3) for _ in range(3))
    accept = {"login": invited["login"], "code": invited["code"], "passphrase": passphrase}
    client.ok(client.bank(bank_id, "POST", "/v1/invitations/accept", json=accept))
    return passphrase


def say(console: Console, text: str) -> None:
    console.print(f"\n[bold cyan]>[/] {text}")


def show_outcome(console: Console, view: dict[str, Any]) -> None:
    status = view["status"]
    colour = {"committed": "green", "aborted": "yellow"}.get(status, "red")
    reason = f" ({view['reason']})" if view.get("reason") else ""
    console.print(f"  transfer {view['transfer_id'][:8]}: [{colour}]{status}{reason}[/]")


def show_obligations(console: Console, cycle: dict[str, Any]) -> None:
    table = Table(title=f"Settlement cycle {cycle['settlement_id']}: obligations")
    for column in ("#", "debtor pays", "creditor", "amount"):
        table.add_column(column, justify="right" if column in ("#", "amount") else "left")
    for o in cycle["obligations"]:
        table.add_row(str(o["number"]), o["debtor"], o["creditor"], hours(o["minutes"]))
    console.print(table)


def show_balances(
    console: Console, client: FederationClient, accounts: tuple[str, ...] = ("federation",)
) -> None:
    table = Table(title="Balances")
    for column in ("bank", "account", "posted", "held", "available", "overdraft limit"):
        table.add_column(column, justify="left" if column in ("bank", "account") else "right")
    for bank_id, members in MEMBERS.items():
        for member_id in [*(m for m, _ in members), *accounts]:
            view = client.member(bank_id, member_id)
            limit = view["overdraft_limit_minutes"]
            table.add_row(
                bank_id,
                member_id,
                hours(view["balance_minutes"]),
                hours(view["held_minutes"]),
                hours(view["available_minutes"]),
                "-" if limit is None else hours(limit),
            )
    console.print(table)


def show_positions(console: Console, client: FederationClient) -> None:
    table = Table(title="Positions at the clearing house")
    for column in ("bank", "status", "position", "reserved", "limit"):
        table.add_column(column, justify="left" if column in ("bank", "status") else "right")
    for bank in client.clearing("/v1/banks")["banks"]:
        table.add_row(
            bank["bank_id"],
            bank["status"],
            hours(bank["position_minutes"]),
            hours(bank["reserved_minutes"]),
            hours(bank["limit_minutes"]),
        )
    console.print(table)
