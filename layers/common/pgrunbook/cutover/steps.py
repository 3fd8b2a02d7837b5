"""The Restore state machine's cutover steps (functions/cutover): one action per state, each given the
execution's whole state (`$`) and returning what its state stores. The same functions as
`pgrunbook cutover` (cutover.run) do the work.

Before approval
  prepare          data window, freeze estimate, the application's login on the candidate, staging
                   smoke; returns the verification report with those checks added (the approver sees it)
  production-ready after the staging smoke: the candidate as it will serve production (cutover.prepare):
                   `database` target: labelled keep: candidate, the source database's settings, grants and
                   owner; `rds` target: kept name and tags (keep=candidate), production parameter group,
                   backup retention for PITR, deletion protection (polled: "modifying" until "ready"), the
                   application's role may log in; and whether the stack's own secret of the database can
                   follow the cutover (cutover.stacksecret). Returns the verification report with these
                   rows added: the approver approves exactly this. A rejected, timed-out or failed candidate
                   is still torn down (the teardown lifts a candidate's protection, drops it as its owner).
After approval
  keep             mark the candidate approved (keep: approved): from now on no teardown or sweeper deletes
                   it; then CutoverReady when no application secret is configured
  freeze-refresh   (input "freeze": true) source read-only, final backup (kind cutover), restored into a
                   fresh database on the candidate's server, verified against the frozen source (counts
                   equal), swapped in for the approved candidate and made production-ready like it; any
                   failure lifts the freeze
  switch           the stack's secret of the database switched to the candidate (when it can follow), then
                   the candidate's URL as a new AWSCURRENT version of the application's secret; roll
  prove            /ready, alarms soak, attachment, sessions (returns ok: false instead of raising)
  finish           old database read-only with a retire-after date, stragglers counted; the cutover report
  rollback         the old database writable again, previous secret version current, roll, /ready, the
                   stack's secret moved back too; the rollback report (with the reason)
  abort            a failure before the switch: lift the freeze if this execution froze the source; report

Invariants: as in pgrunbook.cutover; in particular the secret version this execution writes has the
id version_token(execution, "cutover") (the stack's secret: version_token(execution, "cutover",
"stack-secret")), so `rollback` recognises it even when `switch` failed half-way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from .. import operations
from ..dburl import DatabaseUrl
from ..errors import CountsDiffer, CutoverError, CutoverRefused, PgrunbookError, ProductionReadyFailed, UsageError
from ..events import EventError, TargetRef
from ..lambda_support import database_url, describe_failure
from ..provision.database import database_labels, drop_database
from ..provision.rds import KEEP_APPROVED
from ..settings import Settings
from ..verify import CheckResult, VerifyReport
from . import dbstate, prepare, stacksecret
from .config import CutoverConfig
from .report import CUT_OVER, REFUSED, ROLLBACK_FAILED, ROLLED_BACK, CutoverReport
from .roll import EcsRoller, WebhookRoller, make_roller
from .run import ProofOptions, finish_old, prove, roll_back
from .secret import SecretSlot, StackSecretSlot, rebase_url, version_token
from .window import window_against_candidate, window_against_manifest

log = logging.getLogger(__name__)

ACTIONS = ("prepare", "keep", "freeze-refresh", "production-ready", "switch", "prove", "finish", "rollback", "abort")


class Context:
    """What every step derives from the execution's state and the stack's configuration."""

    def __init__(self, state: Mapping[str, Any], execution: str, cfg: CutoverConfig, settings: Settings) -> None:
        if not isinstance(state, Mapping) or not isinstance(state.get("plan"), Mapping):
            raise EventError("cutover event: 'state' must be the execution's state with its 'plan'")
        self.state, self.execution, self.cfg, self.settings = state, execution, cfg, settings
        self.plan: Mapping[str, Any] = state["plan"]
        self.database = str(self.plan["database"])
        self.ref = TargetRef.parse(state.get("target"), "cutover event: target")
        self.freeze = _bool(state, "freeze")
        self.strict = _bool(state, "strict", cfg.strict)

    @property
    def source_url(self) -> str:
        """The source (old) database: what the stack's secret of the database names, or, once this execution
        switched that secret to the candidate (its current version is ours), what it named before."""
        cfg = self.settings.database(self.database)
        if not self.cfg.app_secret_id:  # no automatic cutover: the stack's secret is never switched
            return database_url(cfg)
        slot = StackSecretSlot(cfg.secret_arn, cfg)
        current = slot.read()
        if current.version_id != self.stack_token:
            return current.url
        previous = ((self.state.get("switch") or {}).get("stack_secret") or {}).get("previous_version_id")
        if not previous:
            previous = next((v for v, stages in slot.stages().items() if v != self.stack_token
                             and "AWSPREVIOUS" in stages), None)
        if not previous:
            raise CutoverError(f"secret {slot.label()} was switched by this cutover and its previous version is "
                               "unknown: the old database cannot be named")
        return slot.read(version_id=previous).url

    @property
    def source(self) -> DatabaseUrl:
        return DatabaseUrl.parse(self.source_url)

    @property
    def candidate(self) -> DatabaseUrl:
        return DatabaseUrl.parse(operations.target_url(self.ref, self.settings))

    def slot(self) -> SecretSlot:
        if not self.cfg.app_secret_id:
            raise CutoverError("no application secret configured (PGRUNBOOK_APP_SECRET_ID)")
        return SecretSlot(self.cfg.app_secret_id, self.cfg.app_secret_key)

    def on_candidate(self, app_url: str) -> str:
        """The application's URL pointed at the candidate: on the source's own server (a `database`
        target there) only the database name changes; elsewhere the candidate's host and port too."""
        same_server = self.ref.kind == "database" and (self.ref.server or self.database) == self.database
        if same_server:
            return rebase_url(app_url, host=None, port=None, dbname=self.ref.dbname)
        cand = self.candidate
        return rebase_url(app_url, host=cand.host, port=int(cand.port), dbname=self.ref.dbname)

    def roller(self) -> EcsRoller | WebhookRoller:
        key = prepare.read_secret_value(self.cfg.webhook_secret).encode() if self.cfg.webhook_secret else None
        return make_roller(ecs_service=self.cfg.ecs_service, webhook_url=self.cfg.webhook_url, webhook_key=key,
                           timeout=self.cfg.roll_timeout, poll=self.cfg.poll)

    def proof_options(self) -> ProofOptions:
        assert self.cfg.ready_url is not None
        return ProofOptions(ready_url=self.cfg.ready_url, ready_timeout=self.cfg.ready_timeout,
                            alarms=self.cfg.alarms, soak_seconds=self.cfg.soak_seconds,
                            attachment_url=self.cfg.attachment_url, strict=self.strict,
                            sessions_grace=self.cfg.sessions_grace, app_user=self.cfg.app_user,
                            app_name=self.cfg.app_name, poll=self.cfg.poll)

    @property
    def token(self) -> str:
        return version_token(self.execution, "cutover")

    @property
    def stack_token(self) -> str:
        return version_token(self.execution, "cutover", "stack-secret")

    def with_target(self, target: Mapping[str, Any]) -> Context:
        return Context({**self.state, "target": dict(target)}, self.execution, self.cfg, self.settings)

    def stack_plan(self) -> stacksecret.StackSecretPlan:
        """Whether the stack's own secret of the database follows the cutover (cutover.stacksecret)."""
        if not self.cfg.configured:
            return stacksecret.StackSecretPlan(
                self.database, self.settings.database(self.database).secret_arn, False,
                "no automatic cutover is configured: when you switch the application (pgrunbook cutover), "
                "point the stack's secret (or DatabasesJson) at the new database too")
        return stacksecret.plan(self.settings, self.database, self.candidate, target_kind=self.ref.kind,
                                app_secret_id=self.cfg.app_secret_id)

    def report(self) -> CutoverReport:
        prepared = (self.state.get("prepared") or {}).get("cutover") or {}
        rep = CutoverReport(old=self.source.display(), new=str((self.state.get("switch") or {}).get("new")
                                                               or self.candidate.display()),
                            secret=self.cfg.app_secret_id or "-", execution=self.execution)
        rep.window = list(prepared.get("window") or [])
        refresh = self.state.get("refresh") or {}
        if refresh.get("freeze"):
            rep.freeze = dict(refresh["freeze"])
        switch = self.state.get("switch") or {}
        if switch.get("stack_secret"):
            rep.stack_secret = dict(switch["stack_secret"])
        if switch.get("switch"):
            rep.switch = dict(switch["switch"])
            rep.roll = switch.get("roll")
            rep.window = list(switch.get("window") or rep.window)
        proof = self.state.get("proof") or {}
        rep.checks = [_check(c) for c in proof.get("checks") or []]
        rep.sessions = proof.get("sessions")
        return rep


def _bool(state: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = state.get(name, default)
    if not isinstance(value, bool):
        raise EventError(f"restore input: field '{name}' must be true or false, got {type(value).__name__}")
    return value


def _check(data: Mapping[str, Any]) -> CheckResult:
    return CheckResult(str(data.get("check")), str(data.get("expected")), str(data.get("actual")),
                       bool(data.get("ok")), str(data.get("detail") or ""))


# --------------------------------------------------------------------------- before approval
def do_prepare(ctx: Context) -> dict[str, Any]:
    """The approver's view of the cutover: the verification report plus the data window, the expected
    write downtime of a freeze, the application's login on the candidate and the staging smoke."""
    verify = dict(ctx.state.get("verify") or {})
    checks = [_check(c) for c in verify.get("checks") or []]
    source, cfg = ctx.source, ctx.cfg
    manifest = _manifest(ctx)
    window = window_against_manifest(source, manifest.tables, manifest.finished_at)
    lines = [*window.lines()]
    age = window.backup_age_seconds
    facts = [CheckResult("data window (rows since the backup)", "stated", _window_actual(window), True,
                         f"backup taken {manifest.finished_at}" + (f", {age / 3600:.1f} h ago" if age else "")
                         + ("; closed by the freeze after approval" if ctx.freeze else
                            "; not in the candidate: lost at cutover" if window.differences else ""))]
    info: dict[str, Any] = {"configured": cfg.configured, "freeze": ctx.freeze, "strict": ctx.strict,
                            "window": window.lines(), "window_data": window.to_dict()}
    try:
        info["source_read_only_before"] = dbstate.read_only_state(source)
    except PgrunbookError:
        info["source_read_only_before"] = None
    if ctx.freeze:
        estimate = (float(manifest.data.get("seconds") or 0.0) + float((ctx.state.get("restore") or {})
                    .get("seconds") or 0.0) + float(verify.get("seconds") or 0.0) + cfg.freeze_grace)
        info["freeze_estimate_seconds"] = round(estimate, 1)
        if ctx.plan.get("runner") not in (None, "lambda"):
            raise UsageError(f"freeze: the final backup and restore of {ctx.database} would not fit one Lambda run "
                             "(it needs the Fargate path): cut over without freeze, or with `pgrunbook cutover "
                             "--freeze` on a candidate kept in sync")
        if estimate > cfg.freeze_max_seconds:
            raise UsageError(f"freeze: writes would stop for about {estimate:.0f} s, more than "
                             f"PGRUNBOOK_FREEZE_MAX_SECONDS ({cfg.freeze_max_seconds:g} s)")
        lines.append(f"freeze requested: writes to {ctx.database} stop after approval for about {estimate:.0f} s "
                     "(final backup + restore + verify, measured by this run) and the window closes")
        facts.append(CheckResult("freeze: expected write downtime", f"<= {cfg.freeze_max_seconds:g} s",
                                 f"about {estimate:.0f} s", True, "final backup + restore + verify, as measured by "
                                 "this run; writes stop only after approval"))
    elif window.known and window.differences:
        lines.append("no freeze: these rows are NOT in the candidate and are lost at cutover (start the execution "
                     "with \"freeze\": true to close the window)")
    app_url = None
    if cfg.app_secret_id:
        app_url = ctx.on_candidate(ctx.slot().read().url)
        app = DatabaseUrl.parse(app_url)
        if ctx.ref.kind == "rds":
            done = prepare.ensure_app_login(ctx.candidate, app)
            if done:
                lines.append(done)
        checks.append(prepare.app_login(app))
    if cfg.staging is not None:
        staging_url = app_url or ctx.on_candidate(SecretSlot(cfg.staging.secret_id, cfg.staging.secret_key)
                                                  .read().url)
        key = prepare.read_secret_value(cfg.webhook_secret).encode() if cfg.webhook_secret else None
        checks += prepare.staging_smoke(cfg.staging, staging_url, token=version_token(ctx.execution, "staging"),
                                        poll=cfg.poll, roll_timeout=cfg.roll_timeout, ready_timeout=cfg.ready_timeout,
                                        sign_in_body=prepare.sign_in_body(cfg.staging.sign_in_secret),
                                        webhook_key=key)
    else:
        lines.append("the application was NOT tried against the candidate: no staging service is configured")
        facts.append(CheckResult("application tried on the candidate", "staging smoke", "NOT tried", True,
                                 "no staging service configured (StagingSecretArn)"))
    if not cfg.configured:
        lines.append("no application secret/roll/ready URL configured: after approval the candidate is kept and "
                     "the switch is yours (pgrunbook cutover)")
    info["lines"] = lines
    return {"verify": _verification(ctx, verify, facts + checks, lines), "cutover": info}


def _verification(ctx: Context, verify: Mapping[str, Any], checks: list[CheckResult],
                  lines: list[str]) -> dict[str, Any]:
    """The verification report the approver sees (the approval page and notification show its rows and
    text): `checks`, then the cutover's lines."""
    report = VerifyReport(target=str(verify.get("target") or ctx.candidate.display()),
                          manifest=verify.get("manifest"), checks=checks, seconds=float(verify.get("seconds") or 0.0))
    out = report.to_dict()
    passed = len(report.checks) - len(report.failures)
    summary = f"{passed}/{len(report.checks)} checks passed" + (
        f"; failed: {'; '.join(out['failures'])}" if out["failures"] else "")
    text = report.text() + "\n\nCutover\n" + "\n".join(f"  {line}" for line in lines)
    return {**out, "text": text, "summary": summary}


def _window_actual(window: Any) -> str:
    if not window.known:
        return "unknown (source unreachable)"
    diffs = window.differences
    if not diffs:
        return "none"
    from .window import short_name

    return ", ".join(f"{short_name(t)} {d:+,}" for t, d in diffs.items())


def _manifest(ctx: Context) -> Any:
    from ..archive import ArchiveRef

    found = ArchiveRef.from_uri(str(ctx.plan["backup"])).manifest()
    if found is None:
        raise CutoverError(f"{ctx.plan['backup']}: no manifest")
    return found


# --------------------------------------------------------------------------- after approval
def do_keep(ctx: Context) -> dict[str, Any]:
    """Approved: the production-ready candidate's keep mark becomes `approved` (never torn down from now on)."""
    return {"status": "approved", "done": prepare.mark_approved(ctx.ref.to_dict(), ctx.candidate)}


def do_freeze_refresh(ctx: Context) -> dict[str, Any]:
    """Freeze the source, back it up (kind cutover), restore into a fresh database on the candidate's server,
    verify it against the frozen source, and swap it in under the candidate's name. On any failure the
    freeze is lifted and the fresh database dropped; the approved candidate is left as it was."""
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from ..backup import BackupOptions, run_backup
    from ..restore import RestoreOptions, run_restore
    from ..verify import VerifyOptions, run_verify

    source, candidate = ctx.source, ctx.candidate
    final = candidate.with_dbname(operations.target_database_name(ctx.execution + ":final"))
    t0 = time.monotonic()
    freeze = dbstate.freeze(source, grace_seconds=ctx.cfg.freeze_grace, poll=min(ctx.cfg.poll, 0.5))
    created = False
    try:
        backup = run_backup(BackupOptions(database_url=ctx.source_url, dest=ctx.settings.backup_dest.rstrip("/"),
                                          kind="cutover", jobs=1), ctx.settings)
        with dbstate.manage(candidate) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(final.dbname)))
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                sql.Identifier(final.dbname)))
            created = True
        final_url = make_conninfo("", **final.connect_kwargs())
        restored = run_restore(RestoreOptions(file=backup.archive, target_url=final_url, force=True,
                                              skip_missing_roles=True, work_dir=ctx.cfg.work_dir), ctx.settings)
        report = run_verify(VerifyOptions(database_url=final_url, manifest=backup.archive), ctx.settings)
        if not report.ok:
            raise CutoverError("the final copy did not verify against its backup: " + "; ".join(
                report.to_dict()["failures"]))
        frozen = window_against_candidate(source, final)
        if frozen.differences:
            raise CountsDiffer("the final copy's row counts differ from the frozen source's: " + ", ".join(
                f"{t} {d:+,}" for t, d in frozen.differences.items()))
        with server_session(candidate) as conn:  # swap: the fresh copy takes the approved candidate's name
            labels = {k: v for k, v in database_labels(conn, candidate.dbname).items() if k not in ("keep", "kept")}
            drop_database(conn, candidate.dbname)  # (made production-ready: its owner is the source's)
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                         (final.dbname,))
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(final.dbname),
                                                                         sql.Identifier(candidate.dbname)))
        if ctx.ref.kind == "database":  # the copy takes the approved candidate's place: production-ready like it
            rows = prepare.database_production_ready(source, candidate, source_name=ctx.database,
                                                     execution=ctx.execution, keep=KEEP_APPROVED, labels=labels)
            _require_ready(rows, "the final copy")
    except BaseException as exc:
        lifted = _lift(source, freeze)
        if created:
            _drop_quietly(candidate, final.dbname)
        if isinstance(exc, PgrunbookError):
            raise type(exc)(f"{exc} (freeze {'lifted' if lifted else 'NOT lifted'}; nothing switched)") from None
        raise
    out = freeze.to_dict()
    return {"freeze": out, "backup": backup.to_dict(), "restore": restored.to_dict(),
            "verify": {k: v for k, v in report.to_dict().items() if k != "checks"},
            "seconds": round(time.monotonic() - t0, 2), "target": ctx.ref.to_dict()}


def server_session(url: DatabaseUrl) -> Any:
    """A management session on the server of `url`, in its maintenance database (to drop and rename)."""
    from .. import dbinfo

    last: PgrunbookError | None = None
    for maintenance in ("postgres", "template1"):
        try:
            conn = dbinfo.connect(url.with_dbname(maintenance), autocommit=True, application=dbstate.APPLICATION)
        except PgrunbookError as exc:
            last = exc
            continue
        conn.execute("SET default_transaction_read_only = off")
        return conn
    raise CutoverError(f"no maintenance database reachable on the server of {url.display()}: {last}")


def _lift(source: DatabaseUrl, freeze: dbstate.FreezeState) -> bool:
    try:
        dbstate.unfreeze(source, freeze)
        return True
    except PgrunbookError as exc:
        log.error("the freeze could not be lifted", extra={"reason": str(exc)})
        return False


def _drop_quietly(server: DatabaseUrl, name: str) -> None:
    from psycopg import sql

    try:
        with dbstate.manage(server) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    except PgrunbookError as exc:
        log.warning("could not drop the unfinished final copy", extra={"database": name, "reason": str(exc)})


def _require_ready(rows: list[CheckResult], what: str) -> None:
    bad = [c for c in rows if not c.ok]
    if bad:
        raise ProductionReadyFailed(f"{what} is not production-ready: " + "; ".join(
            f"{c.name}: expected {c.expected}, actual {c.actual}" for c in bad))


def do_production_ready(ctx: Context) -> dict[str, Any]:
    """Before approval, after verify and the staging smoke: one poll of making the candidate production-ready
    ({"status": "modifying", "target", "polls"} while RDS applies it), then {"status": "ready", "target",
    "polls", "verify": the verification report with the production-ready rows added}."""
    polls = int((ctx.state.get("production_ready") or {}).get("polls") or 0) + 1
    rows: list[CheckResult] = []
    lines: list[str] = []
    if ctx.ref.kind == "rds":
        status, target, rows = prepare.rds_production_ready(ctx.ref.to_dict(), settings=ctx.settings)
        if status != "ready":
            return {"status": status, "target": target, "polls": polls}
        ctx = ctx.with_target(target)
        lines.append(f"production-ready: RDS instance {target['name']} (kept name, production parameter group, "
                     "backups for PITR, deletion protection); approving marks it pgrunbook:keep=approved")
        if ctx.cfg.app_secret_id:
            done = prepare.ensure_app_login(ctx.candidate, DatabaseUrl.parse(ctx.on_candidate(ctx.slot().read().url)))
            if done:
                rows.append(CheckResult("application login", "LOGIN", "granted", True, done))
    else:
        rows = prepare.database_production_ready(ctx.source, ctx.candidate, source_name=ctx.database,
                                                 execution=ctx.execution)
        lines.append(f"production-ready: database {ctx.ref.dbname} owned, granted and set like {ctx.database} "
                     "(labelled keep: candidate; approving marks it keep: approved)")
    _require_ready(rows, "the candidate")
    plan = ctx.stack_plan()
    rows.append(plan.row())
    lines.append(f"stack's secret of {ctx.database}: " + (f"switched with the application's ({plan.why})"
                                                          if plan.follows else f"NOT switched: {plan.why}"))
    prepared = ((ctx.state.get("prepared") or {}).get("cutover") or {}).get("lines") or []
    verify = dict(ctx.state.get("verify") or {})
    checks = [_check(c) for c in verify.get("checks") or []]
    return {"status": "ready", "target": ctx.ref.to_dict(), "polls": polls,
            "verify": _verification(ctx, verify, checks + rows, [*prepared, *lines])}


def do_switch(ctx: Context) -> dict[str, Any]:
    from .run import same_database

    slot, roller = ctx.slot(), ctx.roller()
    current = slot.read()
    new_url = ctx.on_candidate(current.url) if current.version_id != ctx.token else current.url
    new = DatabaseUrl.parse(new_url)
    old = ctx.source
    if current.version_id != ctx.token:  # not a retry of this very switch: the secret must serve the source
        app = DatabaseUrl.parse(current.url, what=f"URL in secret {slot.label()}")
        if not same_database(app, old):
            raise CutoverRefused(f"secret {slot.label()} points at {app.display()}, not at the source "
                                 f"{old.display()}: refusing to switch a secret that serves another database")
    window = window_against_candidate(old, ctx.candidate)
    counts_at_switch = dict(window.source)
    switched_at = datetime.now(UTC)
    # the stack's own secret first (backups and Migrate follow); a failure here rolls back with the rest
    stack = stacksecret.switch(ctx.stack_plan(), ctx.settings.database(ctx.database), ctx.stack_token)
    switch = slot.switch(new_url, ctx.token)
    roll = roller.roll(reason="cutover", secret_id=slot.secret_id, version_id=switch.new_version_id)
    return {"switch": switch.to_dict(), "stack_secret": stack, "roll": roll.line(), "new": new.display(),
            "old": old.display(), "switched_at": switched_at.isoformat(), "counts_at_switch": counts_at_switch,
            "window": window.lines(), "window_data": window.to_dict()}


def do_prove(ctx: Context) -> dict[str, Any]:
    new = DatabaseUrl.parse(ctx.on_candidate(ctx.slot().read().url)) if ctx.cfg.app_secret_id else ctx.candidate
    result = prove(ctx.candidate, ctx.source, ctx.proof_options(), app_user=new.user)
    return result.to_dict()


def do_finish(ctx: Context) -> dict[str, Any]:
    t0 = time.monotonic()
    rep = ctx.report()
    switch = ctx.state.get("switch") or {}
    proof = ctx.state.get("proof") or {}
    sessions = proof.get("sessions") or {}
    if sessions and not sessions.get("moved"):
        rep.warnings.append(f"the application's sessions did not all move within {ctx.cfg.sessions_grace:g} s "
                            f"({sessions.get('new')} on the new, {sessions.get('old')} on the old): the old "
                            "database is set read-only now, so their writes fail loudly")
    if rep.stack_secret and not rep.stack_secret.get("switched"):
        rep.warnings.append(f"scheduled backups and Migrate of {ctx.database} still read the OLD database "
                            f"(read-only from now on): {rep.stack_secret.get('why')}")
    if rep.freeze:
        ready_at = proof.get("ready_at")
        until = datetime.fromisoformat(ready_at) if ready_at else None
        rep.freeze["kept"] = True
        rep.freeze["frozen_seconds"] = round(dbstate.FreezeState.from_dict(rep.freeze).frozen_seconds(until), 1)
    finish_old(ctx.source, ctx.candidate, switched_at=datetime.fromisoformat(switch["switched_at"]),
               counts_at_switch=dict(switch.get("counts_at_switch") or {}),
               retire_after_days=ctx.cfg.retire_after_days, report=rep)
    rep.finish(CUT_OVER, t0)
    return rep.to_dict()


def do_rollback(ctx: Context) -> dict[str, Any]:
    t0 = time.monotonic()
    rep = ctx.report()
    name, message = describe_failure(ctx.state.get("error") or {})
    reason = f"{name}: {message}" if message else name
    rep.reason = reason
    slot, roller = ctx.slot(), ctx.roller()
    previous = None
    for vid, stages in slot.stages().items():
        if "AWSPREVIOUS" in stages and vid != ctx.token:
            previous = vid
    switch = (ctx.state.get("switch") or {}).get("switch") or {}
    previous = switch.get("previous_version_id") or previous
    rep.rollback = roll_back(slot, roller, reason=reason, written_version=ctx.token, previous_version=previous,
                             ready=ctx.proof_options(), old=ctx.source, freeze=_freeze_of(ctx))
    stack_switch = (ctx.state.get("switch") or {}).get("stack_secret") or {}
    rep.rollback.stack_secret, problems = stacksecret.roll_back(
        ctx.settings.database(ctx.database), ctx.stack_token, stack_switch.get("previous_version_id"))
    rep.rollback.problems += problems
    if rep.freeze:
        rep.freeze["lifted"] = rep.rollback.source.startswith("freeze lifted")
    switched = rep.rollback.restored_version_id is not None or not rep.rollback.ok
    rep.finish(ROLLBACK_FAILED if not rep.rollback.ok else ROLLED_BACK if switched else REFUSED, t0)
    return rep.to_dict()


def _freeze_of(ctx: Context) -> dbstate.FreezeState | None:
    """The freeze this execution set: from freeze-refresh's result, or (if that step died) from the input and
    the source's state before approval."""
    refresh = ctx.state.get("refresh") or {}
    if refresh.get("freeze"):
        return dbstate.FreezeState.from_dict(refresh["freeze"])
    prepared = (ctx.state.get("prepared") or {}).get("cutover") or {}
    if ctx.freeze and prepared.get("source_read_only_before") is False:
        return dbstate.FreezeState(database=ctx.database, frozen_at=datetime.now(UTC).isoformat(),
                                   was_read_only=False)
    return None


def do_abort(ctx: Context) -> dict[str, Any]:
    """A failure after approval, before the switch: lift this execution's freeze; the candidate is kept."""
    t0 = time.monotonic()
    rep = ctx.report()
    name, message = describe_failure(ctx.state.get("error") or {})
    rep.reason = f"{name}: {message}" if message else name
    freeze = _freeze_of(ctx)
    if freeze is not None:
        try:
            lifted = dbstate.unfreeze(ctx.source, freeze)
            rep.freeze = {**(rep.freeze or {}), **freeze.to_dict(), "lifted": True}
            rep.warnings.append("freeze lifted: the source is writable again" if lifted else
                                "the source was not read-only (nothing to lift)")
        except PgrunbookError as exc:
            rep.warnings.append(f"the freeze could NOT be lifted: {exc}: lift it by hand (ALTER DATABASE ... "
                                "RESET default_transaction_read_only)")
    if (ctx.state.get("kept") or {}).get("status") == "approved":
        rep.warnings.append(f"nothing was switched; the approved candidate is kept: {rep.new}")
    else:
        rep.warnings.append(f"nothing was switched; the candidate {rep.new} could NOT be marked approved (still "
                            "keep: candidate): the sweeper deletes it once this execution has ended unless you mark "
                            "it (RDS tag pgrunbook:keep=approved, or the database label keep)")
    rep.finish(REFUSED, t0)
    return rep.to_dict()


HANDLERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "prepare": do_prepare, "keep": do_keep, "freeze-refresh": do_freeze_refresh,
    "production-ready": do_production_ready, "switch": do_switch, "prove": do_prove, "finish": do_finish,
    "rollback": do_rollback, "abort": do_abort}


def handle(event: Any, cfg: CutoverConfig, settings: Settings) -> dict[str, Any]:
    """The cutover function: {"action", "execution", "state"} -> the action's result."""
    if not isinstance(event, Mapping):
        raise EventError(f"cutover event: expected a JSON object, got {type(event).__name__}")
    action = event.get("action")
    if action not in HANDLERS:
        raise EventError(f"cutover event: field 'action' must be one of {', '.join(ACTIONS)}, not {action!r}")
    execution = event.get("execution")
    if not isinstance(execution, str) or not execution:
        raise EventError("cutover event: missing field 'execution'")
    ctx = Context(event.get("state") or {}, execution, cfg, settings)
    return HANDLERS[str(action)](ctx)
