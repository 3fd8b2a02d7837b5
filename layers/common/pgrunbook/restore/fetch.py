"""Fetching the archive for a restore: once, into a work folder, hashed on the way.

Invariants: an S3 archive is streamed once into the work folder (its free space checked first), a
local file is hashed in place, a `.dump.tar` is extracted while every byte of the tar is hashed; the
work folder is removed on the way out, and by pgtools' guardian should pgrunbook be killed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from ..archive import CHUNK, PLAIN_HEADER, PLAIN_TRAILER, ArchiveRef, HashingReader, TocEntry, parse_toc
from ..errors import ArchiveCorrupt, NotEnoughSpace
from ..errors import UnreadableTar as UnreadableTar  # re-exported: restore.run catches it
from ..pgtools import Tool, guard_path, run_captured, tool_env
from ..store import LocalStore


@contextlib.contextmanager
def work_dir(base: str | None) -> Iterator[Path]:
    root = Path(base or os.environ.get("PGRUNBOOK_WORK_DIR") or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="pgrunbook-restore-", dir=root))
    guard = guard_path(path)  # removed by the guardian should pgrunbook be killed
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        guard.release()


@dataclass
class Fetched:
    path: Path  # file (custom, plain) or extracted directory (directory-tar)
    sha256: str
    bytes: int
    toc: list[str] = field(default_factory=list)
    plain_major: int | None = None
    plain_extensions: set[str] = field(default_factory=set)


def _copy_hashing(stream: IO[bytes], dest: Path | None) -> HashingReader:
    reader = HashingReader(stream)
    if dest is None:
        reader.drain()
        return reader
    with open(dest, "wb") as out:
        while chunk := reader.read(CHUNK):
            out.write(chunk)
    return reader


def _extract_tar(stream: IO[bytes], dest: Path) -> HashingReader:
    """Extract a pg_dump directory packed as a flat tar, hashing every byte of the tar."""
    reader = HashingReader(stream)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                name = PurePosixPath(member.name)
                if not member.isfile() or len(name.parts) != 1 or name.name in ("", ".", ".."):
                    raise ArchiveCorrupt(f"the archive holds an unexpected entry {member.name!r}")
                data = tar.extractfile(member)
                assert data is not None
                with open(dest / name.name, "wb") as out:
                    while chunk := data.read(CHUNK):
                        out.write(chunk)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        reader.drain()
        raise UnreadableTar(f"the archive does not read as a tar: {exc}", reader.hexdigest()) from None
    reader.drain()
    return reader


_DUMPED_FROM = re.compile(rb"-- Dumped from database version (\d+)")
_CREATE_EXT = re.compile(rb"^CREATE EXTENSION (?:IF NOT EXISTS )?\"?([A-Za-z0-9_-]+)\"?", re.M)


def scan_plain(path: Path, gz: bool) -> tuple[int | None, set[str]]:
    """Read a plain SQL dump to its end: (source major, extensions); raise when truncated/corrupt."""
    inflater = zlib.decompressobj(31) if gz else None
    head, tail, carry = b"", b"", b""
    exts: set[str] = set()
    with open(path, "rb") as fh:
        try:
            while chunk := fh.read(CHUNK):
                text = inflater.decompress(chunk) if inflater else chunk
                if len(head) < 4096:
                    head += text[:4096]
                block = carry + text
                if b"CREATE EXTENSION" in block:
                    exts.update(m.decode() for m in _CREATE_EXT.findall(block))
                carry = block[-200:]
                tail = (tail + text)[-400:]
            if inflater is not None:
                tail = (tail + inflater.flush())[-400:]
                if not inflater.eof:
                    raise ArchiveCorrupt("the archive does not read: the gzip stream is truncated")
        except zlib.error as exc:
            raise ArchiveCorrupt(f"the archive does not read: the gzip stream is corrupt ({exc})") from None
    if PLAIN_HEADER not in head:
        raise ArchiveCorrupt("the archive does not read: not a pg_dump SQL script (no header)")
    if PLAIN_TRAILER not in tail:
        raise ArchiveCorrupt("the archive does not read: the SQL script is truncated (no 'dump complete' trailer)")
    match = _DUMPED_FROM.search(head)
    exts.discard("plpgsql")
    return (int(match[1]) if match else None), exts


def toc_of(pg_restore: Tool, path: Path) -> list[TocEntry]:
    proc = run_captured([str(pg_restore.path), "--list", str(path)], env=tool_env())
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        detail = next((ln for ln in stderr.splitlines() if "error" in ln.lower()), stderr.strip())
        raise ArchiveCorrupt(f"the archive does not read: {detail.removeprefix('pg_restore: error: ')}")
    return parse_toc(proc.stdout.decode("utf-8", "replace"))


def fetch(ref: ArchiveRef, fmt: str, work: Path) -> Fetched:
    local = isinstance(ref.store, LocalStore)
    size = ref.store.size(ref.key)
    if not local or fmt == "directory-tar":
        free = shutil.disk_usage(work).free
        if free < size * 1.05 + 64 * 1024 * 1024:
            raise NotEnoughSpace(f"not enough free space in {work} for the {size} byte archive "
                                 "(set PGRUNBOOK_WORK_DIR or --work-dir to a larger disk)")
    with contextlib.closing(ref.open()) as stream:
        if fmt == "directory-tar":
            path = work / "archive.d"
            reader = _extract_tar(stream, path)
        elif local:
            assert isinstance(ref.store, LocalStore)
            path = ref.store.path(ref.key)
            reader = _copy_hashing(stream, None)
        else:
            path = work / ref.name
            reader = _copy_hashing(stream, path)
    return Fetched(path=path, sha256=reader.hexdigest(), bytes=reader.bytes)

