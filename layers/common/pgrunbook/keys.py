"""The backup store's key layout: the one module that spells where things live under DEST (a folder or
`s3://bucket/prefix`). Every other module builds a key through these names, never by spelling a prefix.

    <database>/<kind>/YYYY/MM/db-backup-YYYYMMDD-HHMMSSZ.<ext>   an archive (.dump, .dump.tar, .sql.gz, ...)
        ...<ext>.sha256  ...<ext>.manifest.json                   beside it (`sha256sum -c` format; the manifest)
        ...<ext>.partial                                          a short-lived claim / a file being written
    <database>/_index/backups.json                                the database's backup index (backup_index.py)
    _reports/restore/<database>/YYYY/MM/YYYYMMDD-HHMMSSZ-<mode>.json   restore and drill reports
    _reports/watch/<database>.json                                when a database was first seen (age metrics)
    _tasks/<execution>/<operation>[-<database>].json              a Fargate task's outcome
    _releases/<version>/migrations/                               a release's Prisma migrations folder

Invariants: a database name or a kind becomes a key segment only through `encode_segment` (reversible,
one-to-one, never empty, '.', '..', hidden, option-like, '_'-prefixed or holding '/'), so no name can
leave its folder, collide with another database's, or land in a reserved `_`-prefixed folder (a database
named `_reports` keeps its backups in `%5Freports/`). Report keys encode the database name the same way.
The backup index lives INSIDE its database's folder (no kind folder can be `_index`: kinds are encoded
too), so a store opened at DEST and one opened at `database_dest(DEST, db)` find the same object, and every
role that may write a database's backups may write its index.
The state machines (statemachines/*.asl.json) spell the `_tasks/` keys in `States.Format`, which cannot import: they
follow `task_result_key`.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import unquote

from .errors import UsageError

MANIFEST_SUFFIX = ".manifest.json"
SHA256_SUFFIX = ".sha256"
PARTIAL_SUFFIX = ".partial"

REPORTS_PREFIX = "_reports"
RESTORE_REPORTS_PREFIX = f"{REPORTS_PREFIX}/restore"
WATCH_PREFIX = f"{REPORTS_PREFIX}/watch"
TASKS_PREFIX = "_tasks"
RELEASES_PREFIX = "_releases"

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")


def encode_segment(name: str) -> str:
    """A database name or a kind as ONE path segment and S3 key segment; `decode_segment` reverses it.

    Each byte of the UTF-8 name outside [A-Za-z0-9_.-] is written %XX (uppercase hex), and so is a
    leading '.', '-' or '_': the result is never empty, '.', '..', hidden, option-like or one of the
    store's reserved `_` folders, never holds '/',
    a control character or anything a shell or S3 tool treats specially. '%' itself is always encoded,
    so the mapping is one-to-one. Ordinary names (app, my_db, app-2.v1) are unchanged; a 63-byte name
    (Postgres' limit) stays within 189 characters, under every file system's 255."""
    if not name:
        raise UsageError("an empty name cannot be a path segment")
    raw = name.encode("utf-8")
    return "".join(chr(b) if b in _SAFE and not (i == 0 and b in b".-_") else f"%{b:02X}"
                   for i, b in enumerate(raw))


def decode_segment(segment: str) -> str:
    """The name `encode_segment` encoded."""
    return unquote(segment, errors="strict")


def archive_key(database: str, kind: str, when: datetime, ext: str) -> str:
    """<database>/<kind>/<YYYY>/<MM>/db-backup-YYYYMMDD-HHMMSSZ.<ext>, the database and kind encoded as one
    path segment each (`..`, `a/b` or a newline cannot leave DEST)."""
    return (f"{encode_segment(database)}/{encode_segment(kind)}/{when:%Y}/{when:%m}/"
            f"db-backup-{when:%Y%m%d-%H%M%S}Z.{ext}")


def database_dest(dest: str, database: str) -> str:
    """The folder / S3 prefix under dest that holds the backups of one database (its encoded name)."""
    return f"{dest.rstrip('/')}/{encode_segment(database)}"


def restore_reports_prefix(database: str) -> str:
    """Where the restore and drill reports of one database live (keys sort by time)."""
    return f"{RESTORE_REPORTS_PREFIX}/{encode_segment(database)}/"


def restore_report_key(database: str, now: datetime, mode: str) -> str:
    return f"{restore_reports_prefix(database)}{now:%Y/%m}/{now:%Y%m%d-%H%M%S}Z-{mode}.json"


def watch_key(database: str) -> str:
    return f"{WATCH_PREFIX}/{encode_segment(database)}.json"


def task_result_key(execution: str, name: str) -> str:
    """A Fargate task's outcome: `_tasks/<execution name>/<name>.json` (an execution ARN's last part)."""
    safe = execution.rsplit(":", 1)[-1]
    return f"{TASKS_PREFIX}/{safe}/{name}.json"


def release_migrations_prefix(version: str) -> str:
    return f"{RELEASES_PREFIX}/{version}/migrations"


INDEX_FOLDER = "_index"
BACKUP_INDEX_NAME = f"{INDEX_FOLDER}/backups.json"
_ARCHIVE_DEPTH = 4  # <kind>/YYYY/MM/<file> under a database's folder


def split_archive_key(key: str) -> tuple[str, str] | None:
    """(database folder, key inside it) of an archive key laid out by `archive_key` — ('app',
    'manual/2026/12/db-backup-….dump') — under any store root; the folder is '' when the store is the
    database's own folder. None for a key too short to be one (a `--out` file, a deeper store)."""
    parts = key.split("/")
    if len(parts) < _ARCHIVE_DEPTH:
        return None
    return "/".join(parts[:-_ARCHIVE_DEPTH]), "/".join(parts[-_ARCHIVE_DEPTH:])


def backup_index_key(folder: str) -> str:
    """<folder>/_index/backups.json: the backup index of the database whose folder is `folder` ('' = the
    store is that folder)."""
    return f"{folder}/{BACKUP_INDEX_NAME}" if folder else BACKUP_INDEX_NAME
