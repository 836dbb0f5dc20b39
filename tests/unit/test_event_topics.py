"""Stored events are found again by their topic (module and class path): moving an aggregate to
another module would make every event already stored under the old topic unreadable or, worse,
invisible to readers that select by topic (the clearing's index, the audit)."""

from __future__ import annotations

import pytest
from eventsourcing.utils import get_topic, resolve_topic

# Every aggregate and event topic in the project's stores, as written since the first release.
STORED_TOPICS = [
    "services.clearing.domain:CheckpointLog",
    "services.clearing.domain:CheckpointLog.Recorded",
    "services.clearing.domain:CheckpointLog.Started",
    "services.clearing.domain:Directory",
    "services.clearing.domain:Directory.Listed",
    "services.clearing.domain:Directory.Opened",
    "services.clearing.domain:MemberBank",
    "services.clearing.domain:MemberBank.Admitted",
    "services.clearing.domain:MemberBank.Credited",
    "services.clearing.domain:MemberBank.Debited",
    "services.clearing.domain:MemberBank.Reinstated",
    "services.clearing.domain:MemberBank.Released",
    "services.clearing.domain:MemberBank.Reserved",
    "services.clearing.domain:MemberBank.Settled",
    "services.clearing.domain:MemberBank.SettlementExpected",
    "services.clearing.domain:MemberBank.Suspended",
    "services.clearing.domain:MemberBank.TokenIssued",
    "services.clearing.domain:Transfer",
    "services.clearing.domain:Transfer.Aborted",
    "services.clearing.domain:Transfer.Acknowledged",
    "services.clearing.domain:Transfer.Committed",
    "services.clearing.domain:Transfer.Requested",
    "services.clearing.settlement:SettlementBook",
    "services.clearing.settlement:SettlementBook.CycleClosed",
    "services.clearing.settlement:SettlementBook.CycleOpened",
    "services.clearing.settlement:SettlementBook.Started",
    "services.clearing.settlement:SettlementCycle",
    "services.clearing.settlement:SettlementCycle.Completed",
    "services.clearing.settlement:SettlementCycle.ObligationConfirmed",
    "services.clearing.settlement:SettlementCycle.Opened",
    "services.common.idempotency:IdempotencyRecord",
    "services.common.idempotency:IdempotencyRecord.Recorded",
    "services.common.outbox:Outbox",
    "services.common.outbox:Outbox.Opened",
    "services.common.outbox:Outbox.Queued",
    "services.ledger.domain:Account",
    "services.ledger.domain:Account.Credited",
    "services.ledger.domain:Account.Debited",
    "services.ledger.domain:Account.Entry",
    "services.ledger.domain:Account.HoldEvent",
    "services.ledger.domain:Account.HoldPlaced",
    "services.ledger.domain:Account.HoldPosted",
    "services.ledger.domain:Account.HoldVoided",
    "services.ledger.domain:Account.Opened",
    "services.ledger.domain:BankDirectory",
    "services.ledger.domain:BankDirectory.Opened",
    "services.ledger.domain:BankDirectory.Replaced",
    "services.ledger.domain:BankPolicy",
    "services.ledger.domain:BankPolicy.Adopted",
    "services.ledger.domain:BankPolicy.DefaultOverdraftChanged",
    "services.ledger.domain:CrossBankTransfer",
    "services.ledger.domain:CrossBankTransfer.Aborted",
    "services.ledger.domain:CrossBankTransfer.Committed",
    "services.ledger.domain:CrossBankTransfer.Started",
]


@pytest.mark.parametrize("topic", STORED_TOPICS)
def test_every_stored_topic_still_names_its_class_where_it_was_defined(topic: str) -> None:
    # Defined there, not merely importable from there: get_topic(cls) is what new events get.
    assert get_topic(resolve_topic(topic)) == topic
