"""Settlement cycles: the banks' net positions at a cut-off, the fewest obligations that settle
them (debtor bank pays creditor bank), each confirmed by its creditor, then the cycle completes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from services.clearing.domain_terms import ClearingError, InvalidRequest, ProtocolViolation


class CycleStatus(StrEnum):
    OPEN = "open"
    COMPLETED = "completed"


class ObligationStatus(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"


# Up to this many banks with a non-zero position, the plan is the proven minimum (an exact
# search over subsets, 2^n steps); beyond it, a greedy plan that still needs at most n-1.
EXACT_PLAN_MAX_BANKS = 14

_SETTLEMENT_NAMESPACE = uuid5(NAMESPACE_URL, "urn:timebank-federation:clearing:settlement")


class SettlementOpen(ClearingError):
    """Another cycle is open: it must complete before the next one starts."""


class NotCreditor(ClearingError):
    """Only the bank an obligation pays may confirm that it was paid."""


class UnknownObligation(ClearingError):
    pass


class UnknownSettlement(ClearingError):
    pass


@dataclass(frozen=True)
class Obligation:
    debtor: str
    creditor: str
    minutes: int


def plan_obligations(positions: Mapping[str, int]) -> list[Obligation]:
    """The fewest obligations that bring every position to zero.

    A position is what the federation owes the bank (negative: what the bank owes). The
    banks split into as many groups as possible whose positions sum to zero; a group of k
    banks settles with k-1 obligations, and no plan can do better. Deterministic: the same
    positions always give the same plan.
    """
    if sum(positions.values()) != 0:
        raise InvalidRequest(f"positions sum to {sum(positions.values())}, not 0")
    banks = sorted((b, p) for b, p in positions.items() if p != 0)
    exact = len(banks) <= EXACT_PLAN_MAX_BANKS
    groups = _most_zero_sum_groups(banks) if exact else [banks]
    obligations: list[Obligation] = []
    for group in groups:
        obligations += _settle_group(group)
    return obligations


def _most_zero_sum_groups(banks: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """Partition into the largest number of zero-sum groups (dynamic programming over subsets:
    best[mask] is the most zero-sum groups the banks in ``mask`` can be ordered into)."""
    n = len(banks)
    if n == 0:
        return []
    full = (1 << n) - 1
    total = [0] * (full + 1)
    best = [0] * (full + 1)
    for mask in range(1, full + 1):
        low = (mask & -mask).bit_length() - 1
        total[mask] = total[mask & (mask - 1)] + banks[low][1]
        best[mask] = max(best[mask & ~(1 << i)] for i in range(n) if mask >> i & 1) + (
            total[mask] == 0
        )
    # Walk back: the order in which banks were added; a zero running sum closes a group.
    order: list[int] = []
    mask = full
    while mask:
        gain = total[mask] == 0
        for i in range(n):
            if mask >> i & 1 and best[mask & ~(1 << i)] + gain == best[mask]:
                order.append(i)
                mask &= ~(1 << i)
                break
    order.reverse()
    groups: list[list[tuple[str, int]]] = [[]]
    running = 0
    for i in order:
        groups[-1].append(banks[i])
        running += banks[i][1]
        if running == 0:
            groups.append([])
    return [g for g in groups if g]


def _settle_group(group: list[tuple[str, int]]) -> list[Obligation]:
    """The largest debtor pays the largest creditor, until all are square: each step squares
    at least one bank, and the last squares two, so k banks need at most k-1 obligations."""
    owed = dict(group)
    obligations = []
    while any(owed.values()):
        debtor = min(owed, key=lambda b: (owed[b], b))
        creditor = max(owed, key=lambda b: (owed[b], b))
        minutes = min(-owed[debtor], owed[creditor])
        obligations.append(Obligation(debtor, creditor, minutes))
        owed[debtor] += minutes
        owed[creditor] -= minutes
    return obligations


def settlement_uuid(settlement_id: int) -> UUID:
    return uuid5(_SETTLEMENT_NAMESPACE, str(settlement_id))


class SettlementCycle(Aggregate):
    """One cycle: positions at the cut-off, the obligations that settle them, their receipts."""

    @staticmethod
    def create_id(settlement_id: int, **_: Any) -> UUID:
        return settlement_uuid(settlement_id)

    class Opened(Aggregate.Created):
        settlement_id: int
        cut_off_at: datetime
        positions: dict[str, int]
        obligations: list[dict[str, Any]]

    @event(Opened)
    def __init__(
        self,
        settlement_id: int,
        cut_off_at: datetime,
        positions: dict[str, int],
        obligations: list[dict[str, Any]],
    ) -> None:
        self.settlement_id = settlement_id
        self.cut_off_at = cut_off_at
        self.positions = dict(positions)
        self.obligations = [dict(o) for o in obligations]
        self.confirmed_at: dict[int, datetime] = {}
        self.completed_at: datetime | None = None

    @classmethod
    def open(
        cls, settlement_id: int, cut_off_at: datetime, positions: Mapping[str, int]
    ) -> SettlementCycle:
        plan = plan_obligations(positions)
        return cls(
            settlement_id=settlement_id,
            cut_off_at=cut_off_at,
            positions=dict(positions),
            obligations=[
                {"debtor": o.debtor, "creditor": o.creditor, "minutes": o.minutes} for o in plan
            ],
        )

    @property
    def status(self) -> CycleStatus:
        return CycleStatus.COMPLETED if self.completed_at is not None else CycleStatus.OPEN

    @property
    def all_confirmed(self) -> bool:
        return len(self.confirmed_at) == len(self.obligations)

    def obligation(self, number: int) -> dict[str, Any]:
        """Obligations are numbered from 1, in the order of the plan."""
        if not 1 <= number <= len(self.obligations):
            raise UnknownObligation(
                f"settlement {self.settlement_id} has no obligation {number}",
                settlement_id=self.settlement_id,
            )
        return self.obligations[number - 1]

    def obligation_status(self, number: int) -> ObligationStatus:
        if number in self.confirmed_at:
            return ObligationStatus.CONFIRMED
        return ObligationStatus.PENDING

    def paid_and_received(self) -> dict[str, tuple[int, int]]:
        """What each bank pays and is paid, outside the system, by this cycle's obligations."""
        paid = dict.fromkeys(self.positions, 0)
        received = dict.fromkeys(self.positions, 0)
        for o in self.obligations:
            paid[o["debtor"]] += o["minutes"]
            received[o["creditor"]] += o["minutes"]
        return {bank_id: (paid[bank_id], received[bank_id]) for bank_id in self.positions}

    def settled_minutes(self) -> dict[str, int]:
        """How far each bank's position moves when the cycle completes: by what it paid,
        less what it received (so every position at the cut-off comes back to zero)."""
        return {b: paid - received for b, (paid, received) in self.paid_and_received().items()}

    class ObligationConfirmed(Aggregate.Event):
        number: int
        confirmed_by: str
        confirmed_at: datetime

    def confirm(self, number: int, confirmed_by: str, at: datetime) -> bool:
        """The creditor says it was paid. Returns False if it had already said so."""
        obligation = self.obligation(number)
        if confirmed_by != obligation["creditor"]:
            raise NotCreditor(
                f"obligation {number} pays {obligation['creditor']}; only that bank may confirm it",
                creditor=obligation["creditor"],
            )
        if number in self.confirmed_at:
            return False
        self._obligation_confirmed(number=number, confirmed_by=confirmed_by, confirmed_at=at)
        return True

    @event(ObligationConfirmed)
    def _obligation_confirmed(self, number: int, confirmed_by: str, confirmed_at: datetime) -> None:
        self.confirmed_at[number] = confirmed_at

    class Completed(Aggregate.Event):
        completed_at: datetime

    def complete(self, at: datetime) -> None:
        if self.completed_at is not None:
            return
        if not self.all_confirmed:
            raise ProtocolViolation(f"settlement {self.settlement_id} has unconfirmed obligations")
        self._completed(completed_at=at)

    @event(Completed)
    def _completed(self, completed_at: datetime) -> None:
        self.completed_at = completed_at


class SettlementBook(Aggregate):
    """Every cycle's number, and the one open now, if any (there is one book)."""

    @staticmethod
    def create_id(**_: Any) -> UUID:
        return uuid5(_SETTLEMENT_NAMESPACE, "book")

    class Started(Aggregate.Created):
        pass

    @event(Started)
    def __init__(self) -> None:
        self.count = 0
        self.open_cycle: int | None = None

    class CycleOpened(Aggregate.Event):
        settlement_id: int

    def open_next(self) -> int:
        if self.open_cycle is not None:
            raise SettlementOpen(
                f"settlement {self.open_cycle} is still open: its obligations must be "
                "confirmed before the next cycle",
                settlement_id=self.open_cycle,
            )
        self._cycle_opened(settlement_id=self.count + 1)
        return self.count

    @event(CycleOpened)
    def _cycle_opened(self, settlement_id: int) -> None:
        self.count = settlement_id
        self.open_cycle = settlement_id

    class CycleClosed(Aggregate.Event):
        settlement_id: int

    def close(self, settlement_id: int) -> None:
        if self.open_cycle == settlement_id:
            self._cycle_closed(settlement_id=settlement_id)

    @event(CycleClosed)
    def _cycle_closed(self, settlement_id: int) -> None:
        self.open_cycle = None
