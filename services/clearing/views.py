"""The clearing house's read models: what its commands and queries answer, built from its
aggregates (they are also the HTTP API's response shapes, so each field is declared once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from services.clearing.domain import (
    MemberBank,
    Transfer,
)
from services.clearing.domain_terms import BankStatus, TransferPhase
from services.clearing.settlement import CycleStatus, ObligationStatus, SettlementCycle


@dataclass(frozen=True)
class BankView:
    bank_id: str
    name: str
    status: BankStatus
    limit_minutes: int
    position_minutes: int = field(
        metadata={"description": "What the federation owes the bank (< 0: owes)."}
    )
    reserved_minutes: int = field(metadata={"description": "Held for transfers not yet decided."})
    nats_key: str = field(
        metadata={
            "description": "The bank's NATS user (its public nkey), given at admission: the "
            "NATS server's config lets that user act for this bank only. Empty: none given."
        },
    )


@dataclass(frozen=True)
class TransferView:
    """A cross-bank transfer as the coordinator sees it."""

    transfer_id: str
    status: TransferPhase
    reason: str | None
    detail: str
    payer_bank: str
    payer: str
    payee_bank: str
    payee: str
    minutes: int
    memo: str
    deadline: datetime
    acknowledged_by: list[str]
    resends: int = field(
        default=0, metadata={"description": "How often the decision was sent again."}
    )


@dataclass(frozen=True)
class ObligationView:
    number: int = field(metadata={"description": "Its place in the cycle, from 1."})
    debtor: str = field(metadata={"description": "The bank that pays, outside the system."})
    creditor: str = field(metadata={"description": "The bank paid; it confirms receipt."})
    minutes: int
    status: ObligationStatus
    confirmed_at: datetime | None


@dataclass(frozen=True)
class SettlementView:
    settlement_id: int
    status: CycleStatus
    cut_off_at: datetime = field(
        metadata={"description": "Transfers committed after it are the next cycle's."}
    )
    completed_at: datetime | None
    positions: dict[str, int] = field(
        metadata={"description": "Each bank's position at the cut-off."}
    )
    obligations: list[ObligationView]


def bank_view(bank: MemberBank) -> BankView:
    return BankView(
        bank_id=bank.bank_id,
        name=bank.name,
        status=bank.status,
        limit_minutes=bank.limit_minutes,
        position_minutes=bank.position_minutes,
        reserved_minutes=bank.reserved_minutes,
        nats_key=bank.nats_key,
    )


def transfer_view(transfer: Transfer) -> TransferView:
    return TransferView(
        transfer_id=transfer.transfer_id,
        status=transfer.status,
        reason=transfer.reason,
        detail=transfer.detail,
        payer_bank=transfer.payer_bank,
        payer=transfer.payer,
        payee_bank=transfer.payee_bank,
        payee=transfer.payee,
        minutes=transfer.minutes,
        memo=transfer.memo,
        deadline=transfer.deadline,
        acknowledged_by=list(transfer.acknowledged_by),
        resends=transfer.resends,
    )


def settlement_view(cycle: SettlementCycle) -> SettlementView:
    return SettlementView(
        settlement_id=cycle.settlement_id,
        status=cycle.status,
        cut_off_at=cycle.cut_off_at,
        completed_at=cycle.completed_at,
        positions=dict(cycle.positions),
        obligations=[
            ObligationView(
                number=n,
                debtor=o["debtor"],
                creditor=o["creditor"],
                minutes=o["minutes"],
                status=cycle.obligation_status(n),
                confirmed_at=cycle.confirmed_at.get(n),
            )
            for n, o in enumerate(cycle.obligations, start=1)
        ],
    )
