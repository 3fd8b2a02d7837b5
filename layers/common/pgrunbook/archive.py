"""Reading archives back: find an archive's manifest and checksum, stream it once while
hashing, and prove its table of contents reads (`pg_restore --list`).

Used by `verify-backup`, `list`, and by restore before any byte reaches a target.

Invariant: a `pg_restore --list` line is read by its fields (dump id, catalog table OID, object
OID), never by splitting names on spaces: pg_restore prints a name as is (a newline in it as a
space), so "s x y owner" has many readings. A manifest's table is found in the archive by its
OID (version 2); only a version 1 manifest, which has no OIDs, is matched by name, trying
every reading of the line.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import subprocess
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .catalog import legacy_name
from .errors import PgrunbookError, StoreError, UsageError
from .manifest import MANIFEST_SUFFIX, SHA256_SUFFIX, Manifest, parse_sha256_file
from .pgtools import Tool, failure_line, find_tool, run_captured, spawn, stop_on_error, tool_env
from .store import Store, split_uri

CHUNK = 1024 * 1024
PLAIN_HEADER = b"-- PostgreSQL database dump"
PLAIN_TRAILER = b"-- PostgreSQL database dump complete"


def archive_format_of(name: str) -> str:
    if name.endswith((".sql", ".sql.gz")):
        return "plain"
    if name.endswith(".tar"):
        return "directory-tar"
    return "custom"


@dataclass
class ArchiveRef:
    """An archive and its companions, located from the archive's (or manifest's) URI."""

    store: Store
    key: str

    @classmethod
    def from_uri(cls, uri: str) -> ArchiveRef:
        if not uri:
            raise UsageError("no backup given")
        for suffix in (MANIFEST_SUFFIX, SHA256_SUFFIX):
            if uri.endswith(suffix):
                uri = uri[: -len(suffix)]
        store, key = split_uri(uri)
        return cls(store=store, key=key)

    @property
    def uri(self) -> str:
        return self.store.uri(self.key)

    @property
    def name(self) -> str:
        return Path(self.key).name

    @property
    def format(self) -> str:
        return archive_format_of(self.name)

    def manifest(self) -> Manifest | None:
        key = self.key + MANIFEST_SUFFIX
        if not self.store.exists(key):
            return None
        return Manifest.from_json(self.store.get_bytes(key), where=self.store.uri(key))

    def expected_sha256(self) -> str | None:
        key = self.key + SHA256_SUFFIX
        if not self.store.exists(key):
            return None
        return parse_sha256_file(self.store.get_bytes(key).decode("utf-8", "replace"), where=self.store.uri(key))

    def open(self) -> IO[bytes]:
        if not self.store.exists(self.key):
            raise StoreError(f"{self.uri} not found")
        return self.store.open_reader(self.key)


class HashingReader:
    """Wraps a byte stream: every byte read is hashed and counted."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.digest = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.digest.update(data)
        self.bytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class ArchiveReport:
    uri: str
    checks: list[Check] = field(default_factory=list)
    toc: list[TocEntry] = field(default_factory=list)
    sha256: str = ""
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def first_failure(self) -> str:
        return next((f"{c.name}: {c.detail}" for c in self.checks if not c.ok), "")

    def to_dict(self) -> dict[str, Any]:
        return {"archive": self.uri, "ok": self.ok, "sha256": self.sha256, "bytes": self.bytes,
                "checks": [c.to_dict() for c in self.checks], "toc_entries": len(self.toc)}


def _list_custom(reader: HashingReader, pg_restore: Tool) -> tuple[int, str, str]:
    """Feed the stream to `pg_restore --list` (it reads only the TOC), hash the rest."""
    proc = spawn([str(pg_restore.path), "--list"], env=tool_env(), stdin=subprocess.PIPE)
    assert proc.stdin is not None
    with stop_on_error(proc), tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        def drain(src: IO[bytes] | None, dst: IO[bytes]) -> None:
            assert src is not None
            for chunk in iter(lambda: src.read(CHUNK), b""):
                dst.write(chunk)

        threads = [threading.Thread(target=drain, args=(proc.stdout, out), daemon=True),
                   threading.Thread(target=drain, args=(proc.stderr, err), daemon=True)]
        for t in threads:
            t.start()
        feeding = True
        while chunk := reader.read(CHUNK):
            if feeding:
                try:
                    proc.stdin.write(chunk)
                except (BrokenPipeError, OSError):
                    feeding = False  # pg_restore has read the TOC and left: keep hashing
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.close()
        rc = proc.wait()
        for t in threads:
            t.join()
        out.seek(0)
        err.seek(0)
        return rc, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")


def _list_directory_tar(reader: HashingReader, pg_restore: Tool) -> tuple[int, str, str]:
    with tempfile.TemporaryDirectory(prefix="pgrunbook-toc-") as tmp:
        found_toc = False
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    data = tar.extractfile(member)
                    if data is None:
                        continue
                    if member.name == "toc.dat":
                        Path(tmp, "toc.dat").write_bytes(data.read())
                        found_toc = True
                    else:
                        while data.read(CHUNK):
                            pass
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            reader.drain()
            return 1, "", f"the tar archive does not read: {exc}"
        reader.drain()
        if not found_toc:
            return 1, "", "the archive holds no toc.dat"
        proc = run_captured([str(pg_restore.path), "--list", tmp], env=tool_env())
        return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def _check_plain(reader: HashingReader, gz: bool) -> tuple[bool, str]:
    inflater = zlib.decompressobj(31) if gz else None
    head = b""
    tail = b""
    try:
        while chunk := reader.read(CHUNK):
            text = inflater.decompress(chunk) if inflater else chunk
            if len(head) < 200:
                head += text[:200]
            tail = (tail + text)[-400:]
        if inflater is not None:
            tail = (tail + inflater.flush())[-400:]
            if not inflater.eof:
                return False, "the gzip stream is truncated"
    except zlib.error as exc:
        reader.drain()
        return False, f"the gzip stream is corrupt: {exc}"
    if PLAIN_HEADER not in head:
        return False, "not a pg_dump SQL script (no header)"
    if PLAIN_TRAILER not in tail:
        return False, "the SQL script is truncated (no 'dump complete' trailer)"
    return True, "plain SQL script reads to its end"


PG_EXTENSION_OID = 3079  # pg_extension's OID in every PostgreSQL: the catalog of EXTENSION entries
_TOC_LINE = re.compile(r"(\d+); (\d+) (\d+) (.*)")


@dataclass(frozen=True)
class TocEntry:
    """One entry of `pg_restore --list`: `<dump id>; <catalog table OID> <object OID> <desc> <schema>
    <name> <owner>`. The numbers are exact; `text` (desc, schema, name, owner joined by spaces, with
    newlines inside names printed as spaces) is kept whole because names may hold spaces."""

    dump_id: int
    tableoid: int
    oid: int
    text: str

    @property
    def is_table_data(self) -> bool:
        """A table's rows; `oid` is then the table's OID in the source database."""
        return self.tableoid == 0 and self.text.startswith("TABLE DATA ")

    @property
    def is_extension(self) -> bool:
        return self.tableoid == PG_EXTENSION_OID and self.text.startswith("EXTENSION - ")

    @property
    def extension_name(self) -> str:
        """An EXTENSION entry's name (pg_dump gives it no schema and an empty owner: `EXTENSION - name `)."""
        rest = self.text.removeprefix("EXTENSION - ")
        return rest[:-1] if rest.endswith(" ") else rest.rsplit(" ", 1)[0]


def parse_toc(listing: str) -> list[TocEntry]:
    """The entries of a `pg_restore --list` output (comment lines skipped). Lines end at LF only: a name
    may hold other characters str.splitlines() would break at (form feed, U+2028, ...)."""
    entries = []
    for line in listing.split("\n"):
        match = _TOC_LINE.fullmatch(line)
        if match:
            entries.append(TocEntry(int(match[1]), int(match[2]), int(match[3]), match[4]))
    return entries


def toc_printed(name: str) -> str:
    """A name as `pg_restore --list` prints it (CR and LF as spaces)."""
    return name.replace("\n", " ").replace("\r", " ")


def toc_extensions(entries: list[TocEntry]) -> set[str]:
    """Extensions the archive creates (plpgsql, always present, left out)."""
    return {e.extension_name for e in entries if e.is_extension} - {"plpgsql"}


def toc_owners(entries: list[TocEntry], roles: list[str]) -> set[str]:
    """Which of `roles` own an entry, read from the printed owner field at the end of each line (for a
    version 1 manifest, which did not record owners; may over-count when one role's name ends another's)."""
    tails = {e.text for e in entries if not e.text.startswith("DATABASE ")}
    return {r for r in roles if any(t.endswith(" " + toc_printed(r)) for t in tails)}


def toc_system_acls(entries: list[TocEntry]) -> list[str]:
    """The archive's grants on system objects (pg_dump keeps changed privileges of pg_catalog objects, e.g.
    REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC): only a superuser may restore them."""
    return [e.text.removeprefix("ACL pg_catalog ").rsplit(" ", 1)[0] for e in entries
            if e.text.startswith("ACL pg_catalog ")]


def _legacy_keys(entry: TocEntry) -> set[str]:
    """Every "schema.name" a TABLE DATA line can mean: `TABLE DATA <schema> <name> <owner>` split at any
    two of its spaces."""
    rest = entry.text.removeprefix("TABLE DATA ")
    spaces = [i for i, c in enumerate(rest) if c == " "]
    return {legacy_name(rest[:i], rest[i + 1:j]) for n, i in enumerate(spaces) for j in spaces[n + 1:]}


def table_data_count(entries: list[TocEntry]) -> int:
    return sum(1 for e in entries if e.is_table_data)


def missing_table_data(manifest: Manifest, entries: list[TocEntry]) -> list[str]:
    """Tables of the manifest (its keys, sorted) that have no TABLE DATA entry in the archive."""
    data = [e for e in entries if e.is_table_data]
    oids = manifest.table_oids
    if oids is not None:
        present = {e.oid for e in data}
        return sorted(key for oid, key in oids.items() if oid not in present)
    readings = set().union(*(_legacy_keys(e) for e in data)) if data else set()
    return sorted(key for key in manifest.tables if toc_printed(key) not in readings)


def verify_archive(ref: ArchiveRef, *, require_sha256: bool = True) -> ArchiveReport:
    """Check checksum file, manifest and table of contents of an archive, reading it once."""
    report = ArchiveReport(uri=ref.uri)
    expected = ref.expected_sha256()
    if expected is None:
        report.add("sha256 file", not require_sha256, f"{ref.name}{SHA256_SUFFIX} is missing")
    manifest: Manifest | None = None
    try:
        manifest = ref.manifest()
    except PgrunbookError as exc:
        report.add("manifest", False, str(exc))
    fmt = manifest.archive_format if manifest else ref.format

    with contextlib.closing(ref.open()) as stream:
        reader = HashingReader(stream)
        if fmt == "plain":
            ok, detail = _check_plain(reader, gz=ref.name.endswith(".gz"))
            rc, out, err = (0 if ok else 1), "", detail
        else:
            pg_restore = find_tool("pg_restore")
            rc, out, err = (_list_directory_tar if fmt == "directory-tar" else _list_custom)(reader, pg_restore)
    report.sha256, report.bytes = reader.hexdigest(), reader.bytes

    if expected is not None:
        report.add("sha256", report.sha256 == expected,
                   "matches" if report.sha256 == expected
                   else f"mismatch: the archive hashes to {report.sha256}, {ref.name}{SHA256_SUFFIX} says {expected}")
    if manifest is not None:
        same = manifest.sha256 == report.sha256 and manifest.bytes == report.bytes
        report.add("manifest", same,
                   f"{manifest.bytes} bytes, sha256 and size match" if same else
                   f"mismatch: the manifest describes {manifest.bytes} bytes with sha256 {manifest.sha256}, "
                   f"the archive has {report.bytes} bytes with sha256 {report.sha256} (a different backup?)")
    elif not any(c.name == "manifest" for c in report.checks):
        report.add("manifest", fmt == "plain", f"{ref.name}{MANIFEST_SUFFIX} is missing")

    if fmt == "plain":
        report.add("contents", rc == 0, err)
    elif rc != 0:
        reason = failure_line(rc, err)
        report.add("table of contents", False, reason)
    else:
        report.toc = parse_toc(out)
        detail = f"{len(report.toc)} entries"
        ok = True
        if manifest is not None:
            missing = missing_table_data(manifest, report.toc)
            if missing:
                ok, detail = False, f"tables in the manifest without data in the archive: {', '.join(missing[:5])}"
        report.add("table of contents", ok, detail)
    return report


def iter_manifests(store: Store, prefix: str = "") -> Iterator[tuple[str, Manifest]]:
    """(archive key, manifest) for every manifest under prefix; unreadable ones are skipped."""
    for info in store.list(prefix):
        if info.key.endswith(MANIFEST_SUFFIX):
            try:
                yield info.key[: -len(MANIFEST_SUFFIX)], Manifest.from_json(store.get_bytes(info.key))
            except PgrunbookError:
                continue
