"""The data window: rows the live source has that a restored copy lacks.

A restored copy holds the data as of its backup; every write made to the source after the backup is
lost at cutover unless the source is frozen and copied again. This module measures that window
exactly (count(*) of every table, never statistics estimates), so the approver and the report can
state it: "rows written since the backup (net): Job +1,204, SecurityEvent +18,330".

The difference is NET per table (inserts minus deletes): an UPDATE changes no count, so a window of
zero rows proves nothing about updates; only a freeze (no writes at all) closes the window for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from .. import dbinfo
from ..dburl import DatabaseUrl, mask_secrets
from ..errors import CountFailed, PgrunbookError
from ..units import human_age


def table_key(table: Any) -> str:
    """How a table is named in reports and manifests (schema.name, quoted where needed)."""
    schema, name = table[0], table[1]
    display = getattr(dbinfo, "display_name", None)
    return str(display(schema, name)) if display is not None else f"{schema}.{name}"


def _legacy_key(table: Any) -> str:
    return f"{table[0]}.{table[1]}"


def _table_counts(url: DatabaseUrl, application: str) -> list[tuple[Any, int]]:
    with dbinfo.connect(url, autocommit=True, application=application) as conn:
        conn.execute("SET default_transaction_read_only = on")  # counting never writes
        try:
            tables = dbinfo.user_tables(conn)
            counts = dbinfo.exact_counts(conn, tables)
        except psycopg.Error as exc:  # e.g. a table the role may not read
            reason = " ".join(str(exc).split())[:200]
            raise CountFailed(f"cannot count the rows of {url.display()}: {mask_secrets(reason)}") from None
    by_name = {_legacy_key(t): t for t in tables}
    return [(by_name.get(t, t) if isinstance(t, str) else t, int(n)) for t, n in counts.items()]


def live_counts(url: DatabaseUrl, *, application: str = "pgrunbook-cutover",
                keys_of: dict[str, int] | None = None) -> dict[str, int]:
    """Exact row count of every user table of the database, keyed by `table_key` (or, for a table that
    `keys_of` names only the version 1 way, schema.name joined as is)."""
    out = {}
    for table, n in _table_counts(url, application):
        key = table_key(table) if not isinstance(table, str) else table
        if keys_of is not None and key not in keys_of and _legacy_key(table) in keys_of:
            key = _legacy_key(table)
        out[key] = n
    return out


def manifest_counts(tables: dict[str, int]) -> dict[str, int]:
    """A manifest's table counts keyed like `live_counts` (version 1 manifests join schema and name as is)."""
    return {str(k): int(v) for k, v in tables.items()}


def short_name(key: str) -> str:
    return key[len("public."):] if key.startswith("public.") else key


@dataclass
class DataWindow:
    """Live source counts against a reference (the backup's manifest, or the candidate's live counts)."""

    reference: str  # "backup manifest" | "candidate"
    source: dict[str, int] = field(default_factory=dict)
    reference_counts: dict[str, int] = field(default_factory=dict)
    backup_finished_at: str | None = None
    measured_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    unknown_reason: str | None = None  # set when the source could not be read

    @property
    def known(self) -> bool:
        return self.unknown_reason is None

    @property
    def differences(self) -> dict[str, int]:
        """table -> live minus reference, only where they differ (a table on one side only counts fully)."""
        out = {}
        for table in sorted(set(self.source) | set(self.reference_counts)):
            delta = self.source.get(table, 0) - self.reference_counts.get(table, 0)
            if delta or (table in self.source) != (table in self.reference_counts):
                out[table] = delta
        return out

    @property
    def only_in_source(self) -> list[str]:
        return sorted(set(self.source) - set(self.reference_counts))

    @property
    def only_in_reference(self) -> list[str]:
        return sorted(set(self.reference_counts) - set(self.source))

    @property
    def backup_age_seconds(self) -> float | None:
        if not self.backup_finished_at:
            return None
        try:
            finished = datetime.fromisoformat(self.backup_finished_at.replace("Z", "+00:00"))
        except ValueError:
            return None
        return max(0.0, (datetime.fromisoformat(self.measured_at) - finished).total_seconds())

    def summary(self) -> str:
        """One line: what a cutover to the reference would lose."""
        if not self.known:
            return f"data window unknown: {self.unknown_reason}"
        diffs = self.differences
        if not diffs:
            return f"no row difference between the live source and the {self.reference} (net counts equal)"
        parts = [f"{short_name(t)} {d:+,}" for t, d in diffs.items()]
        return f"rows written to the source since the {self._since()} (net): " + ", ".join(parts)

    def _since(self) -> str:
        return "backup" if self.reference == "backup manifest" else "candidate was copied"

    def lines(self) -> list[str]:
        out = []
        if self.backup_finished_at:
            age = self.backup_age_seconds
            ago = f" ({human_age(age)} ago)" if age is not None else ""
            out.append(f"backup taken {self.backup_finished_at}{ago}")
        out.append(self.summary())
        if self.known and self.only_in_source:
            out.append("tables only in the source: " + ", ".join(short_name(t) for t in self.only_in_source))
        if self.known and self.only_in_reference:
            out.append(f"tables only in the {self.reference}: "
                       + ", ".join(short_name(t) for t in self.only_in_reference))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "backup_finished_at": self.backup_finished_at,
                "backup_age_seconds": None if self.backup_age_seconds is None else round(self.backup_age_seconds),
                "measured_at": self.measured_at, "known": self.known, "unknown_reason": self.unknown_reason,
                "differences": self.differences, "rows_lost_if_cut_over": sum(max(0, d) for d in
                                                                               self.differences.values()),
                "summary": self.summary()}




def window_against_manifest(source: DatabaseUrl, manifest_tables: dict[str, int],
                            backup_finished_at: str | None) -> DataWindow:
    """Live source against the backup's manifest; an unreachable source gives an 'unknown' window."""
    window = DataWindow(reference="backup manifest", reference_counts=manifest_counts(manifest_tables),
                        backup_finished_at=backup_finished_at)
    try:
        live = live_counts(source, keys_of=window.reference_counts)
    except PgrunbookError as exc:
        window.unknown_reason = f"the source is not reachable ({exc})"
        return window
    window.source = live
    return window


def window_against_candidate(source: DatabaseUrl, candidate: DatabaseUrl,
                             backup_finished_at: str | None = None) -> DataWindow:
    """Live source against the live candidate (both must be reachable)."""
    return DataWindow(reference="candidate", source=live_counts(source), reference_counts=live_counts(candidate),
                      backup_finished_at=backup_finished_at)
