"""What `ledger serve` and `clearing serve` check before they open their store: that they can
listen on their port, and that no other service holds the store."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field
from pathlib import Path

from services.common.stores import Store
from services.local.held_file import HeldElsewhere, HeldFile

LOCK_SUFFIX = ".lock"
MAX_PORT = 65535


class Refused(RuntimeError):
    """The service must not start; the message says why and what to do, in one line."""


def check_listening(host: str, port: int) -> None:
    """Refused if the port cannot be listened on (in use, privileged, out of range) or the
    host is not an address here. Checked before the store is opened, so a service that
    cannot serve writes nothing; uvicorn binds again a moment later."""
    if not 0 <= port <= MAX_PORT:
        raise Refused(f"--port {port}: a port is a number from 0 to {MAX_PORT}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise Refused(f"--host {host}: not an address to listen on ({e})") from None
    with socket.socket(family, kind, proto) as sock:
        # As uvicorn does: a port whose last connections are in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as e:
            raise Refused(f"cannot listen on {host}:{port} ({e.strerror}){_hint(e)}") from None


def _hint(error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return ": another process listens there; stop it, or give another --port"
    if error.errno == errno.EACCES:
        return ": a port below 1024 needs privileges; give another --port"
    if error.errno == errno.EADDRNOTAVAIL:
        return ": that address is not this host's; give one of its own with --host"
    return ""


def check_log_owner(store: Store, application: str) -> None:
    """Refused if an existing SQLite store holds another application's log: a bank served on
    the clearing house's store would write its events among the clearing house's."""
    from services.audit.eventlog import AnotherLog, UnusableStore, open_event_log

    if store.env.get("PERSISTENCE_MODULE") != "eventsourcing.sqlite":
        return  # on PostgreSQL each application has tables of its own
    if not Path(store.env["SQLITE_DBNAME"]).is_file():
        return
    try:
        open_event_log(store.url, application).close()
    except AnotherLog as e:
        raise Refused(f"{e}; give this service its own --store") from None
    except UnusableStore:
        return  # new, or not readable as a log yet: opening the store says what is wrong


@dataclass
class StoreLock:
    """An exclusive lock on a SQLite store for as long as one service runs on it: a file
    beside the store (``bank.db.lock``), locked with flock.

    SQLite has no such lock of its own: a second service on the same file would relay the same
    outbox and apply the same inbox as the first. The kernel drops a flock when the process
    ends, however it ends, so a crash leaves no stale lock. Other kinds of store are not
    locked here.
    """

    store: Store
    _held: HeldFile | None = field(default=None, repr=False)

    @property
    def path(self) -> Path | None:
        if self.store.env.get("PERSISTENCE_MODULE") != "eventsourcing.sqlite":
            return None
        database = Path(self.store.env["SQLITE_DBNAME"])
        return database.with_name(database.name + LOCK_SUFFIX)

    def acquire(self, holder: str) -> None:
        """Hold the lock, saying ``holder`` in it; Refused if another process holds it."""
        path = self.path
        if path is None:
            return
        held = HeldFile(path)
        try:
            held.acquire(f"{holder}, ")
        except OSError as e:
            raise Refused(f"cannot lock {self.store.description}: {e.strerror}") from None
        except HeldElsewhere as e:
            raise Refused(
                f"{self.store.description} is in use by another service ({e}); stop it "
                "first, or give this one another --store"
            ) from None
        self._held = held

    def release(self) -> None:
        if self._held is not None:
            self._held.release()
            self._held = None
