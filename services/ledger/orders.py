"""What a batch of ledger commands is made of: one order per exchange or transfer, each with
its own idempotency key."""

from __future__ import annotations

from dataclasses import dataclass

from services.ledger.writer import IdempotencyKey


@dataclass(frozen=True)
class ExchangeOrder:
    """One exchange of many to record together."""

    payer: str
    payee: str
    minutes: int
    memo: str
    idempotency: IdempotencyKey | None = None


@dataclass(frozen=True)
class TransferOrder:
    """One cross-bank transfer of many to request together."""

    payer: str
    to_bank: str
    payee: str
    minutes: int
    memo: str
    idempotency: IdempotencyKey | None = None
