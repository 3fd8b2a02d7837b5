"""`make demo`: the pipeline on one machine. A local PostgreSQL server stands in for
production, a folder and a local S3 (moto) for the backup bucket.

Each step calls the same core the CLI and the Lambda handlers call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import aws
from .archive import ArchiveRef, verify_archive
from .backup import BackupOptions, BackupResult, run_backup
from .catalog_list import list_backups
from .drill import local_drill
from .errors import PgrunbookError
from .localpg import LocalServer, free_port
from .manifest import Manifest
from .sample import create_sample_database
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class DemoReport:
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def say(self, text: str = "") -> None:
        self.lines.append(text)
        print(text, flush=True)  # noqa: T201 - the demo talks to the operator on stdout


@contextlib.contextmanager
def local_s3() -> Iterator[str]:
    """A moto S3 server on localhost, reached like real S3 through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "demo",
                       "AWS_SECRET_ACCESS_KEY": "demo", "AWS_DEFAULT_REGION": "us-east-1"})
    aws.reset_clients()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        aws.reset_clients()
        server.stop()


def _describe(report: DemoReport, result: BackupResult) -> None:
    data: dict[str, Any] = result.manifest_data
    report.say(f"  archive   {result.archive}")
    report.say(f"  manifest  {result.manifest}")
    report.say(f"  sha256    {result.sha256}")
    report.say(f"  size      {result.bytes} bytes, {result.format}, {data['archive']['compression']}, "
               f"{result.seconds:.2f}s")
    report.say(f"  contents  {result.tables} tables, {result.rows} rows, counted in the dump's own snapshot:")
    for table, rows in Manifest(data).tables.items():
        report.say(f"              {table:<36} {rows:>8}")
    prisma = data.get("prisma") or {}
    names = [m["name"] for m in prisma.get("migrations", [])]
    report.say(f"  prisma    {len(names)} applied migrations: {', '.join(names) or '-'}")


def run_demo(workdir: Path) -> DemoReport:
    report = DemoReport()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    settings = Settings.from_env({})
    report.say("pgrunbook demo: the runbook's backup procedure, automated, on this machine\n")

    report.say("1. Start a local PostgreSQL 18 server (stands in for production)")
    with LocalServer.running(workdir / "prod") as prod, local_s3():
        report.say(f"   {prod.url('postgres', password='***')}")  # noqa: S106 - masked on purpose
        report.say("2. Create the sample application database (runbook tables + _prisma_migrations)")
        app_url = create_sample_database(prod.url(), "app")

        report.say("3. Back it up to a folder: consistent snapshot, exact counts, sha256, manifest")
        folder = workdir / "backups"
        to_folder = run_backup(BackupOptions(database_url=app_url, dest=str(folder), kind="manual"), settings)
        _describe(report, to_folder)

        report.say("4. Back it up to S3 (a local moto S3; multipart upload, SSE)")
        aws.client("s3").create_bucket(Bucket="pgrunbook-demo")
        to_s3 = run_backup(BackupOptions(database_url=app_url, dest="s3://pgrunbook-demo/backups",
                                         kind="scheduled", jobs=1), settings)
        report.say(f"  archive   {to_s3.archive} ({to_s3.bytes} bytes, {to_s3.tables} tables, {to_s3.rows} rows)")

        report.say("5. Verify both backups: sha256, manifest, table of contents (pg_restore --list)")
        for result in (to_folder, to_s3):
            check = verify_archive(ArchiveRef.from_uri(result.archive))
            report.ok &= check.ok
            report.say(f"  {'verified' if check.ok else 'FAILED'}  {result.archive}")
            for c in check.checks:
                report.say(f"      {'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")

        report.say("6. What the folder holds (pgrunbook list --from " + str(folder) + ")")
        for entry in list_backups(str(folder)):
            report.say(f"  {entry.finished_at[:19]}  {entry.kind:<10} {entry.database:<6} {entry.bytes:>8} bytes "
                       f"{entry.tables} tables {entry.rows} rows  {entry.archive}")

        report.say("7. Restore drill: the S3 backup -> a fresh restore-tuned local instance -> restore -> "
                   "production settings + ANALYZE -> verify against the manifest -> tear down")
        drill = local_drill(to_s3.archive, workdir / "drill", settings)
        report.ok &= drill.verified
        for line in drill.text().splitlines():
            report.say("  " + line)

    report.say("")
    report.say("demo " + ("finished: every step verified" if report.ok else "FAILED: see the lines above"))
    report.say(f"backups kept in {folder}")
    report.say(f"restore drill: {'VERIFIED' if drill.verified else 'FAILED'} ({drill.backup} restored and verified "
               f"in {drill.recovery_seconds + drill.timings.get('verify', 0.0):.1f}s)")
    if not report.ok:
        raise PgrunbookError("the demo found a failed verification")
    return report

