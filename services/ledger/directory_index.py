"""The bank's member directory: every account's id and name, folded from the log, so members
can be listed in id order and searched without loading every account."""

from __future__ import annotations

import base64
import binascii
import bisect
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.utils import get_topic

from services.ledger.domain import Account
from services.ledger.domain_terms import MEMBER_ID_PATTERN, InvalidRequest, MemberKind

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200

# The application's follow_events: (position, event) from a position on, of these topics.
Follow = Callable[[int, Sequence[str]], Iterator[tuple[int, DomainEventProtocol[UUID]]]]


@dataclass
class Listing:
    """One account as the directory knows it."""

    member_id: str
    name: str
    system: bool

    def matches(self, folded_query: str) -> bool:
        return folded_query in self.member_id.casefold() or folded_query in self.name.casefold()


class MemberDirectory:
    """Member ids (kept sorted) and names, folded from the log's account events. Each call
    reads on only from where the last ended, under the lock, so the directory is always a
    whole-transaction prefix of the log."""

    def __init__(self) -> None:
        self.next_position = 1
        self.lock = threading.Lock()
        self._ids: list[str] = []
        self._listings: dict[str, Listing] = {}
        # Later events name their account by its aggregate id only.
        self._by_account: dict[UUID, Listing] = {}

    def opened(self, event: Account.Opened) -> None:
        listing = Listing(event.member_id, event.name, event.kind == MemberKind.SYSTEM)
        if event.member_id not in self._listings:
            bisect.insort(self._ids, event.member_id)
        self._listings[event.member_id] = listing
        self._by_account[event.originator_id] = listing

    def rename(self, account: UUID, name: str) -> None:
        self._by_account[account].name = name

    def page(
        self,
        follow: Follow,
        query: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
        *,
        include_system: bool = False,
    ) -> tuple[list[str], str | None]:
        """Up to ``limit`` member ids after the cursor's, in order, whose id or name contains
        ``query`` (in any case), and the cursor of the next page (None after the last)."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidRequest(f"limit must be 1-{MAX_PAGE_SIZE}")
        after = decode_cursor(cursor) if cursor is not None else None
        folded = query.casefold() if query else None
        found: list[str] = []
        with self.lock:
            for position, event in follow(self.next_position, TOPICS):
                FOLDS[type(event)](self, event)
                self.next_position = position + 1
            start = 0 if after is None else bisect.bisect_right(self._ids, after)
            for n in range(start, len(self._ids)):
                listing = self._listings[self._ids[n]]
                if listing.system and not include_system:
                    continue
                if folded is None or listing.matches(folded):
                    found.append(listing.member_id)
                    # One more than asked for says whether there is a next page.
                    if len(found) > limit:
                        break
        more = len(found) > limit
        return found[:limit], encode_cursor(found[limit - 1]) if more else None


# What each event the directory reads does to it; the topics it follows come from here, so
# another event is one line, e.g.
#   Account.Renamed: lambda directory, e: directory.rename(e.originator_id, e.name),
FOLDS: dict[type[Any], Callable[[MemberDirectory, Any], None]] = {
    Account.Opened: MemberDirectory.opened,
    Account.Renamed: lambda directory, e: directory.rename(e.originator_id, e.name),
}
TOPICS = tuple(get_topic(cls) for cls in FOLDS)


def encode_cursor(member_id: str) -> str:
    """The cursor after this member: its id, base64url-encoded without padding."""
    return base64.urlsafe_b64encode(member_id.encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> str:
    """The member id a cursor names; InvalidRequest if it is not a cursor this service gave."""
    unpadded = cursor.rstrip("=")
    try:
        raw = base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), b"-_", validate=True)
        member_id = raw.decode()
    except (binascii.Error, UnicodeError, ValueError):
        member_id = ""
    if not MEMBER_ID_PATTERN.fullmatch(member_id):
        raise InvalidRequest("cursor is not one this service gave: pass a page's next_cursor")
    return member_id
