"""`pgrunbook backup`, `verify-backup`, `list`."""

from __future__ import annotations

import argparse
from typing import Any

from ..settings import COMPRESSIONS, KINDS, Settings
from .common import add_json, destination, emit, human_age, human_bytes, printable, progress


def register(sub: Any) -> None:
    p = sub.add_parser(
        "backup", help="take a consistent backup (archive + manifest + .sha256)",
        description="Dump a database consistently: exact row counts and pg_dump share one snapshot. "
                    "The archive is streamed to S3 (multipart, SSE-KMS or SSE-S3) or a folder while its sha256 "
                    "is computed; then <archive>.sha256 and <archive>.manifest.json are written. With several "
                    "CPUs and enough free disk, pg_dump runs in parallel on the shared snapshot and is packed "
                    "into one .dump.tar; otherwise one custom-format .dump is streamed with no local copy.")
    p.add_argument("--database-url", metavar="URL", help="source database (default: $DATABASE_URL)")
    p.add_argument("--to", dest="dest", metavar="DEST", type=destination,
                   help="s3://bucket/prefix or a folder (default: $PGRUNBOOK_BACKUP_DEST or ./backups); "
                        "objects go to <database>/<kind>/YYYY/MM/db-backup-YYYYMMDD-HHMMSSZ.dump")
    p.add_argument("--out", metavar="PATH",
                   help="write exactly this file instead; a .sql.gz name writes the runbook's format "
                        "(plain SQL, gzip) that `gunzip -c PATH | psql` restores")
    p.add_argument("--kind", choices=KINDS, default="manual", help="why this backup exists (default: manual)")
    p.add_argument("--compress", choices=COMPRESSIONS, help="archive compression (default: zstd)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="parallel pg_dump processes (default: CPU count; 1 streams with no local staging)")
    p.add_argument("--app-version", metavar="VERSION", help="application version to record in the manifest")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file given by --out")
    p.add_argument("--lock-wait-timeout", type=float, metavar="SECONDS",
                   help="how long to wait for a table lock another session holds before failing, naming the table "
                        "and the blocking session (default: $PGRUNBOOK_LOCK_WAIT_TIMEOUT or 120; 0 waits forever)")
    add_json(p)
    p.set_defaults(handler=cmd_backup)

    v = sub.add_parser(
        "verify-backup", help="check an archive: sha256, manifest, table of contents",
        description="Read the archive once: its sha256 must match <archive>.sha256 and the manifest, and "
                    "`pg_restore --list` must read its table of contents. Exit 0 when all hold, 1 otherwise.")
    v.add_argument("uri", metavar="URI", help="archive path or s3:// URI (or its .manifest.json)")
    add_json(v)
    v.set_defaults(handler=cmd_verify_backup)

    ls = sub.add_parser("list", help="list backups, newest first",
                        description="List the backups found under DEST (their manifests), newest first.")
    ls.add_argument("--from", dest="dest", metavar="DEST", type=destination,
                    help="s3://bucket/prefix or a folder (default: $PGRUNBOOK_BACKUP_DEST or ./backups)")
    add_json(ls)
    ls.set_defaults(handler=cmd_list)


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from ..backup import BackupOptions, run_backup

    result = run_backup(BackupOptions(database_url=args.database_url, dest=args.dest, out=args.out, kind=args.kind,
                                      compress=args.compress, jobs=args.jobs, overwrite=args.overwrite,
                                      app_version=args.app_version, lock_wait_timeout=args.lock_wait_timeout),
                        settings, progress=progress(args, settings))
    emit(args, result.to_dict(), lambda: (
        f"backup of {printable(result.database)} done in {result.seconds:.1f}s\n"
        f"  archive   {result.archive} ({human_bytes(result.bytes)}, {result.format})\n"
        f"  manifest  {result.manifest}\n"
        f"  sha256    {result.sha256}\n"
        f"  contents  {result.tables} tables, {result.rows} rows (exact, in the dump's snapshot)"))
    return 0


def cmd_verify_backup(args: argparse.Namespace, settings: Settings) -> int:
    from ..archive import ArchiveRef, verify_archive

    report = verify_archive(ArchiveRef.from_uri(args.uri), pg_bin=settings.pg_bin)
    emit(args, report.to_dict(), lambda: "\n".join(
        [f"{'OK' if report.ok else 'FAILED'}  {report.uri}"]
        + [f"  {'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in report.checks]))
    return 0 if report.ok else 1


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from ..backup_index import list_backups

    backups = list_backups(args.dest, settings=settings)
    rows = [b.to_dict() for b in backups]

    def text() -> str:
        if not backups:
            return "no backups found"
        lines = [f"{'FINISHED (UTC)':<20} {'AGE':>6} {'KIND':<13} {'DATABASE':<16} {'SIZE':>9} {'TABLES':>6} "
                 f"{'ROWS':>12}  ARCHIVE"]
        for b in backups:
            lines.append(f"{b.finished_at[:19].replace('T', ' '):<20} {human_age(b.age_seconds):>6} {b.kind:<13} "
                         f"{printable(b.database):<16} {human_bytes(b.bytes):>9} {b.tables:>6} {b.rows:>12}  "
                         f"{b.archive}")
        return "\n".join(lines)

    emit(args, {"backups": rows}, text)
    return 0
