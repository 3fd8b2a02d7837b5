"""Errors an operator reads: one line, no traceback, never a secret.

Every failure the CLI reports is a PgrunbookError; its exit code follows the CLI
contract (1 = the operation failed, 2 = usage error).
"""

from __future__ import annotations


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
