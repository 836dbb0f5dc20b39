"""`timebank demo`: three linked time banks, one story told through their real HTTP APIs, and
the design's invariants checked at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
from rich.console import Console
from rich.table import Table

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
SETTLE_SECONDS = 20.0


class DemoFailed(RuntimeError):
    pass


def hours(minutes: int) -> str:
    sign = "-" if minutes < 0 else ""
    h, m = divmod(abs(minutes), 60)
    return f"{sign}{h}h {m:02d}m"


@dataclass
class Client:
    """Talks to the running federation as its operators would."""

    described: dict[str, Any]
    transfers: dict[str, tuple[str, str]] = field(default_factory=dict)

    def bank(self, bank_id: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        bank = self.described["banks"][bank_id]
        headers = {"Authorization": f"Bearer {bank['operator_token']}"}
        return httpx.request(method, bank["url"] + path, headers=headers, timeout=10, **kwargs)

    def clearing(self, path: str) -> Any:
        clearing = self.described["clearing"]
        headers = {"Authorization": f"Bearer {clearing['admin_token']}"}
        response = httpx.get(clearing["url"] + path, headers=headers, timeout=10)
        response.raise_for_status()
        return response.json()

    def ok(self, response: httpx.Response) -> Any:
        if not response.is_success:
            raise DemoFailed(f"{response.request.url}: {response.status_code} {response.text}")
        return response.json()

    def transfer(self, payer_bank: str, payer: str, to_bank: str, payee: str, minutes: int,
                 memo: str) -> str:  # fmt: skip
        body = {"payer": payer, "to_bank": to_bank, "payee": payee, "minutes": minutes,
                "memo": memo}  # fmt: skip
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            response = self.bank(payer_bank, "POST", "/v1/transfers", json=body)
            # Until the clearing house's directory reaches the bank, other banks are unknown.
            if response.status_code != 404 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        transfer_id: str = self.ok(response)["transfer_id"]
        self.transfers[transfer_id] = (payer_bank, to_bank)
        return transfer_id

    def outcome(self, bank_id: str, transfer_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            view: dict[str, Any] = self.ok(
                self.bank(bank_id, "GET", f"/v1/transfers/{transfer_id}")
            )
            if view["status"] != "pending" or time.monotonic() > deadline:
                return view
            time.sleep(0.05)


def run_demo(console: Console, data_dir: Path) -> bool:
    """Tell the story; True if every invariant holds at the end."""
    console.rule("[bold]timebank-federation demo")
    console.print(f"Starting NATS, the clearing house and three banks in {data_dir} ...")
    with LocalFederation(DEMO_CONFIG, data_dir) as federation:
        client = Client(federation.describe())
        for bank_id, members in MEMBERS.items():
            for member_id, name in members:
                body = {"member_id": member_id, "name": name, "kind": "person"}
                client.ok(client.bank(bank_id, "POST", "/v1/members", json=body))
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

        # The payee banks apply their decisions a moment later; wait until nothing is held.
        wait_until_settled(client)
        show_balances(console, client)
        show_positions(console, client)
        problems = check_invariants(client, committed=[course], aborted=[unknown, too_much])
    if problems:
        console.print("[bold red]Invariants broken:[/]")
        for problem in problems:
            console.print(f"  [red]x[/] {problem}")
        return False
    console.print("[bold green]All invariants hold[/] (1-5 of the design).")
    return True


def say(console: Console, text: str) -> None:
    console.print(f"\n[bold cyan]>[/] {text}")


def show_outcome(console: Console, view: dict[str, Any]) -> None:
    status = view["status"]
    colour = {"committed": "green", "aborted": "yellow"}.get(status, "red")
    reason = f" ({view['reason']})" if view.get("reason") else ""
    console.print(f"  transfer {view['transfer_id'][:8]}: [{colour}]{status}{reason}[/]")


def wait_until_settled(client: Client) -> None:
    """Until no bank holds minutes and the clearing reserves none: every decision applied."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        held = sum(
            client.ok(client.bank(b, "GET", f"/v1/members/{m}"))["held_minutes"]
            for b, members in MEMBERS.items()
            for m in [*(m for m, _ in members), "federation"]
        )
        reserved = sum(b["reserved_minutes"] for b in client.clearing("/v1/banks")["banks"])
        if held == 0 and reserved == 0:
            return
        time.sleep(0.1)


def show_balances(console: Console, client: Client) -> None:
    table = Table(title="Balances")
    for column in ("bank", "account", "posted", "held", "available", "overdraft limit"):
        table.add_column(column, justify="left" if column in ("bank", "account") else "right")
    for bank_id, members in MEMBERS.items():
        for member_id in [*(m for m, _ in members), "federation"]:
            view = client.ok(client.bank(bank_id, "GET", f"/v1/members/{member_id}"))
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


def show_positions(console: Console, client: Client) -> None:
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


def check_invariants(client: Client, committed: list[str], aborted: list[str]) -> list[str]:
    problems: list[str] = []
    banks = {b["bank_id"]: b for b in client.clearing("/v1/banks")["banks"]}
    positions = client.clearing("/v1/positions")
    for bank_id, members in MEMBERS.items():
        total = client.ok(client.bank(bank_id, "GET", "/v1/bank"))["total_posted_minutes"]
        if total != 0:
            problems.append(f"1: {bank_id}'s posted balances sum to {total}, not 0")
        federation = client.ok(client.bank(bank_id, "GET", "/v1/members/federation"))
        if federation["balance_minutes"] != -banks[bank_id]["position_minutes"]:
            problems.append(
                f"2: {bank_id}'s federation account is {federation['balance_minutes']} but its "
                f"position is {banks[bank_id]['position_minutes']}"
            )
        for member_id, _ in members:
            view = client.ok(client.bank(bank_id, "GET", f"/v1/members/{member_id}"))
            if view["available_minutes"] < -view["overdraft_limit_minutes"]:
                problems.append(f"5: {member_id}@{bank_id} is below its overdraft limit")
        bank = banks[bank_id]
        if bank["reserved_minutes"] - bank["position_minutes"] > bank["limit_minutes"]:
            problems.append(f"5: {bank_id} owes more than its limit")
    if positions["sum_minutes"] != 0 or sum(positions["positions"].values()) != 0:
        problems.append(f"3: positions sum to {positions['sum_minutes']}, not 0")
    for transfer_id in committed + aborted:
        payer_bank, payee_bank = client.transfers[transfer_id]
        expected = "committed" if transfer_id in committed else "aborted"
        at_clearing = client.clearing(f"/v1/transfers/{transfer_id}")["status"]
        here = client.outcome(payer_bank, transfer_id)["status"]
        if (here, at_clearing) != (expected, expected):
            problems.append(f"4: transfer {transfer_id} is {here} at {payer_bank}, {at_clearing} "
                            f"at the clearing house; expected {expected}")  # fmt: skip
        # Each transfer in the story has its own memo: its postings are the entries bearing it.
        memo = client.outcome(payer_bank, transfer_id)["memo"]
        posted = [
            e
            for b in (payer_bank, payee_bank)
            for m, _ in MEMBERS[b]
            for e in client.ok(client.bank(b, "GET", f"/v1/members/{m}/statement"))["entries"]
            if e["kind"] == "transfer" and e["memo"] == memo
        ]
        if len(posted) != (2 if expected == "committed" else 0):
            problems.append(
                f"4: transfer {transfer_id} has {len(posted)} postings at the banks' members; "
                f"expected {2 if expected == 'committed' else 0}"
            )
    return problems
