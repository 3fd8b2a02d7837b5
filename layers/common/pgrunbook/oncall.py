"""What an on-call operator (and the hourly metrics) need to know per database, read from the bucket
and AWS: the newest backup, the newest drill and the newest verified one, the PITR window.

Ages of things that never happened count from when pgrunbook first watched the database: the
hourly metrics record that moment once (`_reports/watch/<database>.json`, written by the report
function only). So a fresh stack is not "26 hours without a backup" before its first backup was
even due, and an abandoned one still ages.

Invariants: reading never changes anything except that one first-seen record (and only when asked
to: `record=True`, the metrics run); nothing here needs a database connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .backup_index import BackupEntry, latest_backup
from .errors import StoreError
from .keys import database_dest, restore_reports_prefix, watch_key
from .lambda_support import DatabaseConfig
from .operations import drilled_databases
from .pitr import PitrWindow, pitr_window
from .settings import Settings
from .store import open_store


@dataclass
class DatabaseFacts:
    name: str
    first_seen: datetime
    backup: BackupEntry | None = None
    last_drill: dict[str, Any] | None = None  # the newest restore report (verified or not)
    last_verified: dict[str, Any] | None = None
    drilled: bool = True
    pitr: PitrWindow | None = None

    def backup_age_hours(self, now: datetime) -> float:
        since = datetime.fromisoformat(self.backup.finished_at) if self.backup else self.first_seen
        return round(max(0.0, (now - since).total_seconds() / 3600), 2)

    def verified_age_days(self, now: datetime) -> float:
        since = datetime.fromisoformat(self.last_verified["finished_at"]) if self.last_verified else self.first_seen
        return round(max(0.0, (now - since).total_seconds() / 86400), 2)


def _store(settings: Settings) -> Any:
    return open_store(settings.backup_dest.rstrip("/"), kms_key_id=settings.kms_key_id)


def first_seen(store: Any, name: str, now: datetime, *, record: bool) -> datetime:
    key = watch_key(name)
    try:
        return datetime.fromisoformat(json.loads(store.get_bytes(key))["first_seen"])
    except StoreError:
        pass
    except (ValueError, KeyError, TypeError):
        pass  # unreadable record: written again below
    if record:
        store.put_bytes(key, json.dumps({"database": name, "first_seen": now.isoformat()}).encode(),
                        "application/json")
    return now


def drill_reports(store: Any, name: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(newest report, newest verified report) under _reports/restore/<name>/ (keys sort by time)."""
    newest = verified = None
    for key in sorted((i.key for i in store.list(restore_reports_prefix(name))), reverse=True):
        rep = json.loads(store.get_bytes(key))
        newest = newest or rep
        if rep.get("verified"):
            verified = rep
            break
    return newest, verified


def collect(settings: Settings, *, now: datetime | None = None, record: bool = False,
            pitr: bool = True) -> list[DatabaseFacts]:
    now = now or datetime.now(UTC)
    store = _store(settings)
    dest = settings.backup_dest.rstrip("/")
    drilled = set(drilled_databases(settings))
    facts = []
    cfg: DatabaseConfig
    for name, cfg in sorted(settings.stack.database_map().items()):
        f = DatabaseFacts(name=name, first_seen=first_seen(store, name, now, record=record),
                          backup=latest_backup(database_dest(dest, cfg.database), settings=settings),
                          drilled=name in drilled)
        f.last_drill, f.last_verified = drill_reports(store, name)
        f.pitr = pitr_window(cfg, now) if pitr else None
        facts.append(f)
    return facts
