"""The backups in a store, newest first: the listing is the truth, a per-database index saves reading
every manifest.

An entry's database is the real name recorded in its manifest, never a folder name read back
(folders hold the encoded name: keys.encode_segment).

Design (issue 14, "listing at fleet scale"). A year of daily backups for 20 databases is 7,300 manifests;
reading them one GET at a time costs seconds per thousand. Three alternatives were weighed:
- facts in object metadata or tags: ListObjectsV2 returns neither, so it is still one request per backup;
- bounded parallel reads alone: 16-32 GETs in flight cut latency but not the request count or parsing;
- a per-database index object (chosen) plus parallel reads for whatever it does not cover.

So: `list` takes one listing of the store (ListObjectsV2 / a folder walk). A backup exists when its
`<archive>.manifest.json` is in that listing — never because the index says so. The index object
`<database>/_index/backups.json` (keys.backup_index_key, inside the database's folder) maps each archive's
key inside that folder to the facts `list` shows, together with the version tag (S3 ETag; a file's inode,
mtime and size) and the size of the manifest they were read from. An index entry is used only when a
manifest with exactly that tag and size is in the listing; entries of manifests that are gone (lifecycle,
an operator) are ignored, and a manifest that is new, replaced or unknown to the index is read — up to
READ_WORKERS at once. An index object that cannot be read or parsed is ignored with a warning: every
manifest is then read. So the index can only save requests; it can never add, drop or change a backup.

Writers: `record(store, archive_key)`, called by the backup after its manifest is committed, reads the
manifest back (bytes and version tag from the same GET, so they belong together) and adds its entry with a
conditional write (If-Match the index's ETag, If-None-Match: * when there is none; a folder store takes
an exclusive flock), retrying on a lost race. It never fails a backup: a write it cannot make only costs a
manifest read later. `list_backups` (the `list` command; not `latest_backup`) also rewrites an index that
missed or held stale entries for REFRESH_MIN or more manifests (first run after an upgrade, after
lifecycle expiry), best-effort and conditionally too, so a concurrent `record` is never overwritten.
`status`, the state machines' Plan steps, drill and migrate use `latest_backup`, which never writes (they
run with read-only roles, and status promises to write nothing).

Folder stores use the same logic (a folder walk is cheap, parsing 10,000 manifests is not).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import PgrunbookError, StoreError
from .keys import BACKUP_INDEX_NAME, MANIFEST_SUFFIX, SHA256_SUFFIX, backup_index_key, split_archive_key
from .manifest import Manifest
from .settings import Settings
from .store import ObjectInfo, Store, open_store

log = logging.getLogger(__name__)

INDEX_VERSION = 1
READ_WORKERS = 10  # manifests read at once when the index does not cover them (botocore pools 10 connections)
REFRESH_MIN = 16  # list(refresh=True) rewrites a folder's index once it missed or dropped this many entries
RECORD_ATTEMPTS = 8  # conditional writes tried by record() before it leaves the entry to a later read
_FACTS = {"kind": str, "database": str, "finished_at": str, "bytes": int, "tables": int, "rows": int,
          "sha256": str, "format": str, "etag": str, "size": int}


@dataclass(frozen=True)
class BackupEntry:
    archive: str
    manifest_uri: str
    kind: str
    database: str
    finished_at: str
    bytes: int
    tables: int
    rows: int
    sha256: str
    format: str

    @property
    def age_seconds(self) -> float:
        return (datetime.now(UTC) - datetime.fromisoformat(self.finished_at)).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {"archive": self.archive, "manifest": self.manifest_uri, "kind": self.kind, "database": self.database,
                "finished_at": self.finished_at, "age_seconds": round(self.age_seconds), "bytes": self.bytes,
                "tables": self.tables, "rows": self.rows, "sha256": self.sha256, "format": self.format}


def _facts(manifest: Manifest, etag: str, size: int) -> dict[str, Any]:
    """What `list` shows of one backup, and the manifest version it was read from."""
    return {"kind": manifest.kind, "database": str(manifest.source.get("database")),
            "finished_at": manifest.finished_at, "bytes": manifest.bytes,
            "tables": int(manifest.data["totals"]["tables"]), "rows": int(manifest.data["totals"]["rows"]),
            "sha256": manifest.sha256, "format": manifest.archive_format, "etag": etag, "size": size}


def _entry(store: Store, key: str, f: dict[str, Any]) -> BackupEntry:
    return BackupEntry(archive=store.uri(key), manifest_uri=store.uri(key + MANIFEST_SUFFIX), kind=f["kind"],
                       database=f["database"], finished_at=f["finished_at"], bytes=f["bytes"], tables=f["tables"],
                       rows=f["rows"], sha256=f["sha256"], format=f["format"])


def _parse_index(data: bytes) -> dict[str, dict[str, Any]]:
    """The entries of an index object; ValueError when it is not one (any entry malformed)."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("version") != INDEX_VERSION or not isinstance(doc.get("entries"), dict):
        raise ValueError(f"not a version {INDEX_VERSION} backup index")
    entries: dict[str, dict[str, Any]] = doc["entries"]
    for rel, f in entries.items():
        if not isinstance(f, dict) or any(type(f.get(name)) is not kind for name, kind in _FACTS.items()):
            raise ValueError(f"malformed entry {rel!r}")
        datetime.fromisoformat(f["finished_at"])
    return entries


def _index_bytes(entries: dict[str, dict[str, Any]]) -> bytes:
    return json.dumps({"version": INDEX_VERSION, "entries": entries}, separators=(",", ":"), sort_keys=True).encode()


def _read_index(store: Store, folder: str) -> tuple[dict[str, dict[str, Any]], str | None, bool]:
    """(entries, version tag of the object or None, whether it was readable). Never raises for content."""
    key = backup_index_key(folder)
    got = store.get_versioned(key)
    if got is None:
        return {}, None, True
    data, etag = got
    try:
        return _parse_index(data), etag, True
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        log.warning("ignoring an unreadable backup index: reading the manifests instead",
                    extra={"index": store.uri(key), "error": str(exc)[:200]})
        return {}, etag, False


def _read_manifest(store: Store, key: str) -> dict[str, Any] | None:
    """The facts of `<key>.manifest.json` (None: gone since listed, or unreadable — skipped as before)."""
    try:
        got = store.get_versioned(key + MANIFEST_SUFFIX)
        if got is None:
            return None
        data, etag = got
        return _facts(Manifest.from_json(data), etag, len(data))
    except (PgrunbookError, KeyError, TypeError, ValueError):
        return None


def _map(fn: Any, items: list[Any]) -> list[Any]:
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(READ_WORKERS, len(items)), thread_name_prefix="list") as pool:
        return list(pool.map(fn, items))


def entries_in(store: Store, listing: Iterable[ObjectInfo] | None = None, *,
               refresh: bool = False) -> list[BackupEntry]:
    """Every backup in `store` (a manifest in the listing), newest first, facts from the index where it
    matches the listed manifest and from the manifest otherwise."""
    infos = list(store.list_tree(skip_after=SHA256_SUFFIX) if listing is None else listing)
    present = {i.key for i in infos}
    manifests: dict[str, ObjectInfo] = {i.key[:-len(MANIFEST_SUFFIX)]: i for i in infos
                                        if i.key.endswith(MANIFEST_SUFFIX)}
    folders: dict[str, list[str]] = defaultdict(list)  # database folder -> archive keys in it
    for key in manifests:
        split = split_archive_key(key)
        if split is not None:
            folders[split[0]].append(key)
    indexed = [f for f in folders if backup_index_key(f) in present]
    indexes = dict(zip(indexed, _map(lambda f: _read_index(store, f), indexed), strict=True))
    facts: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for key, info in manifests.items():
        split = split_archive_key(key)
        f = indexes[split[0]][0].get(split[1]) if split and split[0] in indexes else None
        if f is not None and f["etag"] == info.etag and f["size"] == info.size:
            facts[key] = f
        else:
            missing.append(key)
    for key, f in zip(missing, _map(lambda k: _read_manifest(store, k), missing), strict=True):
        if f is not None:
            facts[key] = f
    if refresh:
        _refresh(store, folders, indexes, facts, set(missing))
    entries = [_entry(store, key, f) for key, f in facts.items()]
    entries.sort(key=lambda e: e.finished_at, reverse=True)
    return entries


def _refresh(store: Store, folders: dict[str, list[str]],
             indexes: dict[str, tuple[dict[str, dict[str, Any]], str | None, bool]],
             facts: dict[str, dict[str, Any]], read: set[str]) -> None:
    """Rewrite the index of each folder that missed or kept REFRESH_MIN or more entries (best effort)."""
    for folder, keys in folders.items():
        old, etag, readable = indexes.get(folder, ({}, None, True))  # not listed: create it (If-None-Match)
        current = {split_archive_key(k)[1]: facts[k] for k in keys if k in facts}  # type: ignore[index]
        stale = len(set(old) - set(current))
        if readable and sum(1 for k in keys if k in read) + stale < REFRESH_MIN:
            continue
        try:
            done = store.put_if(backup_index_key(folder), _index_bytes(current), etag=etag,
                                content_type="application/json")
        except StoreError as exc:  # a read-only role: the next list reads these manifests again
            log.info("backup index not refreshed", extra={"index": store.uri(backup_index_key(folder)),
                                                          "error": str(exc)})
            continue
        if not done:
            log.info("backup index changed while listing: not refreshed",
                     extra={"index": store.uri(backup_index_key(folder))})


def record(store: Store, archive_key: str) -> bool:
    """Add the committed backup `archive_key` to its database's index; True when it is recorded. Never
    raises a StoreError (a backup is done once its manifest is committed): on failure it logs a warning
    and `list` reads that manifest instead."""
    split = split_archive_key(archive_key)
    if split is None:
        return False
    folder, rel = split
    index_key = backup_index_key(folder)
    try:
        f = _read_manifest(store, archive_key)
        if f is None:
            log.warning("backup not indexed: its manifest cannot be read", extra={"archive": store.uri(archive_key)})
            return False
        for attempt in range(RECORD_ATTEMPTS):
            entries, etag, _ = _read_index(store, folder)
            entries[rel] = f
            if store.put_if(index_key, _index_bytes(entries), etag=etag, content_type="application/json"):
                return True
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))  # noqa: S311 - jitter between racing writers
    except StoreError as exc:
        log.warning("backup not indexed: list reads its manifest instead",
                    extra={"archive": store.uri(archive_key), "index": store.uri(index_key), "error": str(exc)})
        return False
    log.warning("backup not indexed: the index kept changing (concurrent backups); list reads its manifest instead",
                extra={"archive": store.uri(archive_key), "index": store.uri(index_key)})
    return False


def list_backups(dest: str | None = None, *, settings: Settings, database: str | None = None,
                 kind: str | None = None, refresh: bool = True) -> list[BackupEntry]:
    """The backups under `dest` (default: Settings.backup_dest), newest first. `refresh` (the `list`
    command) lets the listing rewrite out-of-date indexes, best effort (see the module docstring);
    `latest_backup` (status, Plan steps, drill, migrate) never writes."""
    # KMS as the stack writes: the bucket refuses a refreshed index encrypted any other way
    store = open_store(settings.backup_dest if dest is None else dest, kms_key_id=settings.kms_key_id)
    return [e for e in entries_in(store, refresh=refresh)
            if (not database or e.database == database) and (not kind or e.kind == kind)]


def latest_backup(dest: str | None = None, *, settings: Settings, **filters: Any) -> BackupEntry | None:
    found = list_backups(dest, settings=settings, refresh=False, **filters)
    return found[0] if found else None


__all__ = ["BACKUP_INDEX_NAME", "BackupEntry", "entries_in", "latest_backup", "list_backups", "record"]
