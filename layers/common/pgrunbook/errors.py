"""Errors an operator reads: one line, no traceback, never a secret.

Every failure the CLI reports is a PgrunbookError; its exit code follows the CLI
contract (1 = the operation failed, 2 = usage error).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .migrations.files import Statement
    from .migrations.pipeline import MigrateReport


class PgrunbookError(Exception):
    """An operation failed; the message is shown to the operator as is."""

    exit_code = 1


class UsageError(PgrunbookError):
    """The command line or the input asked for something invalid (exit 2)."""

    exit_code = 2


class ToolError(PgrunbookError):
    """A pg tool is missing, too old, or failed."""


class StoreError(PgrunbookError):
    """The backup store (S3 or a folder) refused or lacks an object."""


class ChecksumMismatch(PgrunbookError):
    """The bytes read do not match the recorded sha256."""


class ConnectionFailed(PgrunbookError):
    """Could not connect to a database server."""


class TargetRefused(PgrunbookError):
    """A restore guard refused the target (the source itself, $DATABASE_URL, not empty, too old, lacking
    roles or extensions): nothing was written to it."""


class PrivilegeRefused(TargetRefused):
    """The restoring role lacks a privilege the archive needs (becoming an owner role, creating an
    extension): refused before anything was created."""


class ObjectExists(StoreError):
    """The backup store already holds an object at that name: it is never replaced."""


class TargetNotOwned(TargetRefused):
    """A restore target's name (derived from the execution, or given) is taken by a database or RDS
    instance this execution did not create: it is neither used nor dropped."""


class LockTimeout(PgrunbookError):
    """A table lock was not granted within the configured wait (`--lock-wait-timeout`); the message
    names the table and the session(s) blocking it."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT (or a watchdog before a time limit) stopped the operation.

    Deliberately a KeyboardInterrupt, not a PgrunbookError: no `except Exception` or
    `except PgrunbookError` on the way up may swallow it, only `finally` / `except BaseException`
    blocks run (they stop child processes and remove partial output), and psycopg cancels a
    running query on it. The CLI turns it into one line and exit status 128 + signal number
    (143 for SIGTERM, 130 for SIGINT). `detail` says what was cleaned up or what to do next."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(signum, detail)
        self.signum = signum
        self.detail = detail

    @property
    def signal_name(self) -> str:
        import signal

        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted by {self.signal_name}" + (f": {self.detail}" if self.detail else "")


class CutoverError(PgrunbookError):
    """A cutover step failed (the report says what was done and what was undone)."""


class CutoverRefused(CutoverError):
    """A check before the switch refused the cutover: nothing was switched, rolled or frozen."""


class CountsDiffer(CutoverRefused):
    """With --freeze: the candidate's row counts differ from the frozen source's (the freeze was lifted)."""


class SecretUpdateDenied(CutoverError):
    """Secrets Manager refused to write (or move) the DATABASE_URL secret."""


class RollFailed(CutoverError):
    """The service roll failed (ECS deployment failed or never completed, webhook refused)."""


class ProofFailed(CutoverError):
    """A post-cutover check failed (/ready, an alarm, the attachment URL, the sessions with --strict)."""


class RolledBack(CutoverError):
    """The cutover failed and was rolled back: the previous DATABASE_URL is current again."""


class RetireRefused(PgrunbookError):
    """`pgrunbook retire` refused to drop the database (not marked, too early, wrong name, still in use)."""


# ----------------------------------------------------------------------------------------------------
# The names a state machine routes on. Every raise in the package uses the most specific class below (or
# above), never the bare PgrunbookError: Lambda reports the class name as errorType, and Step Functions'
# Retry/Catch match that name exactly (tests/unit/test_errors.py keeps it so).

# -- events, configuration, AWS
class EventError(UsageError):
    """The event given to a handler (or a state machine's input) is missing a field or has a wrong one."""


class UnknownDatabase(UsageError):
    """A state machine input named a database the stack is not configured for."""


class ConfigError(PgrunbookError):
    """The stack's configuration (environment of the function) is invalid."""


class SettingsInvalid(UsageError, ConfigError):
    """A configuration variable is missing or has a value that does not parse (settings.py); the message
    names it. A UsageError for the CLI (exit 2), a ConfigError for the functions (the stack is misconfigured)."""


class TransientError(PgrunbookError):
    """Worth retrying (throttling, a network blip to an AWS API). State machines retry this name."""


class AwsCallFailed(PgrunbookError):
    """An AWS API refused a call (access denied, no such resource, invalid request): the message names the
    service, the call and AWS's error code. Not retried (TransientError is what is worth retrying)."""


class DeadlineExceeded(PgrunbookError):
    """The function stopped itself shortly before its Lambda time limit, after stopping its pg tools
    and removing partial output (a restore target is marked FAILED)."""


class TaskResultMissing(PgrunbookError):
    """The Fargate task wrote no result (killed, or out of memory)."""


# -- backups, archives, manifests
class NoBackup(UsageError):
    """`latest` was asked for in a state machine's input but the database has no backup yet."""


class BackupNotFound(PgrunbookError):
    """No backup to restore where one was looked for (a drill's or a rehearsal's latest backup)."""


class OutputExists(PgrunbookError):
    """The output file named on the command line exists: it is never overwritten without --overwrite."""


class BackupFailed(PgrunbookError):
    """The backup could not be written as a sound archive (its dump changed while it was archived)."""


class ArchiveCorrupt(PgrunbookError):
    """The archive does not read (not a tar, a truncated or corrupt gzip stream, no pg_dump header or
    trailer, pg_restore cannot list it, no data for tables its manifest lists): it is damaged or not a
    backup. Nothing was restored from it; a retry reads the same bytes."""


class UnreadableTar(ArchiveCorrupt):
    """A `.dump.tar` that does not extract; `sha256` of all its bytes tells whether it is the archive that was
    written (a damaged one is a ChecksumMismatch, said as such)."""

    def __init__(self, message: str, sha256: str) -> None:
        super().__init__(message)
        self.sha256 = sha256


class ManifestMissing(PgrunbookError):
    """The archive's .manifest.json is missing (the backup did not finish, or the URI is not a backup)."""


class ManifestInvalid(PgrunbookError):
    """A manifest (or .sha256 file) does not read: not JSON, an unknown version, not the schema."""


class NotEnoughSpace(PgrunbookError):
    """The work folder has too little free space for the archive."""


class CountFailed(PgrunbookError):
    """The exact row counts of a database could not be read (e.g. a table the role may not read)."""


# -- restore targets
class TargetNotEmpty(TargetRefused):
    """The restore target holds objects (or stopped being empty before the restore began)."""


class TargetMarked(TargetRefused):
    """The target carries the mark of an earlier restore that failed, was interrupted or killed: it may
    hold part of an archive, so nothing is restored into it until it is dropped and recreated."""


class RestoreFailed(PgrunbookError):
    """pg_restore/psql failed part-way: the target is marked failed and must not be used."""


class TargetDeleting(TransientError):
    """The target's deletion is under way (an RDS instance takes minutes): the state machine retries
    `delete` until the target is gone, so a teardown never reports done before it is."""


class ProvisionFailed(PgrunbookError):
    """A restore target could not be created, found or deleted (RDS refused, or the instance vanished)."""


# -- migrations
class NotManaged(PgrunbookError):
    """Tables but no _prisma_migrations (Prisma's P3005)."""


class FailedMigrationsPresent(PgrunbookError):
    """A failed migration blocks deploys until resolved (Prisma's P3009)."""


class MigrationFailed(PgrunbookError):
    """A migration script failed (Prisma's P3018). `migration` names it, `statement` is the failing one."""

    def __init__(self, message: str, migration: str, statement: Statement | None) -> None:
        super().__init__(message)
        self.migration = migration
        self.statement = statement


class LockBusy(PgrunbookError):
    """Another migrator holds the migration lock."""


class ResolveRefused(PgrunbookError):
    """`migrate resolve` refused (Prisma's P3008 already applied, P3011 never applied, P3012 not failed)."""


class LintBlocked(PgrunbookError):
    """The lint gate (strict) blocked the pending migrations: nothing was backed up or applied.
    `report` is the migrate report (what was found)."""

    def __init__(self, message: str, report: MigrateReport) -> None:
        super().__init__(message)
        self.report = report


class RehearsalFailed(PgrunbookError):
    """The rehearsal on a restored copy failed: production was not touched. `report` is the migrate report."""

    def __init__(self, message: str, report: MigrateReport) -> None:
        super().__init__(message)
        self.report = report


# -- the local runner and the demo
class LocalRunnerError(PgrunbookError):
    """The local runner (moto) cannot run the application as written (template, versions, a timeout)."""


class DemoFailed(PgrunbookError):
    """A demo step did not end as the runbook says it must."""


# -- cutover
class FreezeFailed(CutoverError):
    """The source could not be frozen (setting refused, or its writing sessions could not be ended)."""


class ReadOnlyRefused(CutoverError):
    """The database refused the read-only setting or its comment (not its owner)."""


class SecretUnreadable(CutoverError):
    """The secret cannot be read (missing, denied, or not in the expected shape)."""


class ProductionReadyFailed(CutoverError):
    """The approved candidate could not be made production-ready (nothing was switched)."""


# -- approvals (`status`: the HTTP status the approval page and API answer with)
class ApprovalError(PgrunbookError):
    """A decision or view was refused (the message says why, in words)."""

    status = 500


class ApprovalForbidden(ApprovalError):
    status = 403


class ApprovalNotFound(ApprovalError):
    status = 404


class ApprovalConflict(ApprovalError):
    status = 409


class ApprovalGone(ApprovalError):
    status = 410


class ApprovalUnavailable(ApprovalError):
    status = 503


class ApprovalInputError(UsageError):
    status = 400


# --------------------------------------------------------------------------- errors as one line for people
ONE_LINE_LIMIT = 600
_TRACEBACK_HEAD = re.compile(r"^\s*Traceback \(most recent call last\)")
_TRACEBACK_FRAME = re.compile(r'^\s*File ".*", line \d+')
_TRACE_INSIDE = re.compile(r'Traceback \(most recent call last\)|File "[^"]*", line \d+')
_CHAINED = re.compile(r"^\s*(During handling of the above exception|The above exception was the direct cause)")


def one_line(text: str, *, first_only: bool = False, limit: int = ONE_LINE_LIMIT) -> str:
    """`text` for people as one line: secrets masked, any Python traceback left out (its final
    `Class: message` line kept), the lines joined (or only the first), at most `limit` characters."""
    from .dburl import mask_secrets

    kept: list[str] = []
    in_trace = False
    for raw in mask_secrets(text).splitlines():
        line = " ".join(raw.split())
        if _TRACEBACK_HEAD.match(raw) or _CHAINED.match(raw):
            in_trace = True
            continue
        if _TRACEBACK_FRAME.match(raw) or (in_trace and (raw[:1].isspace() or not line)):
            continue
        in_trace = False
        inside = _TRACE_INSIDE.search(line)  # a trace pasted into a message line: keep what precedes it
        line = line[: inside.start()].strip() if inside else line
        if line:
            kept.append(line)
    out = (kept[:1] if first_only else kept)
    joined = " ".join(out)
    return joined if len(joined) <= limit else joined[: limit - 1] + "\u2026"


def error_line(exc: BaseException) -> str:
    """One line for an exception: a PgrunbookError's message (written for operators) on one line;
    any other exception's first line (an unexpected error: the rest is in the log)."""
    return one_line(str(exc), first_only=not isinstance(exc, PgrunbookError)) or "no message (see the function's log)"
