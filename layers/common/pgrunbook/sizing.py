"""Lambda or Fargate: the sizing rule, from measured throughput and Lambda's limits.

A Lambda function stops after 900 s and has at most the ephemeral storage the template gives it
(`EphemeralStorage: 10240` MB on the backup, restore and migrate functions). A run that would not
finish there must go to the Fargate task. The rule, per operation:

- backup (scheduled, manual and pre-migration alike): pg_dump streams to S3, nothing is staged when
  /tmp is short (backup.py streams instead), so only time counts:
      size_GB * BACKUP_S_PER_GB * safety <= LAMBDA_BUDGET_S
- restore: the archive is downloaded into /tmp (a `.dump.tar` is extracted there), then
  pg_restore and ANALYZE run:
      size_GB * RESTORE_S_PER_GB * safety + archive_bytes / DOWNLOAD_BYTES_PER_S <= LAMBDA_BUDGET_S
      archive_bytes <= TMP_USABLE_FRACTION * LAMBDA_TMP_MB

The throughputs are the worst final-code runs of docs/benchmarks.md (2 cores, the server on the
same machine): backup 7.46 s for 1.25 GB (pg_dump -Fd -j2 -Z zstd:1 with exact counts) = 6.0 s/GB;
restore into a new database incl. ANALYZE 19.05 s for 1.25 GB = 15.2 s/GB. Lambda's CPU, the network
to RDS and the server's own size differ from that machine, hence the safety factor (default 3,
PGRUNBOOK_SIZING_SAFETY; the template's `LambdaSizingSafetyFactor`). With the defaults a backup runs
on Lambda up to 46.7 GB, a restore up to 18.4 GB (less when its archive would not fit in /tmp).

Invariants: the size is a fact (the last manifest's `database_size_bytes`, or `pg_database_size`
measured now when there is no backup yet); an unknown size never silently means "small" when the
Fargate path exists (it goes to Fargate, where time is not bounded by 15 minutes); without a
Fargate task every run is on Lambda (there is nowhere else), and the plan says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import UsageError

GB = 1024**3
LAMBDA_TIMEOUT_S = 900
LAMBDA_BUDGET_S = 840  # 900 s less start-up, secrets, manifest reads and the result write
LAMBDA_TMP_MB = 10240  # EphemeralStorage of the backup/restore/migrate functions in template.yaml
TMP_USABLE_FRACTION = 0.8
BACKUP_S_PER_GB = 6.0
RESTORE_S_PER_GB = 15.2
DOWNLOAD_BYTES_PER_S = 50 * 1024**2  # S3 -> Lambda /tmp, conservative
DEFAULT_SAFETY = 3.0
OPERATIONS = ("backup", "restore")


@dataclass(frozen=True)
class Limits:
    """The stack's sizing settings (Settings.sizing: PGRUNBOOK_SIZING_SAFETY, at least 1, and
    PGRUNBOOK_FARGATE, whether the Fargate task exists) and what follows from them."""

    safety: float = DEFAULT_SAFETY
    fargate: bool = True

    @property
    def backup_max_bytes(self) -> int:
        return int(LAMBDA_BUDGET_S / (BACKUP_S_PER_GB * self.safety) * GB)

    @property
    def restore_max_bytes(self) -> int:
        return int(LAMBDA_BUDGET_S / (RESTORE_S_PER_GB * self.safety) * GB)

    @property
    def tmp_max_archive_bytes(self) -> int:
        return int(LAMBDA_TMP_MB * 1024**2 * TMP_USABLE_FRACTION)

    def lambda_seconds(self, operation: str, size_bytes: int, archive_bytes: int = 0) -> float:
        """The estimated Lambda run time, safety factor included."""
        if operation == "backup":
            return size_bytes / GB * BACKUP_S_PER_GB * self.safety
        return size_bytes / GB * RESTORE_S_PER_GB * self.safety + archive_bytes / DOWNLOAD_BYTES_PER_S


@dataclass(frozen=True)
class Decision:
    runner: str  # lambda | ecs
    reason: str
    estimated_lambda_seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        est = self.estimated_lambda_seconds
        return {"runner": self.runner, "runner_reason": self.reason,
                "estimated_lambda_seconds": None if est is None else round(est, 1)}


def decide(operation: str, size_bytes: int | None, *, limits: Limits, archive_bytes: int | None = None,
           forced: str | None = None) -> Decision:
    """Where `operation` (backup | restore) of a database of `size_bytes` runs."""
    if operation not in OPERATIONS:
        raise UsageError(f"sizing: operation must be one of {', '.join(OPERATIONS)}, not {operation!r}")
    if forced in ("lambda", "ecs"):
        return Decision(forced, "forced by PGRUNBOOK_RUNNER_OVERRIDES", None)
    if size_bytes is None:
        if limits.fargate:
            return Decision("ecs", "database size unknown (no backup and not measurable): Fargate is not "
                                   "bounded by 15 minutes", None)
        return Decision("lambda", "database size unknown; the stack has no Fargate task", None)
    seconds = limits.lambda_seconds(operation, size_bytes, archive_bytes or 0)
    too_slow = seconds > LAMBDA_BUDGET_S
    too_big = operation == "restore" and (archive_bytes or 0) > limits.tmp_max_archive_bytes
    if not (too_slow or too_big):
        return Decision("lambda", f"estimated {seconds:.0f} s on Lambda (budget {LAMBDA_BUDGET_S} s)", seconds)
    why = (f"archive of {(archive_bytes or 0) / GB:.1f} GB does not fit Lambda's /tmp" if too_big
           else f"estimated {seconds:.0f} s on Lambda, over its {LAMBDA_BUDGET_S} s budget")
    if not limits.fargate:
        return Decision("lambda", f"{why}, but the stack has no Fargate task (set ContainerImageUri)", seconds)
    return Decision("ecs", why, seconds)
