"""Exact row counts read from the dump's own COPY data, instead of a second read of the database.

A parallel backup (directory format) leaves one data file per table in the staging folder:
`<dump id>.dat`, `.dat.gz` or `.dat.zst`, the table's rows in COPY text format followed by the
terminator pg_dump writes after them, `\\.` and two empty lines. While the staged dump is packed
into its tar, these files are decompressed on a helper thread and their line feeds counted.

Invariants (docs/architecture.md, "Exact counts"):

- COPY text format writes one row per line and escapes a line feed or carriage return inside a
  value (`\\n`, `\\r`), so a data file holds exactly rows + 3 line feeds. A file is counted only
  when it ends with exactly that terminator after a line feed (or is nothing but the terminator);
  anything else returns None and the caller counts that table with count(*) in the backup's
  snapshot, which is still open. The counts are therefore the rows in the archive itself, from
  the same snapshot pg_dump used.
- A table is matched to its data file by OID (the TABLE DATA entry of `pg_restore --list`, see
  dumpfile.TocEntry), never by name.
- A data file that does not decompress is a damaged dump: `BackupFailed`, the backup is not
  committed.
- Memory: one 1 MB chunk of decompressed output at a time, whatever the compression ratio.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .dbinfo import TableRef
from .errors import BackupFailed

if TYPE_CHECKING:  # dumpfile and pgtools are imported on the counting thread, off the backup's start-up path
    from .dumpfile import TocEntry
    from .pgtools import PgRestore

CHUNK = 1024 * 1024
TERMINATOR = b"\\.\n\n\n"  # what pg_dump writes after a table's COPY rows
TERMINATOR_LINES = TERMINATOR.count(b"\n")
SUFFIXES = (".dat", ".dat.gz", ".dat.zst")


def count_copy_rows(stream: IO[bytes]) -> int | None:
    """Rows in a COPY text stream that ends with pg_dump's terminator; None if it does not."""
    newlines = 0
    tail = b""
    keep = len(TERMINATOR) + 1
    while chunk := stream.read(CHUNK):
        newlines += chunk.count(b"\n")
        tail = (tail + chunk[-keep:])[-keep:]
    if tail == TERMINATOR:
        return 0
    if not (tail.endswith(TERMINATOR) and tail.startswith(b"\n")):
        return None
    return newlines - TERMINATOR_LINES


def _open_data(path: Path) -> IO[bytes]:
    if path.name.endswith(".zst"):
        import zstandard  # imported on the counting thread, off the backup's start-up path

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_size=CHUNK,
                                                          read_across_frames=True, closefd=True)
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]  # a binary file object
    return open(path, "rb")


def count_data_file(path: Path) -> int | None:
    """Rows in one pg_dump directory data file (None: not a complete COPY data file)."""
    import zstandard

    try:
        with _open_data(path) as stream:
            return count_copy_rows(stream)
    except (zlib.error, EOFError, gzip.BadGzipFile, zstandard.ZstdError) as exc:
        raise BackupFailed(f"the dump's data file {path.name} does not decompress: {exc}") from None


def data_files(folder: Path, entries: Iterable[TocEntry], tables: Iterable[TableRef]) -> dict[TableRef, Path]:
    """The data file of each table that has one in the dump folder (matched by OID)."""
    by_oid = {t.oid: t for t in tables}
    found: dict[TableRef, Path] = {}
    for entry in entries:
        table = by_oid.get(entry.oid) if entry.is_table_data else None
        if table is None:
            continue
        for suffix in SUFFIXES:
            path = folder / f"{entry.dump_id}{suffix}"
            if path.is_file():
                found[table] = path
                break
    return found


class ArchiveCounter:
    """Counts the rows of a staged dump on one helper thread (started by `start`, joined by `result`):
    `pg_restore --list` of the folder, then every table's data file, largest first.

    `result()` returns the counts it could read from the files; the tables it could not (no data
    file, no terminator) are in `missing` for a count(*) in the snapshot."""

    def __init__(self, folder: Path, tables: list[TableRef], pg_restore: PgRestore) -> None:
        self.folder, self.tables, self.pg_restore = folder, tables, pg_restore
        self.missing: list[TableRef] = []
        self.seconds = 0.0
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future[dict[TableRef, int]] | None = None
        self._stop = threading.Event()

    def _count_all(self) -> dict[TableRef, int]:
        from .dumpfile import parse_toc

        t0 = time.monotonic()
        counts: dict[TableRef, int] = {}
        files = data_files(self.folder, parse_toc(self.pg_restore.list_toc(self.folder)), self.tables)
        # largest first: the one that takes longest does not start last
        for table, path in sorted(files.items(), key=lambda item: -item[1].stat().st_size):
            if self._stop.is_set():
                break
            rows = count_data_file(path)
            if rows is not None:
                counts[table] = rows
        self.seconds = time.monotonic() - t0
        return counts

    def start(self) -> ArchiveCounter:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rowcount")
        self._future = self._pool.submit(self._count_all)
        return self

    def result(self) -> dict[TableRef, int]:
        if self._future is None:
            self.start()
        assert self._future is not None and self._pool is not None
        try:
            counts = self._future.result()
        finally:
            self._pool.shutdown(wait=True)
        self.missing = [t for t in self.tables if t not in counts]
        return counts

    def cancel(self) -> None:
        """Stop after the file being counted (the backup failed or was interrupted)."""
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
