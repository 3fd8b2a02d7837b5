"""`pgrunbook status`: one line per database, the view an on-call operator opens first.

Read from the bucket (newest backup, newest drill report) and AWS (the PITR window of RDS
sources; the cutover approvals still waiting for a decision, from the stack's approval table
through pgrunbook.approval's store, when --approvals-table or $PGRUNBOOK_APPROVAL_TABLE names it);
pending migrations only with --migrations (it connects to each database). Nothing is written.
Exit 0 when every database looks healthy, 1 when one needs attention (no backup in 26 h, no
verified drill in 35 days, PITR window under 7 days or lag over 15 minutes, a source that could
not be read), 2 on usage errors. An open approval is shown, not counted as a problem.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from ..settings import Settings
from .common import add_json, destination, emit, human_age, human_bytes, printable

BACKUP_MAX_HOURS, DRILL_MAX_DAYS, PITR_MIN_DAYS, PITR_MAX_LAG_MINUTES = 26, 35, 7, 15


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status", help="one line per database: last backup, last verified drill, PITR window, pending migrations",
        description="The on-call view of the stack's databases (PGRUNBOOK_DATABASES, PGRUNBOOK_BACKUP_DEST). "
                    "Exit 1 when a database needs attention (the same thresholds as the alarms).")
    p.add_argument("--from", dest="dest", metavar="DEST", type=destination,
                   help="the backup bucket (default: $PGRUNBOOK_BACKUP_DEST)")
    p.add_argument("--migrations", metavar="DIR", help="count pending migrations from this folder or s3:// prefix")
    p.add_argument("--no-pitr", action="store_true", help="do not ask RDS for the PITR window")
    p.add_argument("--approvals-table", metavar="TABLE",
                   help="the stack's approval table (default: $PGRUNBOOK_APPROVAL_TABLE; unset: not shown)")
    add_json(p)
    p.set_defaults(handler=cmd_status)


def open_approvals(table: str | None, now: datetime) -> tuple[dict[str, list[dict[str, Any]]] | None, str | None]:
    """({database: [approvals waiting for a decision]}, None), (None, why) when the table cannot be read,
    (None, None) when no table is configured."""
    from ..approval.service import iso
    from ..approval.store import ApprovalStore
    from ..errors import PgrunbookError

    if not table:
        return None, None
    try:
        records = ApprovalStore(table).list()
    except PgrunbookError as exc:
        return None, str(exc)
    found: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.waiting(now.timestamp()):
            found.setdefault(r.database, []).append({"approval_id": r.approval_id, "execution": r.execution,
                                                     "requested_at": r.requested_at,
                                                     "expires_at": iso(r.expires_at)})
    return found, None


def database_row(f: Any, now: datetime, pending: int | None,
                 approvals: tuple[dict[str, list[dict[str, Any]]] | None, str | None] = (None, None)
                 ) -> dict[str, Any]:
    problems = []
    backup = None
    if f.backup is not None:
        age = (now - datetime.fromisoformat(f.backup.finished_at)).total_seconds()
        backup = {"age_seconds": round(age), "bytes": f.backup.bytes, "kind": f.backup.kind,
                  "archive": f.backup.archive}
        if age > BACKUP_MAX_HOURS * 3600:
            problems.append(f"no backup in {BACKUP_MAX_HOURS} h")
    else:
        problems.append("no backup yet")
    drill = None
    if f.last_drill is not None:
        drill = {"age_seconds": round((now - datetime.fromisoformat(f.last_drill["finished_at"])).total_seconds()),
                 "verified": bool(f.last_drill.get("verified")), "mode": f.last_drill.get("mode"),
                 "last_verified_age_seconds": None if f.last_verified is None else round(
                     (now - datetime.fromisoformat(f.last_verified["finished_at"])).total_seconds())}
    if f.drilled and (f.last_verified is None or
                      (now - datetime.fromisoformat(f.last_verified["finished_at"])).days >= DRILL_MAX_DAYS):
        problems.append(f"no verified drill in {DRILL_MAX_DAYS} days")
    pitr = f.pitr.to_dict() if f.pitr is not None else None
    if f.pitr is not None:
        if f.pitr.error:
            problems.append(f"PITR unknown ({f.pitr.error})")
        elif f.pitr.retention_days < PITR_MIN_DAYS:
            problems.append(f"PITR window {f.pitr.retention_days} d < {PITR_MIN_DAYS} d")
        elif f.pitr.lag_minutes is not None and f.pitr.lag_minutes > PITR_MAX_LAG_MINUTES:
            problems.append(f"PITR lag {f.pitr.lag_minutes:.0f} min")
    waiting, approvals_error = approvals
    if approvals_error:
        problems.append(f"approvals unknown ({approvals_error})")
    open_ = None if waiting is None else {"open": waiting.get(f.name, [])}
    return {"database": f.name, "backup": backup, "drill": drill, "pitr": pitr, "pending_migrations": pending,
            "approvals": open_, "problems": problems, "ok": not problems}


def text_row(r: dict[str, Any]) -> str:
    b, d, p = r["backup"], r["drill"], r["pitr"]
    backup = (f"backup {human_age(b['age_seconds'])} ago {human_bytes(b['bytes'])} {b['kind']}" if b
              else "backup never")
    drill = "drill never"
    if d:
        drill = f"drill {human_age(d['age_seconds'])} ago {'verified' if d['verified'] else 'FAILED'}"
        if not d["verified"]:
            last = d["last_verified_age_seconds"]
            drill += " (never verified)" if last is None else f" (last verified {human_age(last)} ago)"
    lag = "-" if p is None or p["lag_minutes"] is None else f"{p['lag_minutes']:.0f}"
    pitr = "pitr -" if p is None else ("pitr ?" if p["error"] else f"pitr {p['retention_days']}d lag {lag}m")
    pending = "-" if r["pending_migrations"] is None else str(r["pending_migrations"])
    a = r["approvals"]
    approvals = "-" if a is None else str(len(a["open"])) + "".join(f" ({x['approval_id']})" for x in a["open"][:3])
    verdict = "ok" if r["ok"] else "ATTENTION: " + "; ".join(r["problems"])
    return (f"{printable(r['database'])}  {backup}  {drill}  {pitr}  migrations pending {pending}  "
            f"approvals open {approvals}  {verdict}")


def _pending(name: str, source: str, settings: Settings) -> int:
    from ..dburl import DatabaseUrl
    from ..lambda_support import database_url
    from ..migrations.files import read_migrations
    from ..migrations.runner import open_connection
    from ..migrations.service import fetch_migrations
    from ..migrations.status import compute_status

    url = DatabaseUrl.parse(database_url(settings.database(name)))
    migrations = read_migrations(fetch_migrations(source))
    with open_connection(url) as conn:
        status = compute_status(conn, migrations, database=url.display(), migrations_dir=source)
    return len(status.local if not status.managed else status.pending)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

    from ..errors import UsageError
    from ..oncall import collect

    if args.dest:
        settings = replace(settings, backup_dest=args.dest)
    if not settings.stack.databases:
        raise UsageError("no databases configured: set PGRUNBOOK_DATABASES as the stack does "
                         "(the DatabasesJson parameter)")
    now = datetime.now(UTC)
    approvals = open_approvals(args.approvals_table or settings.approval.table or None, now)
    rows = [database_row(f, now, _pending(f.name, args.migrations, settings) if args.migrations else None, approvals)
            for f in collect(settings, now=now, pitr=not args.no_pitr)]
    data = {"databases": rows, "ok": all(r["ok"] for r in rows), "at": now.isoformat()}
    emit(args, data, lambda: "\n".join(text_row(r) for r in rows))
    return 0 if data["ok"] else 1
