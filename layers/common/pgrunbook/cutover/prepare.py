"""The candidate before the switch: tried by the application (staging smoke, runbook step 3.4) and made
production-ready BEFORE the approval, so that what the approver approves is exactly what will serve
production; the approval then only marks it approved.

Staging smoke: the staging service's secret gets the candidate's URL (a new version), staging is
rolled, /health, /ready, the sign-in check and a read endpoint run against the staging URL, and the
staging secret is moved back to its previous version and staging rolled again, whatever happened.

Production-ready (after verify and the staging smoke, before the approval):
- `database` target: labelled `keep: candidate` (in its comment, with the provisioner's labels), the source
  database's own settings (ALTER DATABASE ... SET), grants (CONNECT, CREATE, TEMPORARY) and owner copied
  onto it; objects inside got their owners and grants from the restore;
- `rds` target: tagged `pgrunbook:keep=candidate`, renamed `pgrunbook-kept-...` (provision.rds.kept_identifier),
  production parameter group, backup retention for PITR, deletion protection; polled until applied.
The approval turns `candidate` into `approved` (mark_approved). A rejected, timed-out or failed candidate is
still torn down: the teardown and the sweeper lift a candidate's deletion protection and drop a database
as its owner (provision.rds.delete_instance, provision.database.drop_database); `approved` is never
deleted by them.

Invariants: the production application's secret is never touched here; staging always ends on its
previous secret version; nothing here writes a table.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import psycopg
from psycopg import sql

from .. import aws, dbinfo
from ..dburl import DatabaseUrl, mask_secrets
from ..errors import CutoverError, PgrunbookError, ProductionReadyFailed
from ..provision.database import database_labels, set_labels
from ..provision.rds import KEEP_APPROVED, KEEP_CANDIDATE
from ..settings import Settings
from ..verify import CheckResult, HttpCheck, http_check
from . import dbstate, proof
from .config import StagingConfig
from .roll import aws_reason, make_roller
from .secret import SecretSlot

log = logging.getLogger(__name__)

_NOT_COPIED = ("default_transaction_read_only",)


# --------------------------------------------------------------------------- the application on the candidate
def app_login(url: DatabaseUrl) -> CheckResult:
    """Can the application's role (its own credentials) connect to the candidate?"""
    try:
        with dbinfo.connect(url, autocommit=True, application=dbstate.APPLICATION) as conn:
            conn.execute("SELECT 1")
    except PgrunbookError as exc:
        return CheckResult("application login", f"{url.user} connects", "refused", False, str(exc))
    return CheckResult("application login", f"{url.user} connects", "connected", True, url.display())


def staging_smoke(staging: StagingConfig, candidate_url: str, *, token: str, poll: float, roll_timeout: float,
                  ready_timeout: float, sign_in_body: Any = None,
                  webhook_key: bytes | None = None) -> list[CheckResult]:
    """Point staging at the candidate, roll, check, point it back, roll. Returns the checks (named
    `staging ...`); a failed switch or roll is a failed check, never an exception."""
    slot = SecretSlot(staging.secret_id, staging.secret_key)
    roller = make_roller(ecs_service=staging.ecs_service, webhook_url=staging.webhook_url, webhook_key=webhook_key,
                         timeout=roll_timeout, poll=poll)
    checks: list[CheckResult] = []
    try:
        switch = slot.switch(candidate_url, token)
    except PgrunbookError as exc:
        return [CheckResult("staging switch", "staging reads the candidate", "not switched", False, str(exc))]
    try:
        roller.roll(reason="staging-smoke", secret_id=slot.secret_id, version_id=switch.new_version_id)
        ready = proof.wait_ready(staging.url.rstrip("/") + "/ready", timeout=ready_timeout, poll=poll)
        ready.name = "staging ready after the roll"
        checks.append(ready)
        wanted = [HttpCheck.parse("GET:/health:200"), HttpCheck.parse("GET:/ready:200"),
                  *(HttpCheck.parse(c) for c in staging.checks)]
        for check in wanted:
            checks.append(http_check(staging.url, check, 10.0, name=f"staging {check.method} {check.path}"))
        if staging.sign_in:
            spec = HttpCheck.parse(staging.sign_in)
            checks.append(http_check(staging.url, HttpCheck(spec.method, spec.path, spec.status, sign_in_body or {}),
                                     10.0, name=f"staging sign-in {spec.method} {spec.path}"))
    except PgrunbookError as exc:
        checks.append(CheckResult("staging roll", "staging rolled onto the candidate", "failed", False, str(exc)))
    finally:
        try:
            slot.restore(switch.previous_version_id, expected_current=switch.new_version_id)
            roller.roll(reason="staging-restore", secret_id=slot.secret_id, version_id=switch.previous_version_id)
        except PgrunbookError as exc:
            checks.append(CheckResult("staging restored", "staging back on its own database", "NOT restored", False,
                                      f"{exc}: point staging's secret back by hand"))
    return checks


# --------------------------------------------------------------------------- production-ready: database target
def _database_facts(conn: psycopg.Connection[Any]) -> tuple[str, list[tuple[str, str, bool]] | None, dict[str, str]]:
    """(owner, ACL entries as (grantee or PUBLIC, privilege, grantable) or None for the default ACL,
    settings) of the connected database."""
    row = conn.execute("SELECT pg_get_userbyid(datdba), datacl IS NULL FROM pg_database "
                       "WHERE datname = current_database()").fetchone()
    assert row is not None
    acl = None
    if not row[1]:
        acl = [(str(g), str(p), bool(o)) for g, p, o in conn.execute("""
            SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END AS grantee,
                   a.privilege_type, a.is_grantable
            FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = current_database()
            ORDER BY 1, 2""").fetchall()]
    settings = {k: v for k, v in dbstate.database_settings(conn).items()
                if k not in _NOT_COPIED and not k.startswith("pgrunbook.")}
    return str(row[0]), acl, settings


def _role(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name == "PUBLIC" else sql.Identifier(name)


def database_production_ready(source: DatabaseUrl, candidate: DatabaseUrl, *, source_name: str,
                              execution: str, keep: str = KEEP_CANDIDATE,
                              labels: dict[str, str] | None = None) -> list[CheckResult]:
    """Label the candidate kept (`keep`, merged into its labels: `labels` replace them first, for a copy
    that has none yet), then give it the source database's settings, grants and owner (in that order: once
    the owner changes we may no longer change the rest). Returns one check per property."""
    with dbinfo.connect(source, autocommit=True, application=dbstate.APPLICATION) as conn:
        owner, acl, settings = _database_facts(conn)
    with dbstate.manage(candidate) as conn:
        db = sql.Identifier(candidate.dbname)
        try:
            set_labels(conn, candidate.dbname, **(labels or {}), keep=keep,
                       kept=f"cutover candidate of {source_name} (execution {execution})")
            current = dbstate.database_settings(conn)
            for name, value in settings.items():
                if current.get(name) != value:
                    literal: sql.Composable = sql.SQL(value) if name == "search_path" else sql.Literal(value)
                    conn.execute(sql.SQL("ALTER DATABASE {} SET {} TO {}").format(db, sql.Identifier(name), literal))
            if acl is not None:
                conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
                for grantee, privilege, grantable in acl:
                    if grantee == owner:
                        continue  # the owner's own rights come with ownership
                    conn.execute(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                        sql.SQL(privilege), db, _role(grantee),
                        sql.SQL(" WITH GRANT OPTION" if grantable else "")))
            row = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
                               ).fetchone()
            if row and row[0] != owner:
                conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, sql.Identifier(owner)))
        except psycopg.Error as exc:
            raise ProductionReadyFailed(f"cannot make {candidate.display()} production-ready: "
                                        f"{mask_secrets(' '.join(str(exc).split()))[:300]}") from None
    with dbinfo.connect(candidate, autocommit=True, application=dbstate.APPLICATION) as conn:
        got_owner, got_acl, got_settings = _database_facts(conn)
        got_keep = database_labels(conn, candidate.dbname).get("keep")
    return [
        CheckResult("database kept (label)", f"keep: {keep}", f"keep: {got_keep}", got_keep == keep),
        CheckResult("database owner as on the source", owner, got_owner, got_owner == owner),
        CheckResult("database grants as on the source", _acl_text(acl, owner), _acl_text(got_acl, got_owner),
                    _acl_text(acl, owner) == _acl_text(got_acl, got_owner)),
        CheckResult("database settings as on the source", _settings_text(settings), _settings_text(got_settings),
                    got_settings == settings),
    ]


def _acl_text(acl: list[tuple[str, str, bool]] | None, owner: str) -> str:
    if acl is None:
        return "default"
    items = sorted(f"{g}:{p}{'*' if o else ''}" for g, p, o in acl if g != owner)
    return ", ".join(items) or "owner only"


def _settings_text(settings: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) or "none"


# --------------------------------------------------------------------------- production-ready: RDS target
def rds_production_ready(ref: Any, *, settings: Settings) -> tuple[str, dict[str, Any], list[CheckResult]]:
    """One poll of making an RDS candidate production-ready: the RDS provisioner's production settings
    (provision.rds: parameter group, backup retention) plus a kept name, deletion protection and the tags
    `pgrunbook:keep=candidate`, `pgrunbook:purpose=cutover-candidate`. ("modifying", ref, []) until it is
    available under its kept name with the production settings in sync, then ("ready", ref with the new
    name and endpoint, one check per property)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from ..errors import ProvisionFailed
    from ..provision.rds import TAG_KEEP, TAG_PURPOSE, RdsProvisioner, describe, instance_tags, kept_identifier

    rds = aws.client("rds")
    provisioner = RdsProvisioner.of(settings)
    kept = kept_identifier(str(ref["name"]), settings.rds.identifier_prefix)
    try:
        inst = describe(kept)
        if inst is None:  # first call: tags, then rename, production settings and protection in one request
            current = describe(ref["name"])
            if current is None:
                raise ProductionReadyFailed(f"RDS instance {ref['name']} not found")
            args = provisioner.production_arguments(ref["name"], current.get("EngineVersion"))
            # tags first: the sweeper and the teardown read them (keep=candidate: still deletable); the rename
            # keeps them
            rds.add_tags_to_resource(ResourceName=str(current["DBInstanceArn"]), Tags=[
                {"Key": TAG_KEEP, "Value": KEEP_CANDIDATE}, {"Key": TAG_PURPOSE, "Value": "cutover-candidate"}])
            rds.modify_db_instance(**args, NewDBInstanceIdentifier=kept, DeletionProtection=True)
            return "modifying", {**ref, "status": "modifying"}, []
        status, wanted = provisioner.finish_for_production(kept)
        if status != "ready" or not inst.get("DeletionProtection"):
            if not inst.get("DeletionProtection") and str(inst.get("DBInstanceStatus")) == "available":
                rds.modify_db_instance(DBInstanceIdentifier=kept, DeletionProtection=True, ApplyImmediately=True)
            return "modifying", {**ref, "name": kept, "status": "modifying"}, []
        inst = describe(kept) or inst
    except (ClientError, BotoCoreError) as exc:
        raise ProductionReadyFailed(f"RDS refused to make {ref['name']} production-ready: {aws_reason(exc)}") \
            from None
    except ProvisionFailed as exc:
        raise ProductionReadyFailed(str(exc)) from None
    groups = ", ".join(f"{g.get('DBParameterGroupName')} ({g.get('ParameterApplyStatus')})"
                       for g in inst.get("DBParameterGroups") or [])
    tags = instance_tags(inst)
    rows = [
        CheckResult("parameter group (production)", f"{wanted['parameter_group']} (in-sync)", groups,
                    groups == f"{wanted['parameter_group']} (in-sync)"),
        CheckResult("backup retention (PITR)", f"{wanted['backup_retention_days']} days",
                    f"{inst.get('BackupRetentionPeriod')} days",
                    inst.get("BackupRetentionPeriod") == wanted["backup_retention_days"]),
        CheckResult("deletion protection", "on", "on" if inst.get("DeletionProtection") else "off",
                    bool(inst.get("DeletionProtection"))),
        CheckResult("instance name and tags (kept)", f"{kept}, {TAG_KEEP}={KEEP_CANDIDATE}",
                    f"{inst.get('DBInstanceIdentifier')}, {TAG_KEEP}={tags.get(TAG_KEEP)}",
                    inst.get("DBInstanceIdentifier") == kept and tags.get(TAG_KEEP) == KEEP_CANDIDATE,
                    f"the approval sets {TAG_KEEP}={KEEP_APPROVED}; until then a rejection or timeout deletes it"),
    ]
    endpoint = inst.get("Endpoint") or {}  # (statistics: the restore ran ANALYZE; a reboot keeps them)
    return "ready", {**ref, "name": kept, "status": "available", "host": endpoint.get("Address") or ref.get("host"),
                     "port": int(endpoint.get("Port") or ref.get("port") or 5432)}, rows


def mark_approved(ref: Any, candidate: DatabaseUrl) -> str:
    """After the approval: the candidate's keep mark becomes `approved` (the teardown and the sweeper leave
    it alone from now on). Returns what was done."""
    from botocore.exceptions import BotoCoreError, ClientError

    from ..provision.rds import TAG_KEEP, describe

    if ref.get("kind") == "rds":
        try:
            inst = describe(str(ref["name"]))
            if inst is None:
                raise ProductionReadyFailed(f"RDS instance {ref['name']} not found")
            aws.client("rds").add_tags_to_resource(ResourceName=str(inst["DBInstanceArn"]),
                                                   Tags=[{"Key": TAG_KEEP, "Value": KEEP_APPROVED}])
        except (ClientError, BotoCoreError) as exc:
            raise ProductionReadyFailed(f"cannot mark {ref['name']} approved: {aws_reason(exc)}") from None
        return f"RDS instance {ref['name']}: {TAG_KEEP}={KEEP_APPROVED}"
    with dbstate.manage(candidate) as conn:
        try:
            set_labels(conn, candidate.dbname, keep=KEEP_APPROVED)
        except psycopg.Error as exc:
            raise ProductionReadyFailed(f"cannot mark {candidate.display()} approved: "
                                        f"{mask_secrets(' '.join(str(exc).split()))[:300]}") from None
    return f"database {candidate.dbname}: label keep={KEEP_APPROVED}"


def ensure_app_login(admin: DatabaseUrl, app: DatabaseUrl) -> str | None:
    """On a new instance the application's role exists (restored NOLOGIN) or not at all: give it LOGIN
    and the password the application uses (from its secret). Returns what was done, None if nothing."""
    if app.user is None or app.password is None or app_login(app).ok:
        return None
    with dbstate.manage(admin) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (app.user,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        try:
            conn.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(app.user),
                                                                             sql.Literal(app.password)))
        except psycopg.Error as exc:
            raise ProductionReadyFailed(f"cannot let {app.user} log in on the candidate: "
                                        f"{mask_secrets(' '.join(str(exc).split()))[:200]}") from None
    return f"role {app.user}: LOGIN with the application's password ({verb.lower()}d)"


def read_secret_value(secret_id: str) -> str:
    """A secret's current string (a webhook key, a sign-in body)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        resp = aws.client("secretsmanager").get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
    except (ClientError, BotoCoreError) as exc:
        raise CutoverError(f"cannot read secret {secret_id}: {aws_reason(exc)}") from None
    return str(resp.get("SecretString") or "")


def sign_in_body(secret_id: str | None) -> Any:
    if not secret_id:
        return None
    try:
        return json.loads(read_secret_value(secret_id))
    except json.JSONDecodeError:
        raise CutoverError(f"secret {secret_id} (the staging sign-in body) is not JSON") from None
