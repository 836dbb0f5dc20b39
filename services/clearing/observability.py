"""What the clearing house tells its operator: its metrics (transfers and how long each took to
decide, decisions sent again, settlement cycles) and a log line, with the transfer's id and
banks as fields, for each transfer it aborts."""

from __future__ import annotations

import logging
from datetime import datetime
from uuid import UUID

from prometheus_client import Counter, Histogram

from services.clearing.domain import Transfer
from services.clearing.domain_terms import TransferPhase
from services.clearing.settlement import SettlementCycle
from services.common.application import SavedEvents
from services.common.metrics import ServiceMetrics

log = logging.getLogger(__name__)

# From a transfer's request to its decision: milliseconds on a quiet federation, up to the
# deadline (30 s by default) when the payee's bank does not answer.
DECISION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Requested:
    """What the clearing house's log line and latency need of a transfer still undecided."""

    def __init__(self, event: Transfer.Requested) -> None:
        self.transfer_id = event.transfer_id
        self.payer_bank = event.payer_bank
        self.payee_bank = event.payee_bank
        self.at: datetime = event.timestamp


class ClearingMetrics(ServiceMetrics):
    """The clearing house's metrics, counted from the events each committed save stored:
    once each, however often a batch of messages was applied before it was saved."""

    def __init__(self) -> None:
        super().__init__()
        self.transfers = Counter(
            "timebank_clearing_transfers",
            "Cross-bank transfers at the clearing house: requested, committed, or aborted "
            "with the reason.",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "timebank_clearing_transfer_decision_seconds",
            "From a transfer's request to its decision, by the timestamps of its events.",
            ["outcome"],
            buckets=DECISION_BUCKETS,
            registry=self.registry,
        )
        self.resends = Counter(
            "timebank_clearing_decision_resends",
            "Decisions sent again to a bank that had not applied them (one per bank).",
            registry=self.registry,
        )
        self.cycles = Counter(
            "timebank_settlement_cycles",
            "Settlement cycles, opened and completed.",
            ["event"],
            registry=self.registry,
        )
        self._requested: dict[UUID, _Requested] = {}

    def saved(self, events: SavedEvents) -> None:
        for event in events:
            if isinstance(event, Transfer.Requested):
                self._requested[event.originator_id] = _Requested(event)
                self.transfers.labels("requested", "").inc()
            elif isinstance(event, Transfer.Committed | Transfer.Aborted):
                self._decided(event)
            elif isinstance(event, Transfer.Resent):
                self.resends.inc(len(event.to))
            elif isinstance(event, SettlementCycle.Opened):
                self.cycles.labels("opened").inc()
            elif isinstance(event, SettlementCycle.Completed):
                self.cycles.labels("completed").inc()

    def _decided(self, event: Transfer.Committed | Transfer.Aborted) -> None:
        requested = self._requested.pop(event.originator_id, None) or self._look_up(
            event.originator_id
        )
        if isinstance(event, Transfer.Aborted):
            outcome, reason = TransferPhase.ABORTED, event.reason
        else:
            outcome, reason = TransferPhase.COMMITTED, ""
        self.transfers.labels(outcome, reason).inc()
        if requested is None:
            return
        seconds = (event.timestamp - requested.at).total_seconds()
        self.decision_seconds.labels(outcome).observe(max(seconds, 0.0))
        fields = {
            "transfer_id": requested.transfer_id,
            "bank": requested.payer_bank,
            "payee_bank": requested.payee_bank,
        }
        if reason:
            fields["reason"] = reason
            log.info("transfer %s aborted: %s", requested.transfer_id, reason, extra=fields)
        else:
            log.debug("transfer %s committed", requested.transfer_id, extra=fields)

    def _look_up(self, transfer: UUID) -> _Requested | None:
        """A transfer requested before this process started: from its first event."""
        if self.application is not None:
            for event in self.application.events.get(transfer, lte=1):
                if isinstance(event, Transfer.Requested):
                    return _Requested(event)
        return None
