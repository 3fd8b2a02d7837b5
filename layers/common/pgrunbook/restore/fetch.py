"""Fetching the archive for a restore: once, into a work folder, hashed and its contents listed on the
way (dumpfile.read_dump, the reader verify-backup uses too).

Invariants: an S3 archive is streamed once into the work folder (its free space checked first), a
local file is read in place, a `.dump.tar` is extracted while every byte of the tar is hashed; the
contents never decide before the checksum does (read_dump hashes every byte even when they stop
reading), so damage is reported as damage. The work folder is removed on the way out, and by
pgtools' guardian should pgrunbook be killed.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..archive import ArchiveRef
from ..dumpfile import DumpContents, read_dump
from ..errors import NotEnoughSpace
from ..pgtools import PgRestore
from ..processes import guard_path
from ..store import LocalStore


@contextlib.contextmanager
def work_dir(base: str | None) -> Iterator[Path]:
    """A fresh folder under `base` (RestoreOptions.work_dir, else Settings.work_dir) or the system's temporary
    folder, removed afterwards (and by the guardian should pgrunbook be killed)."""
    root = Path(base or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="pgrunbook-restore-", dir=root))
    guard = guard_path(path)  # removed by the guardian should pgrunbook be killed
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        guard.release()


@dataclass(frozen=True)
class Fetched:
    path: Path  # the file (custom, plain) or the extracted folder (directory-tar) the tools load from
    contents: DumpContents

    @property
    def sha256(self) -> str:
        return self.contents.sha256

    @property
    def bytes(self) -> int:
        return self.contents.bytes


class _Counted:
    """A byte stream that reports the bytes read so far (`on_bytes(n)`, progress)."""

    def __init__(self, stream: IO[bytes], on_bytes: Callable[[int], None]) -> None:
        self.stream, self.on_bytes, self.bytes = stream, on_bytes, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.bytes += len(data)
        self.on_bytes(self.bytes)
        return data

    def close(self) -> None:
        self.stream.close()


def fetch(ref: ArchiveRef, fmt: str, work: Path, pg_restore: PgRestore | None,
          on_bytes: Callable[[int], None] | None = None) -> Fetched:
    """The archive where the tools can load it from, read once (`pg_restore` lists its contents);
    `on_bytes(n)`: the archive's bytes read so far (progress)."""
    local = isinstance(ref.store, LocalStore)
    size = ref.store.size(ref.key)
    if not local or fmt == "directory-tar":
        free = shutil.disk_usage(work).free
        if free < size * 1.05 + 64 * 1024 * 1024:
            raise NotEnoughSpace(f"not enough free space in {work} for the {size} byte archive "
                                 "(set PGRUNBOOK_WORK_DIR or --work-dir to a larger disk)")
    if fmt == "directory-tar":
        into: Path | None = work / "archive.d"
    else:
        into = None if local else work / ref.name  # pg_restore -j needs a seekable file: S3 is copied
    with contextlib.closing(ref.open()) as opened:
        stream: Any = opened if on_bytes is None else _Counted(opened, on_bytes)
        contents = read_dump(stream, fmt, gz=ref.name.endswith(".gz"), pg_restore=pg_restore, into=into)
    if into is not None:
        return Fetched(path=into, contents=contents)
    assert isinstance(ref.store, LocalStore)
    return Fetched(path=ref.store.path(ref.key), contents=contents)
