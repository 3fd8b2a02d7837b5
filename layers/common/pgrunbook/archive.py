"""An archive in its store, with its companions, and `verify-backup`'s report on it.

`ArchiveRef` finds an archive's manifest (`.manifest.json`) and checksum (`.sha256`) beside it, from
the archive's URI or theirs. `verify_archive` reads the archive once through `dumpfile.read_dump`,
the same reader restore uses, so verify-backup passes exactly the archives whose bytes, companions
and contents restore accepts: checksum file, manifest (size and sha256), contents (the table of
contents and its TABLE DATA for every table of the manifest; a plain script read to its end).
Used by `verify-backup`, `list`, restore and the drill.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .dumpfile import (
    TocEntry,
    archive_format_of,
    contents_problem,
    missing_table_data,
    parse_toc,
    read_dump,
    table_data_count,
    toc_extensions,
    toc_owners,
    toc_system_acls,
)
from .errors import PgrunbookError, StoreError, UsageError
from .keys import MANIFEST_SUFFIX, SHA256_SUFFIX
from .manifest import Manifest, parse_sha256_file
from .pgtools import PgRestore
from .store import Store, split_uri

# the table of contents is read in dumpfile; these names are kept importable from here
__all__ = ["ArchiveRef", "ArchiveReport", "Check", "TocEntry", "iter_manifests", "missing_table_data", "parse_toc",
           "table_data_count", "toc_extensions", "toc_owners", "toc_system_acls", "verify_archive"]


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


def verify_archive(ref: ArchiveRef, *, require_sha256: bool = True, pg_bin: str | None = None) -> ArchiveReport:
    """Check checksum file, manifest and contents of an archive, reading it once (see the module doc)."""
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
        contents = read_dump(stream, fmt, gz=ref.name.endswith(".gz"),
                             pg_restore=None if fmt == "plain" else PgRestore.find(pg_bin=pg_bin))
    report.sha256, report.bytes = contents.sha256, contents.bytes

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

    problem = contents_problem(contents, manifest)
    if fmt == "plain":
        report.add("contents", problem is None, problem or "plain SQL script reads to its end")
    else:
        report.toc = contents.toc or []
        report.add("table of contents", problem is None, problem or f"{len(report.toc)} entries")
    return report


def iter_manifests(store: Store, prefix: str = "") -> Iterator[tuple[str, Manifest]]:
    """(archive key, manifest) for every manifest under prefix; unreadable ones are skipped."""
    for info in store.list(prefix):
        if info.key.endswith(MANIFEST_SUFFIX):
            try:
                yield info.key[: -len(MANIFEST_SUFFIX)], Manifest.from_json(store.get_bytes(info.key))
            except PgrunbookError:
                continue
