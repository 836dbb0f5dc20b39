"""Signed checkpoints of a bank's log: the bank follows its own log with the hash chain
(services/common/chain.py) and, now and then, sends the clearing house the chain's head at a
position, signed with its Ed25519 key. An auditor compares a replayed chain with the clearing
house's copies, so a log rewritten along with the bank's own records still shows."""

from __future__ import annotations

import logging
import threading

from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from services.common.chain import ZERO_HASH, next_head
from services.common.outbox import Outbox
from services.ledger.application import (
    Ledger,
)
from shared.protocol import CheckpointPublished
from shared.signing import SigningKey, checkpoint_payload

log = logging.getLogger(__name__)

_QUEUED_TOPIC = get_topic(Outbox.Queued)
# Saved with the first message an outbox queues (perhaps a checkpoint): news of nothing.
_OPENED_TOPIC = get_topic(Outbox.Opened)
_CHECKPOINT_TAG = CheckpointPublished.__struct_config__.tag


class Checkpointer:
    """Keeps the head of the bank's hash chain and sends signed checkpoints of it."""

    def __init__(self, ledger: Ledger, key: SigningKey, *, batch_size: int = 1000) -> None:
        self.ledger = ledger
        self.key = key
        self.batch_size = batch_size
        self.position = 0
        self.head = ZERO_HASH
        # The last position a checkpoint covered, and the last event that was not itself the
        # queueing of a checkpoint: a checkpoint is due only when the second passes the first,
        # or each checkpoint would call for another.
        self.checkpointed = 0
        self.last_other_event = 0
        self._lock = threading.Lock()

    def catch_up(self) -> None:
        """Fold every event stored since the last call into the chain, in log order."""
        for notifications in self.ledger.follow(self.position + 1, batch_size=self.batch_size):
            for notification in notifications:
                self.head = next_head(self.head, notification)
                self.position = notification.id
                if notification.topic == _OPENED_TOPIC:
                    continue
                covered = self._checkpoint_position(notification)
                if covered is None:
                    self.last_other_event = notification.id
                else:
                    self.checkpointed = max(self.checkpointed, covered)

    def checkpoint(self) -> CheckpointPublished | None:
        """Send a signed checkpoint of the log as it stands, if anything new was stored."""
        with self._lock:
            self.catch_up()
            if self.last_other_event <= self.checkpointed:
                return None
            payload = checkpoint_payload(self.ledger.bank_id, self.position, self.head.hex())
            checkpoint = CheckpointPublished(
                position=self.position,
                chain_hash=self.head.hex(),
                signature=self.key.sign(payload),
            )
            self.ledger.send_checkpoint(checkpoint)
            self.checkpointed = self.position
            return checkpoint

    def _checkpoint_position(self, notification: Notification) -> int | None:
        """The position a stored checkpoint message covers, if this event queued one."""
        if notification.topic != _QUEUED_TOPIC:
            return None
        queued = self.ledger.mapper.to_domain_event(notification)
        message = queued.message if isinstance(queued, Outbox.Queued) else {}
        if message.get("type") != _CHECKPOINT_TAG:
            return None
        position: int = message["position"]
        return position

    def checkpoint_and_log(self) -> None:
        """One turn of the periodic job (``Periodic``): checkpoint, and say so."""
        sent = self.checkpoint()
        if sent is not None:
            log.info("checkpoint at position %d sent", sent.position)
