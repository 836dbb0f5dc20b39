"""A clearing house and banks on SQLite, linked over a real nats-server by their bus workers:
the set-up the bus tests share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from services.clearing.application import Clearing
from services.common.bus_worker import BusWorker
from services.common.stores import parse_store_url
from services.ledger.application import Ledger
from services.ledger.domain_terms import UnknownTransfer
from shared.bus import Bus
from tests.helpers import admit, bank_bus_worker, clearing_worker


async def eventually(check: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("the federation did not settle in time")
        await asyncio.sleep(0.05)


def committed_everywhere(banks: dict[str, Ledger], payer_bank: str, *transfer_ids: str) -> bool:
    """Whether both banks of each transfer (requested at payer_bank) have applied its commit.
    The clearing house sends the decision to each independently, so one may apply it first."""
    for transfer_id in transfer_ids:
        payee_bank = banks[payer_bank].get_transfer(transfer_id).payee_bank
        for bank in (banks[payer_bank], banks[payee_bank]):
            try:
                if bank.get_transfer(transfer_id).status != "committed":
                    return False
            except UnknownTransfer:  # the payee bank has not been asked for the credit yet
                return False
    return True


Scenario = Callable[[Clearing, dict[str, Ledger], str], Awaitable[None]]


def run_federation(
    tmp_path: Path,
    nats_url: str,
    bus: Bus,
    scenario: Scenario,
    bank_ids: tuple[str, ...] = ("gp", "college"),
    limit_minutes: int = 600,
) -> None:
    """A clearing house and banks on SQLite, linked by their bus workers; maya banks at gp and
    bob at college."""

    async def main() -> None:
        clearing = Clearing(parse_store_url(f"sqlite:///{tmp_path}/clearing.db"))
        banks = {b: Ledger(b, parse_store_url(f"sqlite:///{tmp_path}/{b}.db")) for b in bank_ids}
        workers: list[BusWorker] = [clearing_worker(clearing, nats_url, bus)]
        workers += [bank_bus_worker(ledger, nats_url, bus) for ledger in banks.values()]
        for worker in workers:
            await worker.start()
        try:
            for bank_id in bank_ids:
                admit(clearing, bank_id, limit_minutes)
            banks["gp"].open_member("maya", "Maya", "person")
            banks["college"].open_member("bob", "Bob", "person")
            await eventually(
                lambda: all(set(bank_ids) <= set(b.known_banks()) for b in banks.values())
            )
            await scenario(clearing, banks, nats_url)
        finally:
            for worker in workers:
                await worker.stop()
            for app in (clearing, *banks.values()):
                app.close()

    asyncio.run(main())
