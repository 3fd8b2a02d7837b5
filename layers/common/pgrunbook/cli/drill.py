"""`pgrunbook drill`: the monthly restore test, end to end."""

from __future__ import annotations

import argparse
from typing import Any

from ..settings import Settings
from .common import add_json, destination, emit, progress


def register(sub: Any) -> None:
    p = sub.add_parser(
        "drill", help="restore drill: latest backup -> fresh target -> restore -> verify -> report",
        description="The runbook's monthly restore test. Takes the latest backup in DEST (or --backup), "
                    "provisions a fresh target (database: a new database on --server-url; local-instance: a new "
                    "local PostgreSQL server started restore-tuned; rds: a new RDS instance from "
                    "PGRUNBOOK_RDS_* settings), restores, resets the target to production settings with ANALYZE, "
                    "verifies against the manifest and reports timings (download, restore, verify, seconds per "
                    "GB). The target is removed afterwards unless --keep. Exit 0 only when the copy verified.")
    p.add_argument("--from", dest="dest", metavar="DEST", type=destination,
                   help="s3://bucket/prefix or folder holding the backups (default: $PGRUNBOOK_BACKUP_DEST)")
    p.add_argument("--backup", metavar="URI", help="drill this archive instead of the latest")
    p.add_argument("--database", metavar="NAME", help="latest backup of this database only")
    p.add_argument("--server-url", metavar="URL", help="server for the `database` provisioner")
    p.add_argument("--provisioner", choices=("database", "local-instance", "rds"),
                   help="default: database with --server-url, else local-instance")
    p.add_argument("--keep", action="store_true", help="keep the restored target (its URL is in the report)")
    p.add_argument("--jobs", type=int, metavar="N", help="parallel pg_restore jobs (default: CPU count)")
    p.add_argument("--work-dir", metavar="DIR", help="space for downloads and local instances (default: $TMPDIR)")
    p.add_argument("--app-url", metavar="URL", help="staging app pointed at the restored copy (HTTP smoke checks)")
    p.add_argument("--check", action="append", default=[], metavar="METHOD:PATH:STATUS", help="extra HTTP check")
    add_json(p)
    p.set_defaults(handler=cmd_drill)


def cmd_drill(args: argparse.Namespace, settings: Settings) -> int:
    from ..drill import DrillOptions, run_drill
    from ..verify import HttpCheck

    report = run_drill(DrillOptions(dest=args.dest, backup=args.backup, database=args.database,
                                    server_url=args.server_url, provisioner=args.provisioner, keep=args.keep,
                                    jobs=args.jobs, work_dir=args.work_dir, app_url=args.app_url,
                                    checks=tuple(HttpCheck.parse(c) for c in args.check)), settings,
                       progress=progress(args, settings))
    emit(args, report.to_dict(), report.text)
    return 0 if report.verified else 1
