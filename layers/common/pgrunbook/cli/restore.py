"""`pgrunbook restore` and `pgrunbook verify`."""

from __future__ import annotations

import argparse
from typing import Any

from ..settings import Settings
from .common import add_json, emit, human_bytes, progress


def register(sub: Any) -> None:
    p = sub.add_parser(
        "restore", help="restore a backup into a NEW, empty database (guarded, parallel)",
        description="Restore an archive (folder path or s3:// URI; .dump, .dump.tar, or the runbook's .sql/.sql.gz) "
                    "into a new, empty database. Before any byte reaches the target: the sha256 must match "
                    "(checked while downloading), the archive must read, the target must be empty, must not be "
                    "the backup's source nor $DATABASE_URL, and its server must be new enough and have every "
                    "extension and role the backup needs. Then pg_restore -j N (or psql with ON_ERROR_STOP in one "
                    "transaction) loads it with restore-tuned session settings and ANALYZE runs. A failed restore "
                    "exits 1 and leaves the database commented 'pgrunbook: restore FAILED ...'.")
    p.add_argument("--file", required=True, metavar="URI", help="the archive (or its .manifest.json)")
    p.add_argument("--target-url", metavar="URL", help="target database (default: $NEW_DATABASE_URL)")
    p.add_argument("--force", action="store_true", help="required: confirms the target is the new database")
    p.add_argument("--jobs", type=int, metavar="N", help="parallel pg_restore jobs (default: CPU count)")
    p.add_argument("--no-owner", action="store_true",
                   help="do not restore ownership (for targets whose roles differ); grants are skipped too when "
                        "roles are missing, and the missing roles are reported")
    p.add_argument("--no-analyze", action="store_true", help="skip ANALYZE after the load")
    p.add_argument("--work-dir", metavar="DIR",
                   help="where S3 archives are downloaded and .dump.tar extracted (default: $PGRUNBOOK_WORK_DIR "
                        "or $TMPDIR)")
    add_json(p)
    p.set_defaults(handler=cmd_restore)

    v = sub.add_parser(
        "verify", help="verify a restored database (exact counts, sequences, Prisma state, HTTP smoke checks)",
        description="Check a database against a backup's manifest: connectivity (SELECT now()), no failed-restore "
                    "mark, the exact row count of every table, sequences at least at the manifest's values, the "
                    "applied Prisma migrations equal to the manifest's and none failed. Without --manifest: the "
                    "counts of \"User\", \"Job\", \"SecurityEvent\" where they exist. With --app-url: GET /health, "
                    "GET /ready, each --check and an optional --sign-in (credentials from SMOKE_SIGNIN_BODY or "
                    "SMOKE_EMAIL/SMOKE_PASSWORD). Exit 0 only when every check passes.")
    v.add_argument("--database-url", metavar="URL",
                   help="database to verify (default: $NEW_DATABASE_URL, then $DATABASE_URL)")
    v.add_argument("--manifest", metavar="URI", help="the backup (archive or .manifest.json) to verify against")
    v.add_argument("--app-url", metavar="URL", help="base URL of a staging app pointed at the restored copy")
    v.add_argument("--check", action="append", default=[], metavar="METHOD:PATH:STATUS",
                   help="an HTTP check, e.g. GET:/api/providers?q=a:200 (repeatable)")
    v.add_argument("--sign-in", metavar="METHOD:PATH:STATUS",
                   help="a sign-in request with a JSON body from the environment, e.g. POST:/api/auth/login:200")
    v.add_argument("--no-default-checks", action="store_true", help="do not add GET /health and GET /ready")
    v.add_argument("--http-timeout", type=float, default=10.0, metavar="SECONDS", help="per request (default 10)")
    v.add_argument("--jobs", type=_at_least_one, metavar="N",
                   help="tables counted at once, each on its own connection, largest first (default: the CPU count, "
                        "at most 4); counts are exact count(*) of what is committed, so nothing should write to "
                        "the copy while it is verified")
    add_json(v)
    v.set_defaults(handler=cmd_verify)


def _at_least_one(value: str) -> int:
    """argparse type of verify's --jobs: a whole number >= 1 (a usage error before anything connects)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from ..restore import RestoreOptions, run_restore

    result = run_restore(RestoreOptions(file=args.file, target_url=args.target_url, force=args.force,
                                        jobs=args.jobs, no_owner=args.no_owner, analyze=not args.no_analyze,
                                        work_dir=args.work_dir), settings, progress=progress(args, settings))
    emit(args, result.to_dict(), lambda: "\n".join([
        f"restored {result.archive} into {result.target} in {result.seconds:.1f}s",
        f"  archive   {human_bytes(result.bytes)}, {result.format}, sha256 {result.sha256} (verified)",
        f"  timings   fetch+check {result.download_seconds:.2f}s, load {result.restore_seconds:.2f}s "
        f"({result.jobs} job{'s' if result.jobs != 1 else ''}), analyze {result.analyze_seconds:.2f}s",
        *[f"  warning   {w}" for w in result.warnings],
        f"  next      pgrunbook verify --database-url <target> --manifest {result.archive}"
        if result.manifest is not None else "  next      pgrunbook verify --database-url <target>"]))
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from ..progress import with_progress
    from ..verify import HttpCheck, VerifyOptions, run_verify

    opts = VerifyOptions(database_url=args.database_url, manifest=args.manifest, app_url=args.app_url,
                         checks=tuple(HttpCheck.parse(c) for c in args.check),
                         sign_in=HttpCheck.parse(args.sign_in) if args.sign_in else None,
                         default_http=not args.no_default_checks, http_timeout=args.http_timeout, jobs=args.jobs)
    report = with_progress(run_verify, progress(args, settings), "verify", "tables", opts, settings)
    emit(args, report.to_dict(), report.text)
    return 0 if report.ok else 1
