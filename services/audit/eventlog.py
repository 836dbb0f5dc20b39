"""A bank's event log opened for reading only: never a store, a schema or a table created.

The rows come straight from the events table, as plain tuples in large batches, in
notification order: the columns and the conversion eventsourcing's own recorder uses (a
SQLite originator id is text, read as a UUID), without its per-row objects. Events are
decoded by a mapper configured like the ledger's (msgspec parses the usual event), so the
audit sees exactly what the ledger wrote and what it would read back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from eventsourcing.persistence import PersistenceError
from psycopg import sql

from services.audit.state_decoder import StateDecoder
from services.clearing import APPLICATION_NAME as CLEARING
from services.common.application import ServiceApplication
from services.common.stores import Store, StoreURLError, parse_store_url
from services.ledger import APPLICATION_NAME as LEDGER

# What the ledger's recorder calls its events table on each kind of store (on PostgreSQL the
# table is named after the application: another one's log, the clearing house's, is elsewhere).
SQLITE_EVENTS_TABLE = "stored_events"
POSTGRES_EVENTS_TABLE = f"{LEDGER.lower()}_events"
DEFAULT_BATCH_SIZE = 5_000
# Whose log a store holds, told by the topics of its first events: each application's own
# aggregates live in its own package (events both write, such as the outbox's, tell nothing).
LOG_OWNERS = {"services.ledger.": LEDGER, "services.clearing.": CLEARING}
LOG_NAMES = {LEDGER: "a bank's log", CLEARING: "the clearing house's log"}
OWNER_ROWS = 100


class UnusableStore(Exception):
    """The store cannot be audited: a one-line reason, fit to show an operator."""


class AnotherLog(UnusableStore):
    """The store holds another application's log (the clearing house's given as a bank's)."""


class _LogReader(ServiceApplication):
    """An application's mapper and recorder, configured only by the given settings.

    It has the application's name (PostgreSQL tables are named after it) and eventsourcing's
    default transcodings, as the ledger and the clearing house do, so its mapper decodes what
    theirs encoded; it never creates tables (its settings say ``CREATE_TABLE=no``) and, as
    every ServiceApplication, it ignores the process environment, so the audit reads the store
    it was told to and no other. Neither application sets a cipher or a compressor, so none is
    configured here either. A reader never saves.
    """

    def __init__(self, name: str, env: Mapping[str, str]) -> None:
        self.name = name
        super().__init__(env=env)


class StoredRow(NamedTuple):
    """One row of an events table, as eventsourcing's recorder would read it."""

    id: int
    originator_id: UUID | str
    originator_version: int
    topic: str
    state: bytes


# The columns of a row, in StoredRow's order, as the table gives them.
RawRow = tuple[Any, ...]
# (first position, how many rows at most) -> the rows from that position on, in order.
RowQuery = Callable[[int, int], Sequence[RawRow]]

_SQLITE_ROWS = (
    "SELECT rowid, originator_id, originator_version, topic, state "
    "FROM stored_events WHERE rowid >= ? ORDER BY rowid LIMIT ?"
)
_new_row = tuple.__new__
_REMEMBERED_IDS = 10_000


@dataclass
class EventLog:
    """One bank's notification log, open for reading."""

    description: str
    reader: _LogReader
    # SQLite numbers rows 1, 2, 3 ... and never skips one; PostgreSQL's sequence skips a
    # number whenever a transaction that took it rolls back, so a gap there means nothing.
    contiguous_ids: bool
    query: RowQuery
    # Whether an originator id is read as text and turned into a UUID (SQLite), or comes as
    # one from the driver (PostgreSQL).
    ids_as_text: bool
    close_rows: Callable[[], None]

    def __post_init__(self) -> None:
        self.decode = StateDecoder(self.reader.mapper)
        self._ids: dict[Any, UUID] = {}

    def max_position(self) -> int:
        """The highest notification id now in the log (0 when it is empty)."""
        try:
            return self.reader.recorder.max_notification_id() or 0
        except PersistenceError as e:
            raise UnusableStore(f"cannot read {self.description}: {_first_line(e)}") from None

    def batches(
        self, start: int = 1, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[list[StoredRow | UnreadableRow]]:
        """The log from ``start`` on, in notification order, one batch at a time.

        A row whose originator id is not a UUID (the recorder could not read it either) comes
        back as an UnreadableRow, in its place, and the rest as usual.
        """
        while True:
            try:
                raw = self.query(start, batch_size)
            except (sqlite3.Error, psycopg.Error) as e:
                raise UnusableStore(f"cannot read {self.description}: {_first_line(e)}") from None
            if not raw:
                return
            yield self._rows(raw)
            start = raw[-1][0] + 1

    def _rows(self, raw: Sequence[RawRow]) -> list[StoredRow | UnreadableRow]:
        ids = self._ids
        if len(ids) >= _REMEMBERED_IDS:
            ids.clear()
        rows: list[StoredRow | UnreadableRow] = []
        append = rows.append
        for row in raw:
            originator_id = row[1]
            converted = ids.get(originator_id)
            if converted is None:
                try:
                    converted = self._uuid(originator_id)
                except (ValueError, TypeError, AttributeError) as e:
                    append(UnreadableRow(row[0], _first_line(e)))
                    continue
                ids[originator_id] = converted
            append(_new_row(StoredRow, (row[0], converted, row[2], row[3], row[4])))
        return rows

    def _uuid(self, originator_id: Any) -> UUID:
        if not self.ids_as_text:
            if type(originator_id) is not UUID:
                raise TypeError(f"originator id {originator_id!r} is not a UUID")
            return originator_id
        return UUID(originator_id)

    def close(self) -> None:
        self.close_rows()
        self.reader.close()


@dataclass(frozen=True)
class UnreadableRow:
    """A row of the events table that the recorder could not read."""

    id: int
    reason: str


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def open_event_log(url: str, application: str = LEDGER) -> EventLog:
    """Open the log of the store at ``url`` for reading; UnusableStore says why it cannot be.

    ``application``: whose log it is, by the eventsourcing application's name (a bank's
    ``Ledger`` unless told otherwise, e.g. ``Clearing``).
    """
    try:
        store = parse_store_url(url)
    except StoreURLError as e:
        raise UnusableStore(str(e)) from None
    module = store.env["PERSISTENCE_MODULE"]
    if module == "eventsourcing.sqlite":
        log = _open_sqlite(store, application)
    elif module == "eventsourcing.postgres":
        log = _open_postgres(store, application)
    else:
        raise UnusableStore(f"{store.description}: an in-memory store keeps no log to audit")
    try:
        _check_owner(log, application)
    except BaseException:
        log.close()
        raise
    return log


def _log_name(application: str) -> str:
    return LOG_NAMES.get(application, f"{application}'s log")


def _check_owner(log: EventLog, application: str) -> None:
    """UnusableStore if the first events that belong to an application are another's: the
    clearing house's store given as a bank's would otherwise be replayed into hundreds of
    problems, none of them the real one."""
    try:
        rows = log.query(1, OWNER_ROWS)
    except (sqlite3.Error, psycopg.Error) as e:
        raise UnusableStore(f"cannot read {log.description}: {_first_line(e)}") from None
    for row in rows:
        topic = str(row[3])
        owner = next((app for prefix, app in LOG_OWNERS.items() if topic.startswith(prefix)), None)
        if owner is None:
            continue
        if owner != application:
            raise AnotherLog(
                f"{log.description} is not {_log_name(application)}: it is "
                f"{_log_name(owner)} (event {row[0]} is {topic.rpartition(':')[2]})"
            )
        return


def _open_sqlite(store: Store, application: str) -> EventLog:
    path = Path(store.env["SQLITE_DBNAME"])
    if not path.is_file():
        raise UnusableStore(f"no SQLite file at {path}")
    # Read-only: neither this check nor the recorder below can create or change anything.
    uri = f"{path.as_uri()}?mode=ro"
    # One connection checks the file and then reads its rows.
    try:
        rows = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as e:
        raise UnusableStore(f"{store.description} cannot be read: {_first_line(e)}") from None
    try:
        journal_mode = rows.execute("PRAGMA journal_mode").fetchone()[0]
        has_table = rows.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
            (SQLITE_EVENTS_TABLE,),
        ).fetchone()
    except sqlite3.Error as e:
        rows.close()
        raise UnusableStore(f"{store.description} cannot be read: {_first_line(e)}") from None
    if not has_table:
        rows.close()
        raise UnusableStore(
            f"{store.description} has no {SQLITE_EVENTS_TABLE} table: not an event store"
        )
    if str(journal_mode).lower() != "wal":
        rows.close()
        # eventsourcing puts every store it opens in WAL mode and would switch this one,
        # which a read-only audit must not do.
        raise UnusableStore(
            f"{store.description} is not in WAL mode, as the ledger leaves its stores; "
            "audit a copy made with `sqlite3 bank.db '.backup copy.db'`"
        )
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": uri,
        "CREATE_TABLE": "no",
    }
    reader = _open_reader(store, application, env, rows.close)
    statement = _SQLITE_ROWS

    def query(start: int, limit: int) -> list[RawRow]:
        return rows.execute(statement, (start, limit)).fetchall()

    return EventLog(
        store.description,
        reader,
        contiguous_ids=True,
        query=query,
        ids_as_text=True,
        close_rows=rows.close,
    )


def _open_postgres(store: Store, application: str) -> EventLog:
    env = store.env
    schema = env.get("POSTGRES_SCHEMA") or "public"
    events_table = f"{application.lower()}_events"
    # One connection checks the table and then reads its rows.
    try:
        rows = psycopg.connect(store.postgres_conninfo(), autocommit=True)
    except psycopg.Error as e:
        raise UnusableStore(f"cannot use {store.description}: {_first_line(e)}") from None
    try:
        table = sql.Identifier(schema, events_table).as_string(rows)
        row = rows.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    except psycopg.Error as e:
        rows.close()
        raise UnusableStore(f"cannot use {store.description}: {_first_line(e)}") from None
    if row is None or row[0] is None:
        rows.close()
        raise UnusableStore(
            f"{store.description} has no {events_table} table: no {application} log there"
        )
    reader = _open_reader(store, application, {**env, "CREATE_TABLE": "no"}, rows.close)
    statement = sql.SQL(
        "SELECT notification_id, originator_id, originator_version, topic, state "
        "FROM {} WHERE notification_id >= %s ORDER BY notification_id LIMIT %s"
    ).format(sql.Identifier(schema, events_table))

    def query(start: int, limit: int) -> list[RawRow]:
        return rows.execute(statement, (start, limit), prepare=True).fetchall()

    return EventLog(
        store.description,
        reader,
        contiguous_ids=False,
        query=query,
        ids_as_text=False,
        close_rows=rows.close,
    )


def _open_reader(
    store: Store, application: str, env: dict[str, str], close_rows: Callable[[], None]
) -> _LogReader:
    """The application's mapper and recorder; UnusableStore (the rows' connection closed) if
    they cannot be made."""
    try:
        return _LogReader(application, env)
    except (PersistenceError, OSError, sqlite3.Error, psycopg.Error) as e:
        close_rows()
        raise UnusableStore(f"cannot open {store.description}: {_first_line(e)}") from None
