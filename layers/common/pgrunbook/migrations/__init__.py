"""Prisma-compatible migrations: read prisma/migrations/<name>/migration.sql in name order, keep
`_prisma_migrations` exactly as Prisma does (so `prisma migrate` and pgrunbook can take turns),
hold Prisma's advisory lock for the whole deploy, lint pending migrations for locking DDL,
take a pre-migration backup, and rehearse on a restored copy.

Public API:
- read_migrations(dir) -> [Migration]; checksum(bytes); checksum_matches(bytes, recorded)
- read_status(url, migrations, dir) -> StatusReport (.exit_code, .state, .text(), .to_dict())
- deploy(url, migrations, dir, ApplyOptions) -> DeployResult
- resolve(url, migrations, applied=NAME | rolled_back=NAME) -> ResolveResult
- lint_migrations(migrations, mode) -> LintReport
- pipeline.run_migrate(MigrateOptions) -> MigrateReport (pre-flight, backup, lint, lock, apply, status), and its
  steps (check_history, lint_gate, pre_migration_backup, apply_pending, final_status) that service.handle
  (the Migrate state machine) runs one per invocation
- the errors (NotManaged, FailedMigrationsPresent, MigrationFailed, LockBusy, ...) live in pgrunbook.errors
"""

from ..errors import FailedMigrationsPresent, LockBusy, MigrationFailed, NotManaged
from .files import Migration, checksum, checksum_matches, read_migrations, split_statements
from .lint import LintReport, lint_migrations
from .lock import LOCK_KEY
from .runner import ApplyOptions, DeployResult, ResolveResult, deploy, read_status, resolve
from .status import StatusReport

__all__ = [
    "LOCK_KEY", "ApplyOptions", "DeployResult", "FailedMigrationsPresent", "LintReport", "LockBusy", "Migration",
    "MigrationFailed", "NotManaged", "ResolveResult", "StatusReport", "checksum", "checksum_matches", "deploy",
    "lint_migrations", "read_migrations", "read_status", "resolve", "split_statements",
]
