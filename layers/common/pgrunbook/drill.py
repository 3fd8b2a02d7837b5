"""The monthly restore drill: latest backup -> fresh target -> restore -> verify -> report -> tear down.

The report's timings are the measured recovery time: download (fetch + checksum + TOC), restore
(pg_restore/psql), analyze/reset (production settings + ANALYZE), verify; `seconds_per_gb` is
(download + restore + analyze/reset) per GB (10^9 bytes) of the source database's size.
A drill never raises for a failed step: the report says what failed (`verified` False, `error`).
Only a usage error and an interruption (SIGTERM/SIGINT: `Interrupted`) propagate, both after the
provisioned target was torn down (unless --keep); the restore inside has then stopped its pg tools.

`provisioned_target()` is the one way a restore target is held for a while and let go (the drill's,
and the migrations rehearsal's): created on entering the block, destroyed on leaving it whatever
ends it (unless kept); a failed teardown is logged and recorded, never raised over the block's own
outcome.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from . import progress as progress_
from .archive import ArchiveRef
from .backup_index import latest_backup
from .dburl import mask_secrets
from .errors import BackupNotFound, Interrupted, PgrunbookError, UsageError
from .provision import ProvisionedTarget, Provisioner, get_provisioner
from .restore import RestoreOptions, RestoreResult, run_restore
from .settings import Settings
from .verify import HttpCheck, VerifyOptions, VerifyReport, run_verify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DrillOptions:
    dest: str | None = None  # where to find the latest backup (default: settings.backup_dest)
    backup: str | None = None  # or this archive
    server_url: str | None = None  # for the `database` provisioner
    provisioner: str | None = None  # database | local-instance | rds (default: database with server_url)
    keep: bool = False
    jobs: int | None = None
    work_dir: str | None = None  # local-instance data dirs and download space
    database: str | None = None  # pick the latest backup of this database
    app_url: str | None = None
    checks: tuple[HttpCheck, ...] = ()


@dataclass
class DrillReport:
    backup: str | None = None
    provisioner: str = ""
    target: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    database_bytes: int = 0
    archive_bytes: int = 0
    restore: RestoreResult | None = None
    verify: VerifyReport | None = None
    kept: bool = False
    error: str | None = None

    @property
    def verified(self) -> bool:
        return self.error is None and self.verify is not None and self.verify.ok

    @property
    def recovery_seconds(self) -> float:
        return sum(self.timings.get(k, 0.0) for k in ("download", "restore", "analyze"))

    @property
    def seconds_per_gb(self) -> float | None:
        if not self.database_bytes or not self.recovery_seconds:
            return None
        return self.recovery_seconds / (self.database_bytes / 1e9)

    def to_dict(self) -> dict[str, Any]:
        return {"verified": self.verified, "verdict": "verified" if self.verified else "FAILED",
                "backup": self.backup, "provisioner": self.provisioner, "target": self.target,
                "started_at": self.started_at,
                "timings": {k: round(v, 3) for k, v in self.timings.items()},
                "recovery_seconds": round(self.recovery_seconds, 3),
                "database_bytes": self.database_bytes, "archive_bytes": self.archive_bytes,
                "seconds_per_gb": None if self.seconds_per_gb is None else round(self.seconds_per_gb, 2),
                "restore": self.restore.to_dict() if self.restore else None,
                "verify": self.verify.to_dict() if self.verify else None,
                "kept": self.kept, "error": self.error}

    def text(self) -> str:
        lines = [f"restore drill: {'VERIFIED' if self.verified else 'FAILED'}"]
        lines.append(f"  backup        {self.backup or '-'}")
        lines.append(f"  target        {self.target.get('url', '-')} ({self.provisioner}"
                     f"{', kept' if self.kept else ', dropped after the drill'})")
        if self.kept and self.target.get("details", {}).get("url_file"):
            lines.append(f"  kept          its URL (with password) is in {self.target['details']['url_file']}")
        order = ("provision", "download", "restore", "analyze", "verify", "teardown", "total")
        lines.append("  timings       " + ", ".join(f"{k} {self.timings[k]:.2f}s" for k in order if k in self.timings))
        size = f"{_mb(self.database_bytes)} database, {_mb(self.archive_bytes)} archive"
        spg = f"{self.seconds_per_gb:.1f} s/GB" if self.seconds_per_gb is not None else "-"
        lines.append(f"  recovery      {self.recovery_seconds:.2f}s for {size} ({spg})")
        if self.restore and self.restore.warnings:
            lines += [f"  warning       {w}" for w in self.restore.warnings]
        if self.error:
            lines.append(f"  error         {self.error}")
        if self.verify is not None:
            lines += ["  " + ln for ln in self.verify.text().splitlines()]
        return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _choose_backup(opts: DrillOptions, settings: Settings) -> str:
    if opts.backup:
        return opts.backup
    entry = latest_backup(opts.dest or settings.backup_dest, database=opts.database, settings=settings)
    if entry is None:
        raise BackupNotFound(f"no backup found in {opts.dest or settings.backup_dest}")
    return entry.archive


def default_provisioner_kind(opts: DrillOptions) -> str:
    return opts.provisioner or ("database" if opts.server_url else "local-instance")


class TargetLease:
    """A provisioned target held for a `with` block (see `provisioned_target`)."""

    def __init__(self, provisioner: Provisioner, name: str, roles: list[str] | None = None, *, keep: bool = False,
                 what: str = "target") -> None:
        self.provisioner, self.name, self.roles, self.keep, self.what = provisioner, name, roles or [], keep, what
        self.target: ProvisionedTarget | None = None
        self.provision_seconds = 0.0
        self.teardown_seconds: float | None = None  # set once the target was destroyed (or its removal failed)
        self.teardown_error: str | None = None
        self.kept = False

    def __enter__(self) -> ProvisionedTarget:
        t = time.monotonic()
        self.target = self.provisioner.create(self.name, self.roles)
        self.provision_seconds = time.monotonic() - t
        return self.target

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def release(self) -> None:
        """Destroy the target (once), or mark it kept; a failure to destroy is recorded, not raised."""
        if self.target is None or self.kept or self.teardown_seconds is not None:
            return
        if self.keep:
            self.kept = True
            return
        t = time.monotonic()
        try:
            self.provisioner.destroy(self.target)
        except Exception as exc:
            self.teardown_error = f"could not remove the {self.what} {self.target.name}: {mask_secrets(str(exc))}"
            log.warning(self.teardown_error)
        self.teardown_seconds = time.monotonic() - t


def provisioned_target(provisioner: Provisioner, name: str, roles: list[str] | None = None, *, keep: bool = False,
                       what: str = "target") -> TargetLease:
    """`with provisioned_target(p, name, roles) as target:` a fresh target for the block, torn down when the
    block ends however it ends (an error, SIGTERM/SIGINT), unless `keep`. The lease records the provisioning
    and teardown times, whether it was kept and a teardown failure (`teardown_error`)."""
    return TargetLease(provisioner, name, roles, keep=keep, what=what)


def run_drill(opts: DrillOptions, settings: Settings, provisioner: Provisioner | None = None,
              progress: progress_.Progress | None = None) -> DrillReport:
    """Run one drill. Usage errors raise; every other failure is in the report (verified False). `progress`:
    the reporter the shell chose (default: log lines every Settings.progress_seconds); its phases are the
    restore's ("restore", "analyze") then "verify" (tables counted of all)."""
    reporter = progress_.default(progress, settings.progress_seconds)
    kind = provisioner.kind if provisioner is not None else default_provisioner_kind(opts)
    report = DrillReport(provisioner=kind, started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    t_all = time.monotonic()
    if provisioner is None:
        provisioner = get_provisioner(kind, server_url=opts.server_url,
                                      work_dir=Path(opts.work_dir) if opts.work_dir else None,
                                      settings=settings)
    lease: TargetLease | None = None
    try:
        report.backup = _choose_backup(opts, settings)
        manifest = ArchiveRef.from_uri(report.backup).manifest()
        dbname = str(manifest.source.get("database")) if manifest else "restored"
        roles = list(manifest.source.get("roles") or []) if manifest else []
        if manifest:
            report.database_bytes = int(manifest.source.get("database_size_bytes") or 0)
        log.info("drill started", extra={"backup": report.backup, "provisioner": kind})

        lease = provisioned_target(provisioner, dbname, roles, keep=opts.keep, what="drill target")
        with lease as target:
            report.timings["provision"] = lease.provision_seconds
            report.target = target.to_dict()
            _restore_and_verify(opts, settings, report, provisioner, target, manifest=manifest,
                                fresh_instance=kind != "database", reporter=reporter)
    except UsageError:
        _settle(report, lease)
        raise
    except PgrunbookError as exc:
        report.error = str(exc)
    except Exception as exc:  # a drill reports; it does not crash the monthly schedule
        log.exception("drill failed unexpectedly")
        report.error = f"{type(exc).__name__}: {mask_secrets(str(exc))}"
    except BaseException as exc:  # interrupted (SIGTERM, SIGINT, a deadline): what was provisioned is gone
        _settle(report, lease)
        held = lease.target if lease is not None else None
        if isinstance(exc, Interrupted):
            where = "" if held is None else (
                f"; its target {held.name} was kept (marked FAILED)" if report.kept else
                f"; its target {held.name} was removed" if "teardown" in report.timings and not report.error else
                f"; {report.error}" if report.error else "")
            exc.detail = f"the drill stopped before it finished{where}"
        raise
    _settle(report, lease)
    report.timings["total"] = time.monotonic() - t_all
    log.info("drill finished", extra={"verified": report.verified, "seconds": round(report.timings["total"], 2)})
    return report


def _restore_and_verify(opts: DrillOptions, settings: Settings, report: DrillReport, provisioner: Provisioner,
                        target: ProvisionedTarget, *, manifest: Any, fresh_instance: bool,
                        reporter: progress_.Progress) -> None:
    # a fresh instance got the backup's roles; on a shared server, where roles lack, restore without
    # ownership and grants (the report says which roles were missing)
    assert report.backup is not None
    restore = run_restore(RestoreOptions(file=report.backup, target_url=target.url, force=True, jobs=opts.jobs,
                                         skip_missing_roles=True, analyze=not fresh_instance,
                                         work_dir=opts.work_dir), settings, progress=reporter)
    report.restore = restore
    report.archive_bytes = restore.bytes
    report.timings["download"] = restore.download_seconds
    report.timings["restore"] = restore.restore_seconds
    t = time.monotonic()
    provisioner.prepare_for_verify(target)
    report.timings["analyze"] = restore.analyze_seconds + (time.monotonic() - t)

    t = time.monotonic()
    report.verify = progress_.with_progress(
        run_verify, reporter, "verify", "tables",
        VerifyOptions(database_url=target.url, manifest=report.backup, manifest_data=manifest, app_url=opts.app_url,
                      checks=opts.checks), settings)
    report.timings["verify"] = time.monotonic() - t
    if not report.verify.ok:
        report.error = "verification failed: " + "; ".join(
            f"{c.name}: expected {c.expected}, actual {c.actual}" for c in report.verify.failures[:5])


def _settle(report: DrillReport, lease: TargetLease | None) -> None:
    """What the lease did at the end of the block, into the report (a teardown failure is the error
    only when nothing else failed)."""
    if lease is None:
        return
    lease.release()
    report.kept = lease.kept
    if lease.teardown_seconds is not None:
        report.timings["teardown"] = lease.teardown_seconds
    report.error = report.error or lease.teardown_error


def local_drill(backup: str, work_dir: Path, settings: Settings) -> DrillReport:
    """The demo's drill: `backup` into a fresh restore-tuned local instance under work_dir, verified, torn down."""
    return run_drill(DrillOptions(backup=backup, provisioner="local-instance", work_dir=str(work_dir)), settings)
