"""The stack follows the cutover: its own secret of the database (the `secret_arn` of the database's
PGRUNBOOK_DATABASES entry, the RDS-style secret the Backup and Migrate functions read) is switched to the
new database with the application's secret, and moved back with it on a rollback. Without this, scheduled
backups and Migrate would keep going to the old, read-only database while production writes to the new one.

The stack reaches a configured database as `lambda_support.database_url` does: the secret's username and
password, its host and port unless the entry pins them, and ALWAYS the entry's database name (`dbname`, or
the entry's name). So the secret can re-point the stack only when
- the candidate's database has the entry's database name (a `database` target on another server named
  like the source, or an `rds` target: a new instance with the source's database name; a `database` target
  on the source's own server has another name and cannot follow),
- the entry does not pin a host or port other than the candidate's,
- the secret is pgrunbook's to write: not an RDS-managed secret (`rds!...`, rotated by RDS), not the
  application's secret, and no other entry uses it (it would move that database too).
Otherwise nothing is written and the approval and the cutover report say so, with what to change.

Credentials of the new version: the stack's own role (the secret's username and password) when it logs in
to the candidate; else, for a `database` target, the role the candidate was restored with (the target
server's secret, which the stack already holds); else nothing is switched (the report says why).

Invariants: the new version's id is version_token(execution, "cutover", "stack-secret") (a retried switch
writes nothing twice; the rollback recognises it); the previous version stays AWSPREVIOUS; a rollback moves
AWSCURRENT back only while the current version is the one this cutover wrote; reads name AWSCURRENT; the
secret's value is never logged or reported (URLs masked).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import dbinfo
from ..dburl import DatabaseUrl
from ..errors import PgrunbookError
from ..lambda_support import read_secret
from ..settings import DatabaseConfig, Settings
from ..verify import CheckResult
from . import dbstate
from .secret import StackSecretSlot, Switch

ROW = "stack's database secret (backups, Migrate)"


@dataclass(frozen=True)
class StackSecretPlan:
    database: str  # the configured name
    secret_id: str
    follows: bool
    why: str  # follows: which credentials; otherwise: why not, and what to change
    url: str | None = field(default=None, repr=False)  # the new target, with its password

    def row(self) -> CheckResult:
        """The approval's row: always passes (the cutover itself does not depend on it), says what happens."""
        if self.follows:
            return CheckResult(ROW, "switched with the application's", "switched at cutover", True,
                               f"{self.secret_id}: {self.why}")
        return CheckResult(ROW, "switched with the application's", "NOT switched", True,
                           f"scheduled backups and Migrate keep reading the OLD database: {self.why}")

    def slot(self, entry: DatabaseConfig) -> StackSecretSlot:
        return StackSecretSlot(self.secret_id, entry)


def _users_of(settings: Settings, secret_id: str, database: str) -> list[str]:
    return sorted(name for name, cfg in settings.stack.database_map().items()
                  if name != database and secret_id in (cfg.secret_arn, cfg.target_secret))


def _rds_managed(secret_id: str) -> bool:
    name = secret_id.split(":secret:", 1)[-1]
    return name.startswith("rds!")


def _logs_in(url: DatabaseUrl) -> bool:
    try:
        with dbinfo.connect(url, autocommit=True, application=dbstate.APPLICATION) as conn:
            conn.execute("SELECT 1")
        return True
    except PgrunbookError:
        return False


def plan(settings: Settings, database: str, candidate: DatabaseUrl, *, target_kind: str,
         app_secret_id: str | None) -> StackSecretPlan:
    """Whether (and with which credentials) the stack's secret of `database` can follow the cutover to
    `candidate` (the candidate as the stack reaches it: the credentials it was restored with)."""
    cfg = settings.database(database)
    secret_id = cfg.secret_arn

    def no(why: str) -> StackSecretPlan:
        return StackSecretPlan(database, secret_id, False, why)

    if candidate.dbname != cfg.database:
        return no(f"the stack's entry {database!r} always names database {cfg.database!r} (its dbname or name) and "
                  f"the candidate is {candidate.dbname!r}: after the cutover, point the entry in DatabasesJson at "
                  "the new database by hand")
    pinned = [f"{k}={v}" for k, v, have in (("host", cfg.host, candidate.host), ("port", cfg.port, candidate.port))
              if v is not None and str(v) != str(have)]
    if pinned:
        return no(f"the stack's entry {database!r} pins {', '.join(pinned)} in DatabasesJson (the candidate is "
                  f"{candidate.host}:{candidate.port}): change the entry, or keep host and port in the secret only")
    if _rds_managed(secret_id):
        return no(f"{secret_id} is managed (and rotated) by RDS: pgrunbook does not write it; give the entry a "
                  "secret of its own")
    if app_secret_id and secret_id in (app_secret_id, app_secret_id.split(":secret:", 1)[-1]):
        return no(f"{secret_id} is also the application's secret")
    shared = _users_of(settings, secret_id, database)
    if shared:
        return no(f"{secret_id} is also the secret of {', '.join(shared)}: switching it would move them too")
    own = DatabaseUrl.from_secret(read_secret(secret_id), host=cfg.host, port=cfg.port, dbname=cfg.database,
                                  sslmode=cfg.sslmode)
    moved = DatabaseUrl(params={**own.params, **{k: v for k, v in candidate.params.items()
                                                 if k in ("host", "hostaddr", "port", "dbname")}},
                        password=own.password)
    if _logs_in(moved):
        return StackSecretPlan(database, secret_id, True, f"the stack's own role {moved.user} logs in to the "
                               f"candidate: {moved.display()}", moved.secret_url())
    if target_kind == "database":
        return StackSecretPlan(database, secret_id, True, f"the stack's role {own.user} cannot log in there; the "
                               f"role the candidate was restored with: {candidate.display()}",
                               candidate.secret_url())
    return no(f"the stack's role {own.user} cannot log in to the candidate {moved.display()}: create it there, "
              "then switch the secret by hand")


def switch(p: StackSecretPlan, entry: DatabaseConfig, token: str) -> dict[str, Any]:
    """Write the plan's target as a new AWSCURRENT version of the stack's secret (id `token`)."""
    if not p.follows or p.url is None:
        return {"switched": False, "secret_id": p.secret_id, "database": p.database, "why": p.why}
    done: Switch = p.slot(entry).switch(p.url, token)
    return {"switched": True, "database": p.database, "why": p.why, **done.to_dict()}


def roll_back(entry: DatabaseConfig, token: str, previous: str | None) -> tuple[str, list[str]]:
    """Move AWSCURRENT of the stack's secret back when the current version is the one this cutover wrote
    (`token`). Returns (what happened, problems)."""
    slot = StackSecretSlot(entry.secret_arn, entry)
    try:
        current = slot.read()
        if current.version_id != token:
            return "not switched by this cutover: nothing to move back", []
        if previous is None:
            for vid, stages in slot.stages().items():
                if vid != token and "AWSPREVIOUS" in stages:
                    previous = vid
        if previous is None:
            return "NOT moved back", [f"stack secret {slot.label()}: no previous version known to move back to"]
        back = slot.restore(previous, expected_current=token)
    except PgrunbookError as exc:
        return "NOT moved back", [f"stack secret not moved back: {exc}"]
    return f"AWSCURRENT back to version {back.version_id} ({back.display})", []
