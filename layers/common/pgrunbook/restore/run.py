"""The restore, step by step (see the package doc for the order and what each step guarantees).

`run_restore` reads as the procedure: refuse a bad request, plan (the archive's companions, the
target's guards), fetch and prove the archive, check the target again against what the archive
itself needs, then mark, load, ANALYZE and unmark.

Progress (the reporter the shell passes; default: log lines every Settings.progress_seconds) has three
phases. "fetch": the archive's bytes read (downloaded from S3, hashed, listed) of its size. "restore": for
an archive, rows loaded of the manifest's exact row counts, polled on a separate
connection to the target from pg_stat_progress_copy (tuples_processed of each running COPY) and
pg_stat_user_tables (n_tup_ins, what committed COPYs inserted); a table whose COPY was seen and has
ended counts as complete. Chosen over the archive's TOC data sizes because the manifest's counts are
exact and the server says exactly how far each COPY is, whatever the compression and whatever order
pg_restore -j picks; index and constraint builds are not counted (once the last COPY ended the bar sits
near 100 % until pg_restore ends). For the runbook's plain script (no manifest): the file's bytes fed to
psql of its size. "analyze": tables analysed of all.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import dbinfo
from .. import progress as progress_
from ..archive import ArchiveRef
from ..dburl import DatabaseUrl, mask_secrets
from ..dumpfile import contents_problem, table_data_count, toc_extensions, toc_owners, toc_system_acls
from ..errors import (
    ArchiveCorrupt,
    ChecksumMismatch,
    Interrupted,
    ManifestMissing,
    PgrunbookError,
    StoreError,
    UsageError,
)
from ..keys import MANIFEST_SUFFIX, SHA256_SUFFIX
from ..manifest import Manifest
from ..pgtools import PgRestore, Tool, find_tool
from ..processes import start_guardian
from ..settings import Settings
from .fetch import Fetched, fetch, work_dir
from .guards import (
    Needs,
    TargetInfo,
    check_target,
    foreign_owners,
    inspect_target,
    needs_of,
    production_identity,
    refuse_changed,
    role_names,
)
from .load import analyze, load_archive, load_script
from .marks import MARK_FAILED, MARK_IN_PROGRESS, set_mark

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestoreOptions:
    file: str  # archive path or s3:// URI (.dump, .dump.tar, .sql, .sql.gz; or its .manifest.json)
    target_url: str | None = None  # default $NEW_DATABASE_URL
    force: bool = False
    jobs: int | None = None  # parallel pg_restore jobs (default: CPU count)
    no_owner: bool = False
    skip_missing_roles: bool = False  # like no_owner, but only when the target lacks roles (drills)
    analyze: bool = True
    work_dir: str | None = None  # where S3 archives are downloaded / tars extracted (default: $TMPDIR)
    session_settings: Mapping[str, str] | None = None  # overrides RESTORE_SESSION


@dataclass
class RestoreResult:
    archive: str
    target: str
    format: str
    bytes: int = 0
    sha256: str = ""
    jobs: int = 1
    download_seconds: float = 0.0
    restore_seconds: float = 0.0
    analyze_seconds: float = 0.0
    seconds: float = 0.0
    tables: int = 0
    missing_roles: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    manifest: Manifest | None = field(default=None, repr=False)

    def warn(self, message: str) -> None:
        """Log a warning and keep it in the result (the report shows it)."""
        log.warning(message)
        self.warnings.append(message)

    def to_dict(self) -> dict[str, Any]:
        return {"archive": self.archive, "target": self.target, "format": self.format, "bytes": self.bytes,
                "sha256": self.sha256, "jobs": self.jobs, "download_seconds": round(self.download_seconds, 3),
                "restore_seconds": round(self.restore_seconds, 3), "analyze_seconds": round(self.analyze_seconds, 3),
                "seconds": round(self.seconds, 3), "tables": self.tables, "missing_roles": self.missing_roles,
                "warnings": self.warnings,
                "manifest": None if self.manifest is None else self.archive + MANIFEST_SUFFIX}


@dataclass
class _Plan:
    """What the restore found before fetching the archive, and what it decided from it."""

    ref: ArchiveRef
    target: DatabaseUrl
    manifest: Manifest | None
    fmt: str  # custom | directory-tar | plain
    expected_sha256: str | None
    info: TargetInfo
    allow_no_owner: bool  # --no-owner, or skip_missing_roles
    no_owner: bool
    no_acl: bool
    tool: Tool  # pg_restore, or psql for a plain script
    result: RestoreResult

    @property
    def gz(self) -> bool:
        return self.ref.name.endswith(".gz")


def resolve_target(target_url: str | None, settings: Settings) -> DatabaseUrl:
    return DatabaseUrl.parse(target_url or settings.new_database_url,
                             what="target database URL (--target-url or NEW_DATABASE_URL)")


def run_restore(opts: RestoreOptions, settings: Settings,
                progress: progress_.Progress | None = None) -> RestoreResult:
    """Restore an archive into an empty database, or raise before touching it (see the package doc).
    `progress`: the reporter the shell chose (default: log lines every Settings.progress_seconds)."""
    reporter = progress_.default(progress, settings.progress_seconds)
    t0 = time.monotonic()
    start_guardian()  # starts while the guards talk to the target (see processes.start_guardian)
    ref, target = _request(opts, settings)
    plan = _plan(ref, target, opts, settings)  # the companions, then the guards on the target
    with work_dir(opts.work_dir or settings.work_dir) as work:
        td = time.monotonic()
        log.info("fetching the archive", extra={"archive": ref.uri})
        with progress_.phase(reporter, "fetch", plan.ref.store.size(plan.ref.key), "bytes") as shown:
            fetched = _fetch(plan, work, progress_.counted_callback(shown))
        _prove_archive(plan, fetched)  # sha256, manifest, contents; the guards again for what it holds
        plan.result.download_seconds = time.monotonic() - td
        refuse_changed(target)  # no other restore got there meanwhile
        _load_marked(plan, fetched, opts, reporter)
    plan.result.seconds = time.monotonic() - t0
    log.info("restore finished", extra={"target": target.display(), "seconds": round(plan.result.seconds, 2)})
    return plan.result


def _request(opts: RestoreOptions, settings: Settings) -> tuple[ArchiveRef, DatabaseUrl]:
    """The archive and target asked for, refusing a request that is not one (exit 2)."""
    ref = ArchiveRef.from_uri(opts.file)
    target = resolve_target(opts.target_url, settings)
    if not opts.force:
        raise UsageError(f"restore would load {ref.uri} into {target.display()}: pass --force to confirm "
                         "the target (it must be a new, empty database)")
    if opts.jobs is not None and opts.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    return ref, target


def _plan(ref: ArchiveRef, target: DatabaseUrl, opts: RestoreOptions, settings: Settings) -> _Plan:
    """The archive's manifest and checksum file, then the target: inspected and checked against what the
    manifest says the archive needs (nothing written)."""
    if not ref.store.exists(ref.key):
        raise StoreError(f"{ref.uri} not found")
    manifest = ref.manifest()
    fmt = manifest.archive_format if manifest else ref.format
    runbook_file = fmt == "plain" and manifest is None
    expected = ref.expected_sha256()
    result = RestoreResult(archive=ref.uri, target=target.display(), format=fmt, manifest=manifest)
    if expected is None:
        if not runbook_file:
            raise ChecksumMismatch(f"{ref.uri}{SHA256_SUFFIX} is missing: a pgrunbook backup always has one, so "
                                   "this backup is incomplete or was tampered with; refusing to restore it")
        result.warn(f"{ref.name}{SHA256_SUFFIX} is missing: the archive's integrity cannot be checked")
    if manifest is None and fmt != "plain":
        raise ManifestMissing(f"{ref.uri}{MANIFEST_SUFFIX} is missing: the backup did not finish; "
                             "refusing to restore it")

    production = production_identity(settings, result.warn)
    needs = needs_of(manifest)
    info = inspect_target(target, needs)
    allow_no_owner = opts.no_owner or opts.skip_missing_roles
    verdict = check_target(target, info, needs, allow_no_owner, production)
    for msg in verdict.warnings:
        result.warn(msg)
    result.missing_roles = missing_roles = verdict.missing_roles
    if missing_roles:
        result.warn(f"roles missing on the target: {role_names(missing_roles)}; restoring without ownership and "
                    "without grants (--no-owner)")
    no_owner = foreign_owners(verdict, opts.no_owner or bool(missing_roles), info, result.warn)
    no_acl = bool(missing_roles)
    if runbook_file and opts.no_owner:
        no_acl = True  # a runbook file does not say which roles its grants need
        result.warn("--no-owner on a runbook file: ownership and grants are both skipped")
    tool = find_tool("psql" if fmt == "plain" else "pg_restore",
                     min_major=max(info.identity.major, needs.source_major or 0), pg_bin=settings.pg_bin)
    return _Plan(ref=ref, target=target, manifest=manifest, fmt=fmt, expected_sha256=expected, info=info,
                 allow_no_owner=allow_no_owner, no_owner=no_owner, no_acl=no_acl, tool=tool, result=result)


def _fetch(plan: _Plan, work: Path, on_bytes: Callable[[int], None] | None = None) -> Fetched:
    fetched = fetch(plan.ref, plan.fmt, work, None if plan.fmt == "plain" else PgRestore(plan.tool), on_bytes)
    plan.result.sha256, plan.result.bytes = fetched.sha256, fetched.bytes
    return fetched


def _prove_archive(plan: _Plan, fetched: Fetched) -> None:
    """The archive is the one its .sha256 and manifest describe (checked first: damage is reported as
    such, whatever it broke) and its contents read; the target can take what it holds (extensions,
    owners, grants on system objects)."""
    ref, manifest, expected = plan.ref, plan.manifest, plan.expected_sha256
    if expected is not None and fetched.sha256 != expected:
        raise ChecksumMismatch(f"{ref.name} hashes to {fetched.sha256} but {ref.name}{SHA256_SUFFIX} says "
                               f"{expected}: the archive is damaged or incomplete; refusing to restore it")
    if manifest is not None and (manifest.sha256 != fetched.sha256 or manifest.bytes != fetched.bytes):
        raise ChecksumMismatch(
            f"the manifest describes a different archive ({manifest.bytes} bytes, sha256 {manifest.sha256}) "
            f"than {ref.name} ({fetched.bytes} bytes, sha256 {fetched.sha256}): manifest and archive come from "
            "different backups; refusing to restore")
    contents = fetched.contents
    problem = contents_problem(contents, manifest)
    if problem is not None:
        raise ArchiveCorrupt(problem)
    if contents.script is not None:
        needs = Needs(source_major=contents.script.source_major, extensions=set(contents.script.extensions))
    else:
        toc = contents.toc or []
        plan.result.tables = table_data_count(toc)
        # a version 1 manifest recorded no owners: read them from the archive's entries
        owners = toc_owners(toc, manifest.roles) if manifest is not None and manifest.owners is None else None
        needs = Needs(extensions=toc_extensions(toc), owners=owners, system_acls=toc_system_acls(toc))
    verdict = check_target(plan.target, plan.info, needs, plan.allow_no_owner)
    plan.no_owner = foreign_owners(verdict, plan.no_owner, plan.info, plan.result.warn)


def _load_marked(plan: _Plan, fetched: Fetched, opts: RestoreOptions, reporter: progress_.Progress) -> None:
    """Mark the target, load, ANALYZE, unmark; on any failure or interruption (the tools already stopped)
    the mark says FAILED and why, and the exception goes on."""
    ref, target, result = plan.ref, plan.target, plan.result
    jobs = opts.jobs or os.cpu_count() or 1
    session = {**plan.info.session_extras, **(opts.session_settings or {})}
    result.jobs = 1 if plan.fmt == "plain" else jobs
    major = plan.info.identity.major
    try:
        started = datetime.now(UTC).isoformat(timespec="seconds")
        set_mark(target, f"{MARK_IN_PROGRESS} (from {ref.uri}, started {started})")
        tr = time.monotonic()
        log.info("restoring", extra={"archive": ref.uri, "target": target.display(), "format": plan.fmt,
                                     "jobs": result.jobs})
        if plan.fmt == "plain":
            with progress_.phase(reporter, "restore", fetched.path.stat().st_size, "bytes") as shown:
                load_script(plan.tool, target, fetched.path, gz=plan.gz, sha256=fetched.sha256,
                            no_owner=plan.no_owner, no_acl=plan.no_acl, session=session, server_major=major,
                            on_bytes=progress_.counted_callback(shown))
        else:
            rows = _RowsLoaded(target, plan.manifest)
            with rows, progress_.phase(reporter, "restore", rows.total, "rows", rows.poll):
                load_archive(plan.tool, target, fetched.path, jobs=jobs, no_owner=plan.no_owner,
                             no_acl=plan.no_acl, session=session, server_major=major)
        result.restore_seconds = time.monotonic() - tr
        if opts.analyze:
            with progress_.phase(reporter, "analyze", None, "tables") as shown:
                result.analyze_seconds = analyze(target, jobs, on_progress=progress_.counted_callback(shown))
    except BaseException as exc:
        if isinstance(exc, Interrupted):
            reason = f"interrupted by {exc.signal_name}"
        else:
            reason = str(exc) if isinstance(exc, PgrunbookError) else f"{type(exc).__name__}: {exc}"
        set_mark(target, f"{MARK_FAILED} ({datetime.now(UTC).isoformat(timespec='seconds')}, "
                         f"from {ref.uri}): {mask_secrets(reason)[:900]}")
        if isinstance(exc, Interrupted):
            db = dbinfo.ident(target.dbname)
            exc.detail = (f"the restore into {target.display()} was stopped and the target is marked FAILED "
                          f"(interrupted); drop and recreate it (DROP DATABASE {db}; CREATE DATABASE {db}) "
                          "before restoring again")
        raise
    set_mark(target, None, only_if_ours=True)


class _RowsLoaded:
    """Rows loaded into the target so far, of the manifest's exact counts (see the module doc). `poll` runs
    on the progress thread with its own connection, opened on first use and closed when the block ends."""

    QUERY = """
        SELECT s.schemaname, s.relname, s.n_tup_ins, p.tuples_processed
        FROM pg_stat_user_tables s
        LEFT JOIN pg_stat_progress_copy p ON p.relid = s.relid AND p.datname = current_database()"""

    def __init__(self, target: DatabaseUrl, manifest: Manifest | None) -> None:
        self.target, self.manifest = target, manifest
        self.expected = manifest.tables if manifest is not None else {}
        self.total = float(sum(self.expected.values())) or None
        self.done: dict[str, int] = {}
        self.copying: set[str] = set()
        self.conn: Any = None

    def __enter__(self) -> _RowsLoaded:
        return self

    def __exit__(self, *exc: object) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    def poll(self) -> float | None:
        if self.manifest is None or self.total is None:
            return None
        if self.conn is None:
            self.conn = dbinfo.connect(self.target, autocommit=True, application="pgrunbook-restore-progress")
        now_copying: dict[str, int] = {}
        for schema, name, inserted, copied in self.conn.execute(self.QUERY).fetchall():
            key = self.manifest.key(str(schema), str(name))
            if key not in self.expected:
                continue
            self.done[key] = max(self.done.get(key, 0), int(inserted or 0))
            if copied is not None:
                now_copying[key] = now_copying.get(key, 0) + int(copied)
        for key, copied in now_copying.items():
            self.done[key] = max(self.done[key], copied)
        for key in self.copying - set(now_copying):  # its COPY ended: the whole table is in
            self.done[key] = self.expected[key]
        self.copying = set(now_copying)
        return float(sum(min(n, self.expected[k]) for k, n in self.done.items()))
