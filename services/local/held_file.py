"""A file held under an exclusive lock (flock) for as long as a process runs, naming who
holds it: the kernel drops the lock when the process ends, however it ends, so a crash leaves
no stale lock. A data dir (`timebank up`) and a SQLite store (a service) are held this way."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO


class HeldElsewhere(RuntimeError):
    """Another process holds the file; the message is what it wrote there (who it is)."""


class HeldFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self, holder: str) -> None:
        """Hold the file, writing ``holder`` and this pid in it; HeldElsewhere if another
        process holds it; OSError if it cannot be made."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        held = self.path.open("a+")
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.seek(0)
            other = held.read().strip() or "another process"
            held.close()
            raise HeldElsewhere(other) from None
        held.seek(0)
        held.truncate()
        held.write(f"{holder}pid {os.getpid()}\n")
        held.flush()
        self._file = held

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.truncate(0)
            self._file.close()
            self._file = None
