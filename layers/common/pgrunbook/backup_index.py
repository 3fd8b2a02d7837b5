"""The backups in a store, newest first (read from their manifests).

An entry's database is the real name recorded in its manifest, never a folder name read back
(folders hold the encoded name: keys.encode_segment)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .archive import iter_manifests
from .settings import Settings
from .store import open_store


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


def list_backups(dest: str | None = None, *, settings: Settings, database: str | None = None,
                 kind: str | None = None) -> list[BackupEntry]:
    """The backups under `dest` (default: Settings.backup_dest), newest first."""
    store = open_store(settings.backup_dest if dest is None else dest)  # an empty DEST is a usage error
    entries = []
    for key, manifest in iter_manifests(store):
        if database and manifest.source.get("database") != database:
            continue
        if kind and manifest.kind != kind:
            continue
        entries.append(BackupEntry(
            archive=store.uri(key), manifest_uri=store.uri(key + ".manifest.json"), kind=manifest.kind,
            database=str(manifest.source.get("database")), finished_at=manifest.finished_at, bytes=manifest.bytes,
            tables=int(manifest.data["totals"]["tables"]), rows=int(manifest.data["totals"]["rows"]),
            sha256=manifest.sha256, format=manifest.archive_format))
    entries.sort(key=lambda e: e.finished_at, reverse=True)
    return entries


def latest_backup(dest: str | None = None, *, settings: Settings, **filters: Any) -> BackupEntry | None:
    found = list_backups(dest, settings=settings, **filters)
    return found[0] if found else None
