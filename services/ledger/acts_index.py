"""Who recorded what for a member: coordinators' acts, folded from the log's ActedFor events,
by the member and by what they made (an exchange's or a transfer's id), so that a member's
statement can say which entries a coordinator recorded for them."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from eventsourcing.utils import get_topic

from services.ledger.directory_index import Follow
from services.ledger.domain_access import Login

TOPICS = (get_topic(Login.Invited), get_topic(Login.ActedFor))


@dataclass(frozen=True)
class ActFor:
    """One thing a coordinator did for a member."""

    at: datetime
    coordinator: str
    action: str
    reference: str


class ActsIndex:
    """Every coordinator's acts, by member; read on from where the last call ended, under the
    lock, so it is always a whole-transaction prefix of the log."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next_position = 1
        self._logins: dict[object, str] = {}  # a login's aggregate id -> its login
        self._by_member: dict[str, list[ActFor]] = {}
        self._by_reference: dict[str, str] = {}

    def catch_up(self, follow: Follow) -> None:
        for position, event in follow(self.next_position, TOPICS):
            if isinstance(event, Login.Invited):
                self._logins[event.originator_id] = event.login
            elif isinstance(event, Login.ActedFor):
                who = self._logins.get(event.originator_id, "")
                act = ActFor(event.timestamp, who, event.action, event.reference)
                self._by_member.setdefault(event.member_id, []).append(act)
                if event.reference:
                    self._by_reference[event.reference] = who
            self.next_position = position + 1

    def for_member(self, follow: Follow, member_id: str) -> list[ActFor]:
        with self.lock:
            self.catch_up(follow)
            return list(self._by_member.get(member_id, ()))

    def recorded_by(self, follow: Follow, references: list[str]) -> dict[str, str]:
        """Of these exchange or transfer ids, those a coordinator recorded: id -> who."""
        with self.lock:
            self.catch_up(follow)
            return {r: self._by_reference[r] for r in references if r in self._by_reference}
