"""Guarded restore into a fresh database: prove the archive, prove the target, then load it in parallel.

Order of work (nothing reaches the target before every guard passed):

1. `--force` given.
2. The target: reachable, neither `$DATABASE_URL`'s database nor the backup's source (one check,
   `dbinfo.same_database`: what the servers say about themselves, never host spellings), without a
   pgrunbook restore mark (an earlier restore failed, was interrupted or killed: TargetMarked, drop
   and recreate the database), EMPTY (no table, view, sequence, function, type or large object in a
   non-system schema), server major >= the source's, every extension the archive uses available (all
   missing ones reported at once) and creatable by the restoring role, every role the archive's
   objects belong to present (or `--no-owner`), and - unless `--no-owner` or a superuser restores -
   every owner role one that the restoring role can become and that may create in its objects'
   schemas (pg_restore gives each object to its owner as it goes, and grants schema privileges only
   at its end).
3. The archive: read once by `dumpfile.read_dump`, the reader verify-backup uses too (S3 streamed
   into a work folder, a local file read in place, a `.dump.tar` extracted), hashed and its
   contents listed on the way; its sha256 equal to `<archive>.sha256` and to the manifest (compared
   first: damage is a ChecksumMismatch whatever it broke), then its contents (ArchiveCorrupt):
   the table of contents read by `pg_restore --list` (by fields: every manifest table has its TABLE
   DATA entry, found by OID; its extensions and grants on system objects checked against the
   restoring role like those of step 2) or, for plain SQL, the gzip stream, the header and the
   'dump complete' trailer read to the end.
4. The target is marked `pgrunbook: restore in progress` (COMMENT ON DATABASE), the archive
   is loaded (`pg_restore -j N --exit-on-error` with restore-tuned session settings, or
   `psql -v ON_ERROR_STOP=1 --single-transaction` for the runbook's .sql/.sql.gz, its input ended
   only once the bytes fed, hashed again, proved to be the ones verified), and ANALYZE
   runs. On success the mark is removed; on failure it becomes `pgrunbook: restore FAILED: ...`
   (and stays `in progress` if the process was killed): `verify` fails on either mark.

Interruption: pg_restore/psql run through pgtools' wrappers, so on any exception (SIGTERM/SIGINT
arrive as `Interrupted`) they and their workers are stopped before the mark becomes
`... FAILED (...): interrupted by SIGTERM`; the work folder is removed on the way out, and by
pgtools' guardian process should pgrunbook be killed.

The package, one module per part:

- `run`: RestoreOptions, RestoreResult and `run_restore`, the procedure above step by step;
- `guards`: what the archive needs, what the target is, the refusals of steps 2 and 3 (reads only);
- `fetch`: the work folder, and the archive fetched once, hashed and its contents listed;
- `load`: pg_restore / psql with restore-tuned session settings, the --no-owner filter for scripts,
  ANALYZE;
- `marks`: the restore mark on the target (set, cleared, refused).
"""

from ..errors import RestoreFailed, TargetMarked
from .guards import target_objects
from .load import RESTORE_SESSION, analyze
from .marks import MARK_FAILED, MARK_IN_PROGRESS, database_mark, refuse_marked
from .run import RestoreOptions, RestoreResult, resolve_target, run_restore

__all__ = [
    "MARK_FAILED",
    "MARK_IN_PROGRESS",
    "RESTORE_SESSION",
    "RestoreFailed",
    "RestoreOptions",
    "RestoreResult",
    "TargetMarked",
    "analyze",
    "database_mark",
    "refuse_marked",
    "resolve_target",
    "run_restore",
    "target_objects",
]
