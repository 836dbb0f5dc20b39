"""The work of the settlement commands: a cycle opened from the banks' positions, a creditor's
receipt recorded, and the cycle completed (positions move; each bank is told)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from services.clearing.domain_rules import (
    Finder,
    member_bank,
)
from services.clearing.settlement import (
    SettlementBook,
    SettlementCycle,
    UnknownSettlement,
    settlement_uuid,
)
from services.common.inbox import UnitOfWork
from shared.protocol import CLEARING, SettlementCompleted

Clock = Callable[[], datetime]


def settlement_cycle(find: Finder, settlement_id: int) -> SettlementCycle:
    cycle = find(settlement_uuid(settlement_id), SettlementCycle)
    if cycle is None:
        raise UnknownSettlement(f"no settlement {settlement_id}")
    return cycle


def open_cycle(uow: UnitOfWork, bank_ids: Iterable[str], clock: Clock) -> SettlementCycle:
    """Every bank's position now, and the fewest obligations that settle them."""
    book = _book(uow)
    settlement_id = book.open_next()
    positions = {bank_id: member_bank(uow.get, bank_id).position_minutes for bank_id in bank_ids}
    cycle = uow.add(SettlementCycle.open(settlement_id, clock(), positions))
    for bank_id, moved in cycle.settled_minutes().items():
        if moved < 0:
            member_bank(uow.get, bank_id).expect_settlement(settlement_id, -moved)
    if cycle.all_confirmed:  # nothing to settle: positions were square, or net out
        _complete(uow, book, cycle, clock)
    return cycle


def confirm_receipt(
    uow: UnitOfWork, settlement_id: int, number: int, bank_id: str, clock: Clock
) -> SettlementCycle:
    """The creditor bank ``bank_id`` received what obligation ``number`` owes it; the last
    receipt completes the cycle."""
    cycle = settlement_cycle(uow.get, settlement_id)
    if cycle.confirm(number, bank_id, clock()) and cycle.all_confirmed:
        _complete(uow, _book(uow), cycle, clock)
    return cycle


def _book(uow: UnitOfWork) -> SettlementBook:
    book = uow.get(SettlementBook.create_id(), SettlementBook)
    return book or uow.add(SettlementBook())


def _complete(uow: UnitOfWork, book: SettlementBook, cycle: SettlementCycle, clock: Clock) -> None:
    """Positions move by the settled amounts; each bank is told, to post the same."""
    cycle.complete(clock())
    book.close(cycle.settlement_id)
    for bank_id, (paid, received) in cycle.paid_and_received().items():
        if paid == received:
            continue
        member_bank(uow.get, bank_id).settle(cycle.settlement_id, paid - received)
        message = SettlementCompleted(
            settlement_id=cycle.settlement_id, paid_minutes=paid, received_minutes=received
        )
        uow.send(bank_id, message, sender=CLEARING)
