"""What a bank tells its operator: its metrics (exchanges, its side of cross-bank transfers) and
a log line, with the transfer's id as a field, for each transfer that ends here."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Annotated, TypeVar
from uuid import UUID

from fastapi import Depends, Request
from prometheus_client import Counter

from services.common.application import SavedEvents
from services.common.metrics import ServiceMetrics, problem_code
from services.ledger.domain import Account, CrossBankTransfer
from services.ledger.domain_terms import EntryKind, TransferStatus

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class LedgerMetrics(ServiceMetrics):
    """A bank's metrics. Exchanges recorded and transfers are counted from the events each
    committed save stored (once, however often a batch was decided); refusals, which save
    nothing, where the refusal is answered (``exchange_refused``)."""

    def __init__(self, bank_id: str, errors: Mapping[type[Exception], tuple[int, str]]) -> None:
        super().__init__()
        self.bank_id = bank_id
        # The bank's domain errors and their problem codes (services/ledger/api.py).
        self.errors = errors
        self.exchanges = Counter(
            "timebank_exchanges",
            "Local exchanges: recorded, or refused with the problem code answered.",
            ["outcome", "code"],
            registry=self.registry,
        )
        self.transfers = Counter(
            "timebank_bank_transfers",
            "This bank's side of cross-bank transfers, by its role (payer or payee): "
            "requested, committed, or aborted with the reason.",
            ["role", "outcome", "reason"],
            registry=self.registry,
        )
        # The transfers started here and not yet decided: their ids and this bank's role.
        self._pending: dict[UUID, tuple[str, str]] = {}

    def exchange_refused(self, error: Exception) -> None:
        """An exchange refused with this error, counted by the problem code answered."""
        self.exchanges.labels("refused", problem_code(error, self.errors)).inc()

    def exchange_refusals_counted(
        self, execute: Callable[[list[T]], list[R | Exception]]
    ) -> Callable[[list[T]], list[R | Exception]]:
        """A batch's ``execute``, counting each item it refused."""

        def counted(orders: list[T]) -> list[R | Exception]:
            outcomes = execute(orders)
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    self.exchange_refused(outcome)
            return outcomes

        return counted

    def saved(self, events: SavedEvents) -> None:
        recorded = 0
        for event in events:
            if isinstance(event, Account.Debited):
                # Every exchange debits its payer exactly once.
                if event.kind == EntryKind.EXCHANGE:
                    recorded += 1
            elif isinstance(event, CrossBankTransfer.Started):
                self._started(event)
            elif isinstance(event, CrossBankTransfer.Committed | CrossBankTransfer.Aborted):
                self._decided(event)
        if recorded:
            self.exchanges.labels("recorded", "").inc(recorded)

    def _started(self, event: CrossBankTransfer.Started) -> None:
        self._pending[event.originator_id] = (event.transfer_id, event.role)
        self.transfers.labels(event.role, "requested", "").inc()
        log.debug(
            "transfer %s requested (%s)",
            event.transfer_id,
            event.role,
            extra={"transfer_id": event.transfer_id, "bank": self.bank_id, "role": event.role},
        )

    def _decided(self, event: CrossBankTransfer.Committed | CrossBankTransfer.Aborted) -> None:
        pending = self._pending.pop(event.originator_id, None)
        transfer_id, role = pending or self._look_up(event.originator_id)
        fields = {"transfer_id": transfer_id, "bank": self.bank_id, "role": role}
        if isinstance(event, CrossBankTransfer.Aborted):
            self.transfers.labels(role, TransferStatus.ABORTED, event.reason).inc()
            fields["reason"] = event.reason
            log.info("transfer %s aborted: %s", transfer_id, event.reason, extra=fields)
        else:
            self.transfers.labels(role, TransferStatus.COMMITTED, "").inc()
            log.debug("transfer %s committed", transfer_id, extra=fields)

    def _look_up(self, transfer: UUID) -> tuple[str, str]:
        """A transfer started before this process: its id and role, from its first event."""
        if self.application is not None:
            for event in self.application.events.get(transfer, lte=1):
                if isinstance(event, CrossBankTransfer.Started):
                    return event.transfer_id, event.role
        return str(transfer), "unknown"


def ledger_metrics(request: Request) -> LedgerMetrics:
    """A dependency: the serving bank's metrics."""
    metrics = request.app.state.metrics
    if not isinstance(metrics, LedgerMetrics):
        raise TypeError(f"this service's metrics are {type(metrics).__name__}, not a bank's")
    return metrics


LedgerMetricsDep = Annotated[LedgerMetrics, Depends(ledger_metrics)]
