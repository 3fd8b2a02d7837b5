"""The point-in-time-recovery window of the configured source databases (RDS / Aurora).

The runbook asks for PITR with at least 7-14 days of retention. For each configured database that is
an RDS instance or Aurora cluster (named by `rds_instance` / `rds_cluster` in PGRUNBOOK_DATABASES, or
recognised from an RDS endpoint host `<id>.xxxx.<region>.rds.amazonaws.com`), RDS says how long it
keeps (`BackupRetentionPeriod`, days; 0 = automated backups and PITR off) and up to when it can
restore (`LatestRestorableTime`; it trails by the WAL archiving lag, normally ~5 minutes).

Invariants: read-only (Describe* only); a database that is not on RDS has no window (None), never a
made-up one; an RDS error is reported as such for that database and does not hide the others.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from . import aws
from .lambda_support import DatabaseConfig

RDS_DOMAINS = (".rds.amazonaws.com", ".rds.amazonaws.com.cn")


def rds_source(cfg: DatabaseConfig) -> tuple[str, str] | None:
    """("instance" | "cluster", identifier) of a configured database, or None when it is not on RDS."""
    if cfg.rds_cluster:
        return "cluster", cfg.rds_cluster
    if cfg.rds_instance:
        return "instance", cfg.rds_instance
    host = (cfg.host or "").lower().rstrip(".")
    if not host.endswith(RDS_DOMAINS):
        return None
    labels = host.split(".")
    if len(labels) > 1 and labels[1].startswith(("cluster-ro-", "cluster-custom-", "cluster-")):
        return "cluster", labels[0]
    return "instance", labels[0]


@dataclass(frozen=True)
class PitrWindow:
    source: str  # "instance app-prod" / "cluster app"
    retention_days: int
    latest_restorable_time: str | None
    lag_minutes: float | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pitr_window(cfg: DatabaseConfig, now: datetime | None = None) -> PitrWindow | None:
    from botocore.exceptions import BotoCoreError, ClientError

    found = rds_source(cfg)
    if found is None:
        return None
    kind, ident = found
    now = now or datetime.now(UTC)
    try:
        if kind == "cluster":
            desc = aws.client("rds").describe_db_clusters(DBClusterIdentifier=ident)["DBClusters"][0]
        else:
            desc = aws.client("rds").describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"][0]
    except (ClientError, BotoCoreError) as exc:
        code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else str(exc)
        return PitrWindow(source=f"{kind} {ident}", retention_days=0, latest_restorable_time=None, lag_minutes=None,
                          error=f"RDS: {code}")
    days = int(desc.get("BackupRetentionPeriod") or 0)
    latest = desc.get("LatestRestorableTime")
    if isinstance(latest, str):
        latest = datetime.fromisoformat(latest)
    lag = None
    if days > 0 and isinstance(latest, datetime):
        latest = latest if latest.tzinfo else latest.replace(tzinfo=UTC)
        lag = round(max(0.0, (now - latest).total_seconds() / 60), 1)
    return PitrWindow(source=f"{kind} {ident}", retention_days=days,
                      latest_restorable_time=latest.isoformat() if isinstance(latest, datetime) else None,
                      lag_minutes=lag)
