"""The stack's cutover configuration (the cutover function's environment, set by template.yaml), read
once from a mapping the shell passes in. Secrets are never in it: only where they are (secret ids).

  PGRUNBOOK_APP_SECRET_ID        the application's DATABASE_URL secret (empty: no automatic cutover;
                                 an approved execution ends at CutoverReady as before)
  PGRUNBOOK_APP_SECRET_KEY       its JSON key holding the URL (empty: a plain string)
  PGRUNBOOK_APP_ECS_SERVICE      CLUSTER/SERVICE to roll, or
  PGRUNBOOK_APP_ROLL_WEBHOOK     a URL to POST the roll to (PGRUNBOOK_ROLL_WEBHOOK_SECRET: the secret
                                 holding the HMAC key)
  PGRUNBOOK_APP_READY_URL        GET until 200 after the roll
  PGRUNBOOK_CUTOVER_ALARMS       comma-separated CloudWatch alarm names that must stay OK
  PGRUNBOOK_ATTACHMENT_URL       optional URL that must answer 200 after the cutover
  PGRUNBOOK_SOAK_SECONDS (60), PGRUNBOOK_READY_TIMEOUT (300), PGRUNBOOK_ROLL_TIMEOUT (600),
  PGRUNBOOK_SESSIONS_GRACE (60), PGRUNBOOK_CUTOVER_POLL (5), PGRUNBOOK_FREEZE_GRACE (30),
  PGRUNBOOK_FREEZE_MAX_SECONDS (600: the longest expected write downtime a freeze may take),
  PGRUNBOOK_RETIRE_AFTER_DAYS (7), PGRUNBOOK_CUTOVER_STRICT (off),
  PGRUNBOOK_APP_DB_USER / PGRUNBOOK_APP_NAME   whose sessions must move (default: the URL's user)
  PGRUNBOOK_RDS_PRODUCTION_PARAMETER_GROUP     for a kept RDS candidate (default: default.postgres<major>)
  PGRUNBOOK_STAGING_SECRET_ID / _SECRET_KEY / _ECS_SERVICE / _ROLL_WEBHOOK / _URL   the staging service
  PGRUNBOOK_STAGING_CHECKS       extra METHOD:PATH:STATUS checks (comma separated; /health and /ready always)
  PGRUNBOOK_STAGING_SIGN_IN      METHOD:PATH:STATUS of the sign-in check, its JSON body in the secret
                                 PGRUNBOOK_STAGING_SIGN_IN_SECRET
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import UsageError


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    try:
        return float(raw) if raw not in (None, "") else default
    except ValueError:
        raise UsageError(f"{name} must be a number, got {raw!r}") from None


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in (env.get(name) or "").split(",") if p.strip())


def _flag(env: Mapping[str, str], name: str) -> bool:
    return (env.get(name) or "").lower() in ("1", "on", "true", "yes")


@dataclass(frozen=True)
class StagingConfig:
    secret_id: str
    url: str
    secret_key: str | None = None
    ecs_service: str | None = None
    webhook_url: str | None = None
    checks: tuple[str, ...] = ()
    sign_in: str | None = None
    sign_in_secret: str | None = None


@dataclass(frozen=True)
class CutoverConfig:
    app_secret_id: str | None = None
    app_secret_key: str | None = None
    ecs_service: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    ready_url: str | None = None
    alarms: tuple[str, ...] = ()
    attachment_url: str | None = None
    soak_seconds: float = 60.0
    ready_timeout: float = 300.0
    roll_timeout: float = 600.0
    sessions_grace: float = 60.0
    poll: float = 5.0
    freeze_grace: float = 30.0
    freeze_max_seconds: float = 600.0
    retire_after_days: int = 7
    strict: bool = False
    app_user: str | None = None
    app_name: str | None = None
    rds_production_parameter_group: str | None = None
    work_dir: str | None = None  # PGRUNBOOK_WORK_DIR: where the final restore of a freeze downloads
    staging: StagingConfig | None = None
    problems: tuple[str, ...] = field(default=())

    @property
    def configured(self) -> bool:
        """Everything an automatic cutover needs is there."""
        return bool(self.app_secret_id and (self.ecs_service or self.webhook_url) and self.ready_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CutoverConfig:
        g = env.get
        staging = None
        if g("PGRUNBOOK_STAGING_SECRET_ID"):
            if not g("PGRUNBOOK_STAGING_URL") or bool(g("PGRUNBOOK_STAGING_ECS_SERVICE")) == bool(
                    g("PGRUNBOOK_STAGING_ROLL_WEBHOOK")):
                raise UsageError("a staging service needs PGRUNBOOK_STAGING_URL and one of "
                                 "PGRUNBOOK_STAGING_ECS_SERVICE or PGRUNBOOK_STAGING_ROLL_WEBHOOK")
            staging = StagingConfig(secret_id=str(g("PGRUNBOOK_STAGING_SECRET_ID")),
                                    url=str(g("PGRUNBOOK_STAGING_URL")),
                                    secret_key=g("PGRUNBOOK_STAGING_SECRET_KEY") or None,
                                    ecs_service=g("PGRUNBOOK_STAGING_ECS_SERVICE") or None,
                                    webhook_url=g("PGRUNBOOK_STAGING_ROLL_WEBHOOK") or None,
                                    checks=_list(env, "PGRUNBOOK_STAGING_CHECKS"),
                                    sign_in=g("PGRUNBOOK_STAGING_SIGN_IN") or None,
                                    sign_in_secret=g("PGRUNBOOK_STAGING_SIGN_IN_SECRET") or None)
        cfg = cls(app_secret_id=g("PGRUNBOOK_APP_SECRET_ID") or None,
                  app_secret_key=g("PGRUNBOOK_APP_SECRET_KEY") or None,
                  ecs_service=g("PGRUNBOOK_APP_ECS_SERVICE") or None,
                  webhook_url=g("PGRUNBOOK_APP_ROLL_WEBHOOK") or None,
                  webhook_secret=g("PGRUNBOOK_ROLL_WEBHOOK_SECRET") or None,
                  ready_url=g("PGRUNBOOK_APP_READY_URL") or None,
                  alarms=_list(env, "PGRUNBOOK_CUTOVER_ALARMS"),
                  attachment_url=g("PGRUNBOOK_ATTACHMENT_URL") or None,
                  soak_seconds=_float(env, "PGRUNBOOK_SOAK_SECONDS", 60.0),
                  ready_timeout=_float(env, "PGRUNBOOK_READY_TIMEOUT", 300.0),
                  roll_timeout=_float(env, "PGRUNBOOK_ROLL_TIMEOUT", 600.0),
                  sessions_grace=_float(env, "PGRUNBOOK_SESSIONS_GRACE", 60.0),
                  poll=_float(env, "PGRUNBOOK_CUTOVER_POLL", 5.0),
                  freeze_grace=_float(env, "PGRUNBOOK_FREEZE_GRACE", 30.0),
                  freeze_max_seconds=_float(env, "PGRUNBOOK_FREEZE_MAX_SECONDS", 600.0),
                  retire_after_days=int(_float(env, "PGRUNBOOK_RETIRE_AFTER_DAYS", 7)),
                  strict=_flag(env, "PGRUNBOOK_CUTOVER_STRICT"),
                  app_user=g("PGRUNBOOK_APP_DB_USER") or None, app_name=g("PGRUNBOOK_APP_NAME") or None,
                  rds_production_parameter_group=g("PGRUNBOOK_RDS_PRODUCTION_PARAMETER_GROUP") or None,
                  work_dir=g("PGRUNBOOK_WORK_DIR") or None, staging=staging)
        if cfg.app_secret_id and cfg.ecs_service and cfg.webhook_url:
            raise UsageError("set PGRUNBOOK_APP_ECS_SERVICE or PGRUNBOOK_APP_ROLL_WEBHOOK, not both")
        return cfg
