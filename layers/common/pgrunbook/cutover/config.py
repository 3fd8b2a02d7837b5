"""The stack's cutover configuration (the cutover function's environment, set by template.yaml), read
once by settings.Settings.from_env (Settings.cutover). Secrets are never in it: only where they are
(secret ids).

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
  (a kept RDS candidate's parameter group: settings.RdsSettings.production_parameter_group)
  PGRUNBOOK_STAGING_SECRET_ID / _SECRET_KEY / _ECS_SERVICE / _ROLL_WEBHOOK / _URL   the staging service
  PGRUNBOOK_STAGING_CHECKS       extra METHOD:PATH:STATUS checks (comma separated; /health and /ready always)
  PGRUNBOOK_STAGING_SIGN_IN      METHOD:PATH:STATUS of the sign-in check, its JSON body in the secret
                                 PGRUNBOOK_STAGING_SIGN_IN_SECRET
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    work_dir: str | None = None  # PGRUNBOOK_WORK_DIR: where the final restore of a freeze downloads
    staging: StagingConfig | None = None
    problems: tuple[str, ...] = field(default=())

    @property
    def configured(self) -> bool:
        """Everything an automatic cutover needs is there."""
        return bool(self.app_secret_id and (self.ecs_service or self.webhook_url) and self.ready_url)
