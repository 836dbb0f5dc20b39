"""A consistent copy of a federation's data dir, taken while it runs: each SQLite store by
SQLite's online backup (a snapshot of a whole transaction, never half of one), with the keys,
the NATS users and federation.json beside them, so the copy is a data dir that `timebank audit
federation --data-dir` audits and `timebank up --data-dir` runs."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

from services.local.datadir import DESCRIPTION_FILE, read_description

# Besides the stores: what a data dir needs to run again (not NATS's own files: the streams
# are rebuilt from the services' outboxes, which the stores hold).
KEPT = ("keys", "joined", "nats-auth.conf", DESCRIPTION_FILE)
_SQLITE = "sqlite:///"


class BackupError(RuntimeError):
    """The backup could not be made; the message says why, in one line."""


def backup_data_dir(data_dir: Path, out: Path) -> list[Path]:
    """Copy DATA_DIR's stores and keys into OUT (which must not exist yet); returns the stores
    copied. A store elsewhere (on PostgreSQL) is not copied: BackupError says which, before
    anything is written; back those up with pg_dump."""
    data_dir = data_dir.resolve()
    try:
        described = read_description(data_dir)
    except (OSError, ValueError) as e:
        raise BackupError(f"no federation described in {data_dir}: {e}") from None
    if out.exists():
        raise BackupError(f"{out} exists already: give a new folder")
    stores = [described["clearing"]["store"]]
    stores += [bank["store"] for bank in described["banks"].values() if bank.get("store")]
    sources = [Path(url[len(_SQLITE) :]) for url in stores if url.startswith(_SQLITE)]
    elsewhere = [url for url in stores if not url.startswith(_SQLITE)]
    elsewhere += [str(p) for p in sources if not p.is_relative_to(data_dir)]
    if elsewhere:
        raise BackupError(
            f"{len(elsewhere)} of the stores are not in {data_dir} (on PostgreSQL, or "
            "elsewhere): back those up with pg_dump (or SQLite's .backup), not with this"
        )
    out.mkdir(parents=True, mode=0o700)
    copied = []
    for source in sources:
        target = out / source.relative_to(data_dir)
        try:
            with (
                closing(sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True)) as src,
                closing(sqlite3.connect(target)) as dst,
            ):
                src.backup(dst)
                # The ledger's stores are in WAL mode; the audit reads only such stores.
                dst.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as e:
            raise BackupError(f"cannot back up {source}: {e}") from None
        target.chmod(0o600)
        copied.append(target)
    for name in KEPT:
        path = data_dir / name
        if path.is_dir():
            shutil.copytree(path, out / name)
        elif path.exists():
            shutil.copy2(path, out / name)
    return copied
