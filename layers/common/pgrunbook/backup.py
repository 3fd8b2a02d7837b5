"""Consistent backups: one snapshot for the dump and for the exact counts.

In a REPEATABLE READ transaction we export a snapshot and start `pg_dump --snapshot` on
it; while pg_dump runs, the same transaction counts every table, so the manifest's counts
are exactly the rows in the archive. Two ways to move the bytes:

- stream (custom format): pg_dump's stdout goes straight into the store (S3 multipart or
  a `.partial` file), hashed on the way; no temporary copy, memory flat.
- parallel (directory format, `pg_dump -j N` on the shared snapshot): staged in a local
  folder when it has room, then streamed into the store as one uncompressed tar (the
  files inside are already compressed); the staging folder is always removed.

The archive is written first, then `<archive>.sha256`, then `<archive>.manifest.json`;
a failure at any point removes what was written, so nothing half-done looks complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from . import __version__, backup_index, dbinfo, lockwait, rowcount
from . import progress as progress_
from .dburl import DatabaseUrl
from .errors import BackupFailed, OutputExists, PgrunbookError, StoreError, ToolError, UsageError
from .keys import MANIFEST_SUFFIX, SHA256_SUFFIX, archive_key
from .manifest import MANIFEST_VERSION, Manifest, sha256_line
from .manifest import _validator as manifest_validator
from .manifest import contents as manifest_contents
from .pgtools import PgDump, PgRestore, RunningTool
from .processes import ToolProcess, guard_path, start_guardian
from .settings import COMPRESSIONS, KINDS, Settings
from .store import LocalStore, ObjectWriter, Store, open_store

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024
# Archive bytes per byte of pg_database_size when no previous backup of the database says better: stated
# estimates (the sample data measured 0.02-0.06 with zstd:1, the benchmark's 0.06; indexes are not dumped).
COMPRESSION_ESTIMATE = {"zstd": 0.08, "gzip": 0.10, "none": 0.6}


@dataclass(frozen=True)
class BackupOptions:
    database_url: str | None = None
    dest: str | None = None  # s3://bucket/prefix or a folder; ignored when `out` is given
    out: str | None = None  # an explicit file path (runbook style)
    kind: str = "manual"
    compress: str | None = None  # zstd | gzip | none (default zstd; gzip for .sql.gz)
    jobs: int | None = None  # parallel dump processes (None: by CPU count); 1 forces streaming
    overwrite: bool = False
    app_version: str | None = None
    lock_wait_timeout: float | None = None  # seconds to wait for a table lock (None: settings; 0: forever)


@dataclass
class BackupResult:
    archive: str
    manifest: str
    sha256: str
    bytes: int
    tables: int
    rows: int
    seconds: float
    format: str
    kind: str
    database: str
    counts_seconds: float = 0.0
    manifest_data: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"archive": self.archive, "manifest": self.manifest, "sha256": self.sha256, "bytes": self.bytes,
                "tables": self.tables, "rows": self.rows, "seconds": round(self.seconds, 3),
                "format": self.format, "kind": self.kind, "database": self.database,
                "counts_seconds": round(self.counts_seconds, 3)}


@dataclass(frozen=True)
class _Plan:
    store: Store
    key: str  # the name asked for; a backup to DEST may end under the next free name (see open_writer)
    fmt: str  # custom | directory-tar | plain
    compression: str  # zstd:1 | gzip:6 | none
    jobs: int
    out_name: str | None = None  # --out: the file name written inside the .sha256 line, as the operator gave it
    replace: bool = False  # --out --overwrite: replace the file and its companions

    def open_writer(self) -> ObjectWriter:
        """The archive's writer. Never replaces another backup: a backup to DEST that finds its name
        taken (another run in the same second) takes the next free one, <name>.2.dump, …; `--out`
        without --overwrite fails instead. The final key is `writer.key` once committed."""
        if self.out_name is not None:
            return self.store.open_writer(self.key, exclusive=not self.replace)
        return self.store.open_writer(self.key, unique=True)

    @property
    def sha_name(self) -> str:
        """The file name written inside the .sha256 line (`sha256sum -c` run beside the archive)."""
        return self.out_name if self.out_name is not None else Path(self.key).name


def _compression(compress: str | None, level: int, plain: bool) -> str:
    if compress is None:
        compress = "gzip" if plain else "zstd"
    if compress not in COMPRESSIONS:
        raise UsageError(f"--compress must be one of {', '.join(COMPRESSIONS)}, not {compress!r}")
    if compress == "none":
        return "none"
    if compress == "gzip":
        return "gzip:6" if plain else f"gzip:{max(level, 1)}"
    return f"zstd:{max(level, 1)}"


def _plan(opts: BackupOptions, settings: Settings, database: str, when: datetime, db_size: int) -> _Plan:
    if opts.kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}, not {opts.kind!r}")
    if opts.out:
        out = Path(opts.out).expanduser()
        name = out.name
        plain = name.endswith((".sql", ".sql.gz"))
        if plain:
            if name.endswith(".sql.gz") and opts.compress not in (None, "gzip"):
                raise UsageError(f"{name} is a gzip file: --compress {opts.compress} does not apply")
            if name.endswith(".sql") and opts.compress not in (None, "none"):
                raise UsageError(f"{name} is plain SQL: use a .sql.gz name for gzip")
            compression = "gzip:6" if name.endswith(".gz") else "none"
            fmt = "plain"
        else:
            compression = _compression(opts.compress, settings.compress_level, plain=False)
            fmt = "directory-tar" if name.endswith(".tar") else "custom"
        if any(c in opts.out for c in "\n\r"):
            raise UsageError(f"--out {opts.out!r}: a line break in the path cannot be written in a .sha256 file")
        for path in (out, Path(f"{out}{SHA256_SUFFIX}"), Path(f"{out}{MANIFEST_SUFFIX}")):
            if path.exists() and not opts.overwrite:
                raise OutputExists(f"{path} already exists: refusing to overwrite it (pass --overwrite)")
        jobs = _jobs(opts, settings) if fmt == "directory-tar" else 1
        # the .sha256 names the file as the operator gave it, like the runbook's `sha256sum "$OUT"`
        return _Plan(store=LocalStore(out.parent), key=out.name, fmt=fmt, compression=compression, jobs=jobs,
                     out_name=str(opts.out), replace=opts.overwrite)

    # an empty --to is a usage error (open_store), not the default destination
    store = open_store(settings.backup_dest if opts.dest is None else opts.dest, kms_key_id=settings.kms_key_id,
                       part_size_mb=settings.multipart_chunk_mb, expected_bytes=db_size, spool_dir=settings.work_dir)
    compression = _compression(opts.compress, settings.compress_level, plain=False)
    jobs = _jobs(opts, settings)
    fmt = "custom"
    if jobs > 1 and _staging_fits(db_size, settings):
        fmt = "directory-tar"
    elif jobs > 1:
        log.info("not enough free space to stage a parallel dump: streaming instead",
                 extra={"database_size_bytes": db_size, "staging": tempfile.gettempdir()})
        jobs = 1
    ext = "dump.tar" if fmt == "directory-tar" else "dump"
    key = archive_key(database, opts.kind, when, ext)
    return _Plan(store=store, key=key, fmt=fmt, compression=compression, jobs=jobs)


def _jobs(opts: BackupOptions, settings: Settings) -> int:
    if opts.jobs is not None:
        if opts.jobs < 1:
            raise UsageError("--jobs must be at least 1")
        return opts.jobs
    return settings.dump_jobs or min(os.cpu_count() or 1, 8)


def _staging_fits(db_size: int, settings: Settings) -> bool:
    """Stage only where the disk could hold the whole database uncompressed, times a margin."""
    free = shutil.disk_usage(tempfile.gettempdir()).free
    return free >= db_size * settings.min_free_space_factor + 256 * 1024 * 1024


class _HashingSink:
    """File-like sink: hashes, counts (`bytes`, which the progress reporter polls), forwards to the store writer.

    With `parallel_hash`, sha256 runs on a helper thread while the caller writes the same
    chunk (hashlib and file writes both release the GIL): packing a staged dump then costs
    max(hash, write) instead of their sum. At most one chunk is being hashed at a time, so
    memory stays bounded by the caller's chunk size."""

    def __init__(self, writer: ObjectWriter, *, parallel_hash: bool = False) -> None:
        self.writer = writer
        self.digest = hashlib.sha256()
        self.bytes = 0
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") if parallel_hash else None
        self._pending: Future[None] | None = None

    def write(self, data: bytes) -> int:
        if self._hasher is not None:
            if self._pending is not None:
                self._pending.result()
            self._pending = self._hasher.submit(self.digest.update, data)
        else:
            self.digest.update(data)
        self.writer.write(data)
        self.bytes += len(data)
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        """Wait for the hashing thread (idempotent)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()
        if self._hasher is not None:
            self._hasher.shutdown(wait=True)
            self._hasher = None

    def hexdigest(self) -> str:
        self.close()
        return self.digest.hexdigest()


class _PreviousBackup:
    """The archive bytes of the previous backup of the same database in the same destination (the best
    expected total), looked up on a daemon thread: a slow listing never delays the dump, and until (or
    unless) it answers, the estimate from pg_database_size stands. A failed lookup is ignored."""

    def __init__(self, dest: str | None, database: str, settings: Settings) -> None:
        self.bytes: int | None = None
        if dest is not None:
            threading.Thread(target=self._look, args=(dest, database, settings), name="previous-backup",
                             daemon=True).start()

    def _look(self, dest: str, database: str, settings: Settings) -> None:
        from .backup_index import latest_backup

        try:
            entry = latest_backup(dest, database=database, settings=settings)
        except Exception as exc:  # only an estimate: never fails the backup
            log.debug("no previous backup size for progress", extra={"reason": str(exc)})
            return
        if entry is not None and entry.bytes > 0:
            self.bytes = entry.bytes


class _BackupProgress:
    """The backup's progress: archive bytes written of the expected bytes (the previous backup's, else the
    database size times COMPRESSION_ESTIMATE); for a parallel dump first the bytes pg_dump wrote into the
    staging folder ("backup dump"), then the tar streamed into the store of that exact size ("backup upload")."""

    def __init__(self, reporter: progress_.Progress, estimate: float, previous: _PreviousBackup,
                 sink: _HashingSink, staging: Path | None) -> None:
        self.reporter, self.previous, self.sink, self.staging = reporter, previous, sink, staging
        self.ticker: progress_.Ticker | None = None
        label = "backup dump" if staging is not None else "backup"
        self._begin(label, estimate, self._dumped)

    def _begin(self, label: str, total: float | None, poll: Callable[[], Any]) -> None:
        progress_.safely(self.reporter.start, label, total, "bytes")
        self.ticker = progress_.Ticker(self.reporter, poll, name="backup-progress")
        self.ticker.__enter__()

    def _dumped(self) -> tuple[float, float | None]:
        return (self.sink.bytes if self.staging is None else _folder_bytes(self.staging / "dump"),
                self.previous.bytes)

    def packing(self) -> None:
        """pg_dump finished (parallel dump): the tar of the staged files goes to the store next."""
        if self.staging is None:
            return
        self._end(finished=True)
        self._begin("backup upload", _tar_estimate(self.staging / "dump"), lambda: self.sink.bytes)

    def _end(self, *, finished: bool) -> None:
        if self.ticker is not None:
            self.ticker.stop()
            if finished:
                self.ticker.tick()
            self.ticker = None
        if finished:
            progress_.safely(self.reporter.finish)
        else:
            progress_.safely(progress_.abandon, self.reporter)

    def done(self) -> None:
        """The archive is written: its size is the total (an estimate until now)."""
        progress_.safely(self.reporter.update, self.sink.bytes, self.sink.bytes)
        self._end(finished=True)

    def failed(self) -> None:
        self._end(finished=False)


def _folder_bytes(folder: Path) -> int:
    """Bytes of the files in `folder` now (pg_dump -Fd writes one file per table; 0 before it exists)."""
    total = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat(follow_symlinks=False).st_size
    return total


def _tar_estimate(folder: Path) -> int:
    """About the size of the tar `_tar_directory` writes of `folder`: each file padded to 512-byte blocks after
    its header (a PAX header: three blocks), and the end blocks."""
    total = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                total += 3 * tarfile.BLOCKSIZE + -(-entry.stat(follow_symlinks=False).st_size // tarfile.BLOCKSIZE) \
                    * tarfile.BLOCKSIZE
    return total + tarfile.RECORDSIZE


def _start_dump(dump: PgDump, snapshot: str, plan: _Plan, lock_wait: float, staging: Path | None) -> RunningTool:
    """pg_dump on the exported snapshot: to stdout (custom, plain), or into the staging folder (parallel)."""
    return dump.start_dump(snapshot=snapshot, fmt="directory" if staging is not None else plan.fmt,
                           compression=plan.compression, jobs=plan.jobs,
                           lock_wait_ms=lockwait.limit_ms(lock_wait) if lock_wait > 0 else None,
                           directory=staging / "dump" if staging is not None else None)


def _dump_failed(dumping: RunningTool, watch: lockwait.LockWatch) -> PgrunbookError:
    """pg_dump's failure as one line: a LockTimeout naming the table and who blocks it, or its first error."""
    if lockwait.dump_gave_up_on_lock(dumping.stderr):
        return watch.timeout_error()
    return ToolError(f"pg_dump failed: {dumping.failure()}")


def _pump_stream(proc: subprocess.Popen[bytes], sink: _HashingSink, gzip_level: int | None) -> None:
    assert proc.stdout is not None
    compressor = zlib.compressobj(gzip_level, zlib.DEFLATED, 31) if gzip_level is not None else None
    while chunk := proc.stdout.read(CHUNK):
        sink.write(compressor.compress(chunk) if compressor else chunk)
    if compressor:
        sink.write(compressor.flush())


TAR_CHUNK = CHUNK  # 1 MB: one chunk hashing + one being written, whatever the store


def _tar_directory(folder: Path, sink: _HashingSink) -> None:
    """Pack a pg_dump directory as an uncompressed tar, toc.dat first (verify reads only it).

    Byte for byte what `tarfile` writes in PAX format, but each file is streamed in 1 MB
    chunks straight to the sink (tarfile's stream mode re-buffers everything in 10 kB
    records): constant memory, few calls, hashing overlapped with writing."""
    names = sorted(p.name for p in folder.iterdir())
    names.sort(key=lambda n: n != "toc.dat")
    offset = 0
    for name in names:
        with open(folder / name, "rb") as fh:
            st = os.fstat(fh.fileno())
            info = tarfile.TarInfo(name)
            info.mode, info.size, info.mtime = st.st_mode, st.st_size, st.st_mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            sink.write(header)
            offset += len(header)
            left = st.st_size
            while left > 0:
                chunk = fh.read(min(TAR_CHUNK, left))
                if not chunk:
                    raise BackupFailed(f"{folder / name} shrank while it was being archived")
                sink.write(chunk)
                left -= len(chunk)
            offset += st.st_size
        pad = -st.st_size % tarfile.BLOCKSIZE
        if pad:
            sink.write(tarfile.NUL * pad)
            offset += pad
    end = tarfile.BLOCKSIZE * 2
    end += -(offset + end) % tarfile.RECORDSIZE
    sink.write(tarfile.NUL * end)


class _CatalogReader:
    """Reads what the manifest needs (exact counts, sequences, extensions, roles, Prisma state)
    on the backup's connection, in the exported snapshot, while pg_dump dumps that snapshot.

    Exact counts (docs/architecture.md, "Exact counts"), by Settings.count_method: "snapshot" counts
    every table here with count(*); with a parallel dump, "archive" leaves every table to rowcount.py
    (its rows counted in the dump's own data files while they are packed: no second read of the
    database), and "auto" counts here only the tables count(*) counts from an index or a small heap
    (dbinfo.cheap_to_count: cheaper in CPU than decompressing their data) and leaves the rest, whose
    heaps a count(*) would read in full, to the data files. Streamed formats count every table here.
    On a CPU-bound machine pg_dump's backends and workers keep every core busy, so the counts
    cost what their CPU costs wherever they run. They therefore run without parallel workers
    (the cheapest plan in CPU: no worker start-up, no tuple queues; measured ~25 % less server
    CPU than the parallel plan) and without JIT, concurrently with the dump, which hides them
    entirely when the server has a core to spare."""

    def __init__(self, conn: Any, *, method: str = "snapshot") -> None:
        self.conn, self.method = conn, method
        self.tables: list[dbinfo.TableRef] = []
        self.from_archive: list[dbinfo.TableRef] = []  # left to rowcount.ArchiveCounter
        self.counts: dict[dbinfo.TableRef, int] = {}
        self.seqs: dict[tuple[str, str], int | None] = {}
        self.exts: dict[str, str] = {}
        self.roles: list[str] = []
        self.owners: list[str] = []
        self.schemas: list[dict[str, Any]] = []
        self.prisma_schema: str | None = None
        self.prisma: list[dict[str, Any]] | None = None
        self.prisma_table: str | None = None
        self.seconds = 0.0

    def run(self) -> None:
        conn = self.conn
        tc = time.monotonic()
        conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        # JIT would compile code for every big count(*) (jit_above_cost): pure overhead here
        conn.execute("SELECT set_config('jit', 'off', true) WHERE current_setting('jit', true) IS NOT NULL")
        self.tables = dbinfo.user_tables(conn)
        here = self.tables
        if self.method == "archive":
            here = []
        elif self.method == "auto":
            here = sorted(dbinfo.cheap_to_count(conn, self.tables))
        counted_here = set(here)
        self.from_archive = [t for t in self.tables if t not in counted_here]
        self.counts = dbinfo.exact_counts(conn, here)
        self.seqs = dbinfo.sequences(conn)
        self.exts = dbinfo.extensions(conn)
        self.roles = dbinfo.roles_used(conn)
        self.owners, self.schemas = dbinfo.owner_roles(conn), dbinfo.schema_owners(conn)
        self.prisma_schema = dbinfo.prisma_schema(conn)
        self.prisma_table = dbinfo.prisma_table(conn)
        self.prisma = dbinfo.prisma_migrations(conn, self.prisma_schema) if self.prisma_schema is not None else None
        self.seconds = time.monotonic() - tc
        manifest_validator()  # compiled now rather than after the archive is written

    def add_archive_counts(self, counter: rowcount.ArchiveCounter) -> None:
        """The counts read from the staged dump, and count(*) in the snapshot for any table they lack."""
        counts = dict(self.counts)
        counts.update(counter.result())
        tc = time.monotonic()
        if counter.missing:
            log.info("counting in the snapshot the tables whose data files could not be counted",
                     extra={"tables": len(counter.missing)})
            counts.update(dbinfo.exact_counts(self.conn, counter.missing))
        self.counts = {t: counts[t] for t in self.tables}
        self.seconds += counter.seconds + time.monotonic() - tc


def run_backup(opts: BackupOptions, settings: Settings,
               on_dump_started: Callable[[subprocess.Popen[bytes]], None] | None = None,
               progress: progress_.Progress | None = None) -> BackupResult:
    """One backup (see the module doc). `progress`: the reporter the shell chose (default: log lines every
    Settings.progress_seconds, as on Lambda and Fargate)."""
    reporter = progress_.default(progress, settings.progress_seconds)
    url = DatabaseUrl.parse(opts.database_url or settings.database_url,
                            what="database URL (--database-url or DATABASE_URL)")
    started = datetime.now(UTC)
    t0 = time.monotonic()
    start_guardian()  # starts while we connect (see processes.start_guardian)

    lock_wait = settings.lock_wait_timeout if opts.lock_wait_timeout is None else opts.lock_wait_timeout
    if not 0 <= lock_wait < 10**7:  # also refuses nan and inf
        raise UsageError(f"--lock-wait-timeout must be 0 (wait forever) or a number of seconds, not {lock_wait!r}")
    tag = lockwait.new_tag()  # application_name of every session of this backup (see lockwait)
    conn = dbinfo.connect(url, autocommit=True, application=tag)
    try:
        identity = dbinfo.server_identity(conn)
        dump = PgDump.find(url, min_major=identity.major, pg_bin=settings.pg_bin, server_major=identity.major,
                           env={"PGAPPNAME": tag})
        plan = _plan(opts, settings, identity.database, started, identity.database_size_bytes)
        plan.store.check_writable()
        previous = _PreviousBackup(None if opts.out else (settings.backup_dest if opts.dest is None else opts.dest),
                                   identity.database, settings)
        log.info("backup started", extra={"source": url.display(), "archive": plan.store.uri(plan.key),
                                          "format": plan.fmt, "jobs": plan.jobs})

        lockwait.bound_session(conn, lock_wait, identity.major)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot_row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert snapshot_row is not None
        snapshot = str(snapshot_row[0])

        writer = plan.open_writer()
        staging: Path | None = None
        staging_guard = None
        proc: ToolProcess | None = None
        pumper: threading.Thread | None = None
        watch = lockwait.LockWatch(url, tag, lock_wait)
        shown: _BackupProgress | None = None
        try:
            sink = _HashingSink(writer, parallel_hash=plan.fmt == "directory-tar")
            if plan.fmt == "directory-tar":
                staging = Path(tempfile.mkdtemp(prefix="pgrunbook-dump-"))
                staging_guard = guard_path(staging)
            estimate = identity.database_size_bytes * COMPRESSION_ESTIMATE[plan.compression.split(":")[0]]
            shown = _BackupProgress(reporter, estimate, previous, sink, staging)
            watch.start()
            dumping = _start_dump(dump, snapshot, plan, lock_wait, staging)
            proc = dumping.proc
            if on_dump_started:
                on_dump_started(proc)
            pump_error: list[BaseException] = []
            counting = threading.Event()  # set while the counts run on `conn`

            def pump() -> None:
                assert proc is not None
                try:
                    if plan.fmt == "directory-tar":
                        assert proc.stdout is not None
                        proc.stdout.read()
                    else:
                        _pump_stream(proc, sink, 6 if plan.compression.startswith("gzip") and plan.fmt == "plain"
                                     else None)
                except BaseException as exc:
                    pump_error.append(exc)
                    proc.kill()
                # pg_dump failed (e.g. it gave up waiting for a lock) while the counts still run: cancel them
                # rather than let them wait out a lock of their own
                if proc.wait() != 0 and counting.is_set():
                    try:
                        conn.cancel_safe(timeout=10)
                    except (psycopg.Error, OSError) as exc:
                        log.debug("could not cancel the counts", extra={"reason": str(exc)})

            pumper = threading.Thread(target=pump, name="pg_dump-pump", daemon=True)
            pumper.start()

            # The counts run now, in the exported snapshot, while pg_dump dumps it.
            reader = _CatalogReader(conn, method=settings.count_method if plan.fmt == "directory-tar" else "snapshot")
            counting.set()
            try:
                reader.run()
            except psycopg.Error as exc:
                counting.clear()
                if proc.poll() not in (None, 0):  # pg_dump failed first and the counts were cancelled
                    pumper.join()
                    raise _dump_failed(dumping, watch) from None
                if isinstance(exc, psycopg.errors.LockNotAvailable):
                    raise watch.timeout_error() from None
                raise
            finally:
                counting.clear()

            pumper.join()
            returncode = proc.wait()
            if pump_error:
                raise pump_error[0]
            if returncode != 0:
                raise _dump_failed(dumping, watch)
            watch.stop()
            if staging is not None:
                shown.packing()
                counter = rowcount.ArchiveCounter(staging / "dump", reader.from_archive, PgRestore.find(
                    None, min_major=identity.major, pg_bin=settings.pg_bin)).start() if reader.from_archive else None
                try:
                    _tar_directory(staging / "dump", sink)
                except BaseException:
                    if counter is not None:
                        counter.cancel()
                    raise
                if counter is not None:
                    reader.add_archive_counts(counter)
            sink.close()
            writer.commit()
            shown.done()
        except BaseException:
            if shown is not None:
                shown.failed()
            # stop pg_dump and its workers before touching what they write, then remove what was written
            if proc is not None:
                proc.stop()
            if pumper is not None:
                pumper.join(timeout=30)
            if "sink" in locals():
                sink.close()
            writer.abort()
            watch.stop()
            if proc is not None:
                watch.end_sessions(keep=[conn.info.backend_pid])
            raise
        finally:
            watch.stop()
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
                if staging_guard is not None:
                    staging_guard.release()
        conn.execute("COMMIT")
    finally:
        conn.close()

    plan = dataclasses.replace(plan, key=writer.key)  # the name the archive was committed under
    counts, seqs, exts, roles = reader.counts, reader.seqs, reader.exts, reader.roles
    prisma, prisma_table, counts_seconds = reader.prisma, reader.prisma_table, reader.seconds
    digest = sink.hexdigest()
    finished = datetime.now(UTC)
    seconds = time.monotonic() - t0
    manifest = Manifest.validated({
        "manifest_version": MANIFEST_VERSION,
        "kind": opts.kind,
        "archive": {"name": Path(plan.key).name, "uri": plan.store.uri(plan.key), "format": plan.fmt,
                    "compression": plan.compression, "bytes": sink.bytes, "sha256": digest, "jobs": plan.jobs},
        "source": {"url": url.display(), "host": url.host, "port": url.port, "database": identity.database,
                   "server_version": identity.server_version, "server_version_num": identity.server_version_num,
                   "system_identifier": identity.system_identifier, "encoding": identity.encoding,
                   "database_size_bytes": identity.database_size_bytes, "extensions": exts, "roles": roles,
                   "owners": reader.owners, "schemas": reader.schemas, "server_port": identity.port,
                   "server_started_at": identity.started_at},
        "snapshot": snapshot,
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "seconds": round(seconds, 3),
        "app_version": opts.app_version,
        "tools": {"pg_dump": dump.version, "pgrunbook": __version__},
        **manifest_contents(counts, seqs),
        "prisma": None if prisma is None else {"schema": reader.prisma_schema, "table": prisma_table,
                                               "migrations": prisma},
    })
    sha_key, manifest_key = plan.key + SHA256_SUFFIX, plan.key + MANIFEST_SUFFIX
    written = [plan.key]  # only what this run wrote is removed on failure, never another run's file
    try:
        for key, data, content_type in ((sha_key, sha256_line(digest, plan.sha_name), "text/plain"),
                                        (manifest_key, manifest.to_json(), "application/json")):
            plan.store.put_bytes(key, data.encode(), content_type, exclusive=not plan.replace)
            written.append(key)
    except BaseException:
        for key in reversed(written):
            try:
                plan.store.delete(key)
            except StoreError:
                log.warning("could not remove a partial backup object", extra={"object": plan.store.uri(key)})
        raise
    if not opts.out:  # the destination's per-database index (backup_index.py): a failure only costs `list` a read
        backup_index.record(plan.store, plan.key)
    result = BackupResult(archive=plan.store.uri(plan.key), manifest=plan.store.uri(manifest_key), sha256=digest,
                          bytes=sink.bytes, tables=len(counts), rows=sum(counts.values()), seconds=seconds,
                          format=plan.fmt, kind=opts.kind, database=identity.database,
                          counts_seconds=counts_seconds, manifest_data=manifest.data)
    log.info("backup finished", extra=result.to_dict())
    return result
