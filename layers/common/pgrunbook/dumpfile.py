"""Reading a dump file: the one reader of pgrunbook's archives, for `verify-backup` and `restore` alike.

Formats (by name, or as the manifest says): `custom` (`.dump`, pg_dump -Fc), `directory-tar`
(`.dump.tar`: a pg_dump directory packed as a flat tar, toc.dat first) and `plain` (`.sql`, `.sql.gz`:
a pg_dump script, the runbook's own format).

`read_dump` reads a stream exactly once:

- every byte is hashed and counted (sha256, bytes), also after the contents stopped reading, so
  the caller can tell a damaged archive (its checksum differs) from one written broken;
- the contents are listed: custom, `pg_restore --list` fed the stream (it reads the table of
  contents only); directory-tar, every member a flat regular file, toc.dat (and with `into` every
  file) extracted, then `pg_restore --list` of the folder; plain, the pg_dump header, the gzip
  stream to its end, the 'dump complete' trailer, the source's version and the extensions the
  script creates (before its first COPY: data lines are never read as statements);
- with `into`, the bytes are kept there (a file; for directory-tar a folder);
- contents that do not read never raise: `DumpContents.problem` says why in one line, and the
  caller decides (verify-backup reports it, restore refuses); a failure to read the stream or to
  write `into`, or an interrupt, does raise.

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
import shutil
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from .dbinfo import legacy_name
from .errors import ToolError
from .manifest import Manifest
from .pgtools import PgRestore, RunningTool
from .processes import guard_path

CHUNK = 1024 * 1024
PLAIN_HEADER = b"-- PostgreSQL database dump"
PLAIN_TRAILER = b"-- PostgreSQL database dump complete"
FORMATS = ("custom", "directory-tar", "plain")


def archive_format_of(name: str) -> str:
    if name.endswith((".sql", ".sql.gz")):
        return "plain"
    if name.endswith(".tar"):
        return "directory-tar"
    return "custom"


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


# --------------------------------------------------------------------------- reading a dump
@dataclass(frozen=True)
class PlainScript:
    """What a plain script says about itself."""

    source_major: int | None  # `-- Dumped from database version N`
    extensions: frozenset[str]  # created by the script (plpgsql, always there, left out)


@dataclass(frozen=True)
class DumpContents:
    """One reading of a dump (see the module doc)."""

    fmt: str
    sha256: str
    bytes: int
    toc: list[TocEntry] | None = None  # custom and directory-tar, when the table of contents reads
    script: PlainScript | None = None  # plain, when the script reads to its end
    problem: str | None = None  # why the contents do not read (one line), else None
    kept: Path | None = None  # `into`, when given

    @property
    def reads(self) -> bool:
        return self.problem is None


def read_dump(stream: IO[bytes], fmt: str, *, gz: bool = False, pg_restore: PgRestore | None = None,
              into: Path | None = None) -> DumpContents:
    """Read `stream` (a dump of format `fmt`; `gz`: a gzip'd plain script) once (see the module doc).
    `pg_restore` lists custom and directory-tar dumps; `into` keeps the bytes (custom, plain: a file to
    create; directory-tar: a folder to create and fill)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown dump format {fmt!r}")
    reader = HashingReader(stream)
    toc: list[TocEntry] | None = None
    script: PlainScript | None = None
    with _kept(into if fmt != "directory-tar" else None) as keep:
        if fmt == "plain":
            script, problem = _read_plain(reader, gz, keep)
        else:
            if pg_restore is None:
                raise ValueError(f"listing a {fmt} dump needs pg_restore")
            if fmt == "custom":
                listing, problem = _list_custom(reader, pg_restore, keep)
            else:
                listing, problem = _list_directory_tar(reader, pg_restore, into)
            toc = None if listing is None else parse_toc(listing)
        while chunk := reader.read(CHUNK):  # the rest, after the contents stopped reading
            if keep is not None:
                keep.write(chunk)
    return DumpContents(fmt=fmt, sha256=reader.hexdigest(), bytes=reader.bytes, toc=toc, script=script,
                        problem=problem, kept=into)


@contextlib.contextmanager
def _kept(path: Path | None) -> Iterator[IO[bytes] | None]:
    if path is None:
        yield None
        return
    with open(path, "xb") as out:
        yield out


def _collect(stream: IO[bytes]) -> tuple[threading.Thread, list[bytes]]:
    """Drain `stream` on a thread (so the tool never blocks on a full pipe) into the returned list."""
    chunks: list[bytes] = []
    thread = threading.Thread(target=lambda: chunks.extend(iter(lambda: stream.read(CHUNK), b"")),
                              name="pg_restore-list", daemon=True)
    thread.start()
    return thread, chunks


def _list_custom(reader: HashingReader, pg_restore: PgRestore,
                 keep: IO[bytes] | None) -> tuple[str | None, str | None]:
    """Feed the stream to `pg_restore --list` (which reads only the table of contents and leaves), keeping
    and hashing every byte: (listing, None) or (None, why it does not read)."""
    listing: RunningTool
    with pg_restore.start_list() as listing:
        thread, out = _collect(listing.stdout)
        feeding = True
        while chunk := reader.read(CHUNK):
            if keep is not None:
                keep.write(chunk)
            if feeding:
                try:
                    listing.stdin.write(chunk)
                except OSError:  # a broken pipe: pg_restore has read what it needs, or failed
                    feeding = False
        with contextlib.suppress(OSError):
            listing.stdin.close()
        problem = listing.failure()
        thread.join()
    return (None, problem) if problem is not None else (b"".join(out).decode("utf-8", "replace"), None)


def _list_directory_tar(reader: HashingReader, pg_restore: PgRestore,
                        into: Path | None) -> tuple[str | None, str | None]:
    """Check the tar's members (flat regular files, as pg_dump -Fd writes them) and extract toc.dat (with
    `into`, every file), then list the folder: (listing, None) or (None, why it does not read)."""
    with contextlib.ExitStack() as stack:
        if into is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgrunbook-toc-")))
            stack.callback(guard_path(folder).release)  # the guardian removes it should pgrunbook be killed
        else:
            folder = into
            folder.mkdir()
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    name = PurePosixPath(member.name)
                    if not member.isfile() or len(name.parts) != 1 or name.name in ("", ".", ".."):
                        return None, f"the tar holds an unexpected entry {member.name!r}"
                    data = tar.extractfile(member)
                    assert data is not None
                    if into is not None or name.name == "toc.dat":
                        with open(folder / name.name, "xb") as out:
                            shutil.copyfileobj(data, out, CHUNK)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            return None, f"not a tar: {exc}"
        if not (folder / "toc.dat").is_file():
            return None, "the tar holds no toc.dat"
        try:
            return pg_restore.list_toc(folder), None
        except ToolError as exc:
            return None, str(exc).removeprefix("pg_restore failed: ")


_DUMPED_FROM = re.compile(rb"-- Dumped from database version (\d+)")
_CREATE_EXT = re.compile(rb"^CREATE EXTENSION (?:IF NOT EXISTS )?\"?([A-Za-z0-9_-]+)\"?", re.M)
_FIRST_COPY = re.compile(rb"^COPY .* FROM stdin;$", re.M)
_HEADER = re.compile(rb"^" + re.escape(PLAIN_HEADER) + rb"$", re.M)  # its own line (not the trailer's start)


def _read_plain(reader: HashingReader, gz: bool, keep: IO[bytes] | None) -> tuple[PlainScript | None, str | None]:
    """Read a pg_dump script to its end (inflating a gzip'd one): (what it says, None) or (None, why it
    does not read). Statements are looked for in whole lines only, before the first COPY."""
    inflater = zlib.decompressobj(31) if gz else None
    head, tail, line = b"", b"", b""  # `line`: the start of a line the last text cut
    extensions: set[str] = set()
    in_data = False  # past the first COPY: CREATE EXTENSION lines come before any data

    def take(text: bytes, last: bool = False) -> None:
        nonlocal head, tail, line, in_data
        if len(head) < 4096:
            head += text[:4096]
        tail = (tail + text)[-400:]
        if in_data:
            return
        block = line + text
        cut = len(block) if last else block.rfind(b"\n") + 1
        lines, line = block[:cut], block[cut:][-65536:]
        first_copy = _FIRST_COPY.search(lines)
        if first_copy is not None:
            lines, in_data = lines[:first_copy.start()], True
        extensions.update(m.decode() for m in _CREATE_EXT.findall(lines))

    try:
        while chunk := reader.read(CHUNK):
            if keep is not None:
                keep.write(chunk)
            take(inflater.decompress(chunk) if inflater else chunk)
        take(inflater.flush() if inflater else b"", last=True)
        if inflater is not None and not inflater.eof:
            return None, "the gzip stream is truncated"
    except zlib.error as exc:
        return None, f"the gzip stream is corrupt ({exc})"
    if not _HEADER.search(head[:200]):
        return None, "not a pg_dump SQL script (no header)"
    if PLAIN_TRAILER not in tail:
        return None, "the SQL script is truncated (no 'dump complete' trailer)"
    major = _DUMPED_FROM.search(head)
    return PlainScript(int(major[1]) if major else None, frozenset(extensions - {"plpgsql"})), None


def contents_problem(contents: DumpContents, manifest: Manifest | None) -> str | None:
    """Why a dump's contents are not what a restore of it needs (one line), else None: they do not read,
    or a table of its manifest has no TABLE DATA entry. verify-backup and restore both ask this."""
    if contents.problem is not None:
        return f"the archive does not read: {contents.problem}"
    if manifest is not None and contents.toc is not None:
        missing = missing_table_data(manifest, contents.toc)
        if missing:
            return f"the archive lacks data for tables in its manifest: {', '.join(missing[:5])}"
    return None


# --------------------------------------------------------------------------- the table of contents
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
