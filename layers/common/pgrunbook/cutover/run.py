"""The cutover procedure (runbook steps 4 and 5) and its rollback, as steps both shells use:
`pgrunbook cutover` runs them in one go (`run_cutover`); the Restore state machine runs them as
states (cutover.steps), with the same functions.

Order (nothing changes before every check of step 1 passed):
1. pre-flight: the candidate answers; the secret's current URL points at the old database; the roll
   target exists; the alarms exist and none is in ALARM; the data window is measured;
2. with freeze: the old database is frozen, and the candidate's counts must equal the frozen source's
   (else the freeze is lifted and the cutover refused, naming the tables);
3. switch: a new secret version with the candidate's URL (the old one becomes AWSPREVIOUS);
4. roll the service; 5. prove (ready, alarms soak, attachment, sessions);
6. on success: the old database read-only with a retire-after date, its remaining sessions ended,
   stragglers counted; on any failure in 3-5: rollback (previous version current again, roll,
   ready, freeze lifted), the reason in the report.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .. import dbinfo
from ..dburl import DatabaseUrl
from ..errors import (
    CountsDiffer,
    CutoverError,
    CutoverRefused,
    PgrunbookError,
    ProofFailed,
    ReadOnlyRefused,
    RolledBack,
    RollFailed,
    UsageError,
)
from ..verify import CheckResult
from . import dbstate, proof
from .report import CUT_OVER, REFUSED, ROLLBACK_FAILED, ROLLED_BACK, CutoverReport, RollbackOutcome
from .roll import EcsRoller, WebhookRoller, make_roller
from .secret import SecretSlot, Switch
from .window import DataWindow, live_counts, short_name, window_against_candidate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProofOptions:
    ready_url: str
    ready_timeout: float = 300.0
    alarms: tuple[str, ...] = ()
    soak_seconds: float = 60.0
    attachment_url: str | None = None
    strict: bool = False
    sessions_grace: float = 60.0
    app_user: str | None = None
    app_name: str | None = None
    poll: float = 2.0


@dataclass(frozen=True)
class CutoverOptions:
    new_url: str
    old_url: str
    secret_id: str
    proof: ProofOptions
    secret_key: str | None = None
    ecs_service: str | None = None
    webhook_url: str | None = None
    webhook_key: bytes | None = None
    roll_timeout: float = 600.0
    freeze: bool = False
    freeze_grace: float = 30.0
    manifest: str | None = None
    retire_after_days: int = 7
    token: str = field(default_factory=lambda: str(uuid.uuid4()))


# --------------------------------------------------------------------------- pieces shared with the state machine
def same_database(a: DatabaseUrl, b: DatabaseUrl) -> bool:
    """Same database on the same server: the URLs say so, or the servers do (a host may have two spellings)."""
    if a.same_target(b):
        return True
    if a.dbname != b.dbname:
        return False
    try:
        ids = []
        for url in (a, b):
            with dbinfo.connect(url, autocommit=True, application=dbstate.APPLICATION) as conn:
                row = conn.execute("SELECT current_setting('port'), extract(epoch FROM pg_postmaster_start_time())"
                                   "::text, current_database()").fetchone()
                ids.append(tuple(row) if row else None)
        return ids[0] is not None and ids[0] == ids[1]
    except PgrunbookError:
        return False


def check_secret_points_at(slot: SecretSlot, old: DatabaseUrl, new: DatabaseUrl) -> str:
    """The secret's current URL must name the old database (not the candidate, not another one).
    Returns the current version's id."""
    current = slot.read()
    try:
        url = DatabaseUrl.parse(current.url, what=f"URL in secret {slot.label()}")
    except UsageError as exc:
        raise CutoverRefused(str(exc)) from None
    if same_database(url, new):
        raise CutoverRefused(f"secret {slot.label()} already points at the candidate {new.display()}: "
                             "nothing to cut over (use `pgrunbook rollback` to go back)")
    if not same_database(url, old):
        raise CutoverRefused(f"secret {slot.label()} points at {url.display()}, not at the old database "
                             f"{old.display()}: refusing to switch a secret that serves another database")
    return current.version_id


def check_alarms_ok(alarms: list[str]) -> None:
    states = proof.alarm_states(alarms)
    if states.missing:
        raise CutoverRefused(f"CloudWatch alarm(s) not found: {', '.join(states.missing)}")
    bad = [n for n, s in states.states.items() if s == "ALARM"]
    if bad:
        raise CutoverRefused(f"alarm(s) already in ALARM before the cutover: {', '.join(bad)}; fix that first")


def counts_differ(window: DataWindow) -> str:
    parts = [f"{short_name(t)} {d:+,}" for t, d in window.differences.items()]
    return ", ".join(parts)


@dataclass
class ProofResult:
    checks: list[CheckResult]
    sessions: proof.SessionsProof | None = None
    reason: str | None = None  # the first failure; None when proven
    ready_at: datetime | None = None  # when /ready first answered 200 (writes resume on the new database)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.reason is None, "reason": self.reason, "checks": [c.to_dict() for c in self.checks],
                "sessions": None if self.sessions is None else self.sessions.to_dict(),
                "ready_at": None if self.ready_at is None else self.ready_at.isoformat()}


def prove(new: DatabaseUrl, old: DatabaseUrl, opts: ProofOptions, *, app_user: str | None) -> ProofResult:
    """Run the post-cutover checks. Stops at the first failure that makes the rest pointless (/ready never
    healthy); otherwise runs them all and names the first failure."""
    checks = [proof.wait_ready(opts.ready_url, timeout=opts.ready_timeout, poll=opts.poll)]
    if not checks[0].ok:
        return ProofResult(checks, reason=f"/ready never healthy after the roll: {checks[0].detail}")
    ready_at = datetime.now(UTC)
    checks += proof.soak(list(opts.alarms), opts.ready_url, seconds=opts.soak_seconds, poll=opts.poll)
    if opts.attachment_url:
        checks.append(proof.attachment(opts.attachment_url))
    user = None if opts.app_name else (opts.app_user or app_user)
    sessions = proof.sessions_moved(new, old, user=user, application_name=opts.app_name,
                                    grace=opts.sessions_grace, poll=min(opts.poll, 1.0))
    checks.append(sessions.check(opts.strict))
    failed = [c for c in checks if not c.ok]
    reason = None
    if failed:
        first = failed[0]
        reason = f"{first.name}: expected {first.expected}, actual {first.actual}" + \
            (f" ({first.detail})" if first.detail else "")
    return ProofResult(checks, sessions, reason, ready_at)


def roll_back(slot: SecretSlot, roller: EcsRoller | WebhookRoller, *, reason: str, written_version: str | None,
              previous_version: str | None, ready: ProofOptions | None, old: DatabaseUrl | None,
              freeze: dbstate.FreezeState | None, lift_mark: bool = False) -> RollbackOutcome:
    """Undo a cutover: make the old database writable again FIRST (a session opens read-only on a read-only
    database and stays so: the app must not reconnect before), then the previous version current again
    (only if the current one is ours), roll, /ready. Never touches the candidate. Collects problems
    instead of stopping at the first."""
    out = RollbackOutcome(reason=reason)
    if old is not None:
        try:
            if lift_mark and dbstate.clear_retire_mark(old):
                out.source = "pgrunbook's read-only setting and retire mark lifted: writable again"
            elif freeze is not None:
                lifted = dbstate.unfreeze(old, freeze)
                out.source = ("freeze lifted: the source is writable again" if lifted else
                              "was read-only before the freeze: left read-only" if freeze.was_read_only else
                              "writable (no freeze to lift)")
            else:
                out.source = "READ-ONLY (not set by pgrunbook: left as is)" if dbstate.read_only_state(old) \
                    else "writable"
        except PgrunbookError as exc:
            out.source = "STILL READ-ONLY" if freeze is not None or lift_mark else "unknown"
            out.problems.append(f"could not make {old.display()} writable again: {exc}")
    switched = False
    try:
        current = slot.read()
        switched = written_version is not None and current.version_id == written_version
        if switched and previous_version:
            back = slot.restore(previous_version, expected_current=written_version)
            out.secret = f"AWSCURRENT back to version {back.version_id} ({back.display})"
            out.restored_version_id = back.version_id
        elif switched:
            out.problems.append(f"secret {slot.label()}: no previous version known to move back to")
        elif written_version is not None and current.version_id != written_version and previous_version and \
                current.version_id != previous_version:
            out.problems.append(f"secret {slot.label()} was changed by someone else (current version "
                                f"{current.version_id}): not moved back; check it by hand")
    except PgrunbookError as exc:
        out.problems.append(f"secret not moved back: {exc}")
    if switched:
        try:
            result = roller.roll(reason="rollback", secret_id=slot.secret_id, version_id=previous_version or "")
            out.roll = result.line()
        except RollFailed as exc:
            out.roll = f"FAILED: {exc}"
            out.problems.append(f"rollback roll: {exc}")
        if ready is not None:
            out.ready = proof.wait_ready(ready.ready_url, timeout=ready.ready_timeout, poll=ready.poll)
            if not out.ready.ok:
                out.problems.append(f"/ready not healthy after the rollback: {out.ready.detail}")
    return out


def finish_old(old: DatabaseUrl, new: DatabaseUrl, *, switched_at: datetime, counts_at_switch: dict[str, int],
               retire_after_days: int, report: CutoverReport) -> None:
    """After a proven cutover: old database read-only + retire mark, its sessions from before the switch
    ended, stragglers counted. A refusal is a warning: the cutover stands."""
    retire_after = date.today() + timedelta(days=retire_after_days)
    try:
        dbstate.set_read_only_and_mark(old, replaced_by=new.display(), retire_after=retire_after)
        report.old_database.append(f"read-only (default_transaction_read_only = on); retire after {retire_after}")
        report.old_database.append(f"pgrunbook retire --database-url {old.display()} --force --confirm {old.dbname}")
        ended = dbstate.end_sessions_before(old, switched_at)
        if ended:
            report.old_database.append(f"{len(ended)} session(s) still connected from before the switch were "
                                       "ended: they reconnect read-only")
    except ReadOnlyRefused as exc:
        report.old_database.append("NOT read-only: the setting was refused")
        report.warnings.append(f"the old database {old.display()} was not made read-only ({exc}); writes to it "
                               "are lost: set it read-only by hand (ALTER DATABASE ... SET "
                               "default_transaction_read_only = on as its owner)")
    except PgrunbookError as exc:
        report.warnings.append(f"the old database could not be finished: {exc}")
    try:
        after = live_counts(old)
        report.stragglers = {t: after.get(t, 0) - counts_at_switch.get(t, 0)
                             for t in sorted(set(after) | set(counts_at_switch))
                             if after.get(t, 0) != counts_at_switch.get(t, 0)}
    except PgrunbookError as exc:
        report.warnings.append(f"stragglers not counted: {exc}")


# --------------------------------------------------------------------------- pgrunbook cutover
def run_cutover(opts: CutoverOptions) -> CutoverReport:
    """Cut over; returns the report (outcome CUT_OVER) or raises CutoverError with `.report` attached."""
    t0 = time.monotonic()
    old = DatabaseUrl.parse(opts.old_url, what="old database URL (--old-url or DATABASE_URL)")
    new = DatabaseUrl.parse(opts.new_url, what="candidate URL (--new-url)")
    if old.same_target(new):
        raise UsageError("--new-url and --old-url name the same database")
    slot = SecretSlot(opts.secret_id, opts.secret_key)
    roller = make_roller(ecs_service=opts.ecs_service, webhook_url=opts.webhook_url, webhook_key=opts.webhook_key,
                         timeout=opts.roll_timeout, poll=opts.proof.poll)
    report = CutoverReport(old=old.display(), new=new.display(), secret=slot.label())

    def fail(exc: CutoverError, outcome: str = REFUSED) -> CutoverError:
        report.reason = report.reason or str(exc)
        report.finish(outcome, t0)
        exc.report = report  # type: ignore[attr-defined]
        return exc

    # 1. pre-flight: nothing changes here
    try:
        with dbinfo.connect(new, autocommit=True, application=dbstate.APPLICATION):
            pass
        previous_version = check_secret_points_at(slot, old, new)
        roller.check()
        check_alarms_ok(list(opts.proof.alarms))
        window = _window(old, new, opts.manifest)
        if window.only_in_source:
            raise CutoverRefused("the candidate lacks tables the old database has: "
                                 + ", ".join(short_name(t) for t in window.only_in_source[:10])
                                 + ": it is not a copy of it (wrong database?)")
    except CutoverError as exc:
        raise fail(exc) from None
    except PgrunbookError as exc:
        raise fail(CutoverRefused(str(exc))) from None
    report.window, report.window_data = window.lines(), window.to_dict()

    # 2. freeze
    freeze: dbstate.FreezeState | None = None
    if opts.freeze:
        try:
            freeze = dbstate.freeze(old, grace_seconds=opts.freeze_grace, poll=min(opts.proof.poll, 0.5))
        except PgrunbookError as exc:
            raise fail(CutoverRefused(f"freeze failed: {exc}")) from None
        report.freeze = freeze.to_dict()
        try:
            frozen = window_against_candidate(old, new)
        except BaseException:  # an error or an interrupt before the switch: writable again
            dbstate.unfreeze(old, freeze)
            raise
        if frozen.differences:
            dbstate.unfreeze(old, freeze)
            report.freeze.update(lifted=True, frozen_seconds=round(freeze.frozen_seconds(), 1))
            report.window = frozen.lines()
            raise fail(CountsDiffer(f"the candidate's row counts differ from the frozen source's: "
                                    f"{counts_differ(frozen)}; freeze lifted, nothing switched"))
        report.window = [*report.window, "after the freeze: candidate counts equal the frozen source's"]

    # 3. switch
    try:
        counts_at_switch = live_counts(old)
        switched_at = datetime.now(UTC)
        switch: Switch = slot.switch(opts.new_url, opts.token)
    except BaseException as exc:  # not switched (denied, unreachable, interrupted): writable again
        if freeze is not None:
            dbstate.unfreeze(old, freeze)
            report.freeze = {**(report.freeze or {}), "lifted": True,
                             "frozen_seconds": round(freeze.frozen_seconds(), 1)}
        if isinstance(exc, CutoverError):
            raise fail(exc) from None
        if isinstance(exc, PgrunbookError):
            raise fail(CutoverRefused(str(exc))) from None
        raise
    report.switch = switch.to_dict()
    log.info("secret switched", extra={"secret": slot.label(), "version": switch.new_version_id})

    # 4-5. roll and prove; any failure rolls back
    reason: str | None = None
    ready_at: datetime | None = None
    try:
        report.roll = roller.roll(reason="cutover", secret_id=slot.secret_id,
                                  version_id=switch.new_version_id).line()
        proven = prove(new, old, opts.proof, app_user=new.user)
        report.checks, sessions, reason, ready_at = proven.checks, proven.sessions, proven.reason, proven.ready_at
        if sessions is not None:
            report.sessions = sessions.to_dict()
            if not sessions.moved:
                report.warnings.append(f"the application's sessions did not all move within "
                                       f"{opts.proof.sessions_grace:g} s ({sessions.check(False).actual})"
                                       + (": rolled back (--strict)" if opts.proof.strict else
                                          ": the old database is set read-only now, so their writes fail loudly"))
    except RollFailed as exc:
        reason = str(exc)
        report.roll = f"FAILED: {exc}"
    except PgrunbookError as exc:
        reason = f"post-cutover check failed: {exc}"
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM after the switch: never leave it half-done
        report.reason = f"interrupted ({exc or 'SIGINT'}) after the switch"
        report.rollback = roll_back(slot, roller, reason=report.reason, written_version=switch.new_version_id,
                                    previous_version=switch.previous_version_id or previous_version,
                                    ready=opts.proof, old=old, freeze=freeze)
        raise
    if reason is not None:
        report.reason = reason
        report.rollback = roll_back(slot, roller, reason=reason, written_version=switch.new_version_id,
                                    previous_version=switch.previous_version_id or previous_version,
                                    ready=opts.proof, old=old, freeze=freeze)
        if freeze is not None:
            report.freeze = {**(report.freeze or {}), "lifted": report.rollback.ok,
                             "frozen_seconds": round(freeze.frozen_seconds(), 1)}
        outcome = ROLLED_BACK if report.rollback.ok else ROLLBACK_FAILED
        raise fail(RolledBack(f"cutover rolled back: {reason}") if report.rollback.ok else
                   ProofFailed(f"cutover failed ({reason}) and the rollback is INCOMPLETE: "
                               + "; ".join(report.rollback.problems)), outcome) from None

    # 6. the old database
    if freeze is not None:
        report.freeze = {**(report.freeze or {}), "kept": True,
                         "frozen_seconds": round(freeze.frozen_seconds(ready_at), 1)}
    finish_old(old, new, switched_at=switched_at, counts_at_switch=counts_at_switch,
               retire_after_days=opts.retire_after_days, report=report)
    return report.finish(CUT_OVER, t0)


def _window(old: DatabaseUrl, new: DatabaseUrl, manifest_uri: str | None) -> DataWindow:
    """The candidate against the live source; the backup's time from its manifest when given."""
    finished_at = None
    if manifest_uri:
        from ..archive import ArchiveRef

        found = ArchiveRef.from_uri(manifest_uri).manifest()
        if found is None:
            raise UsageError(f"no manifest found for {manifest_uri}")
        finished_at = found.finished_at
    return window_against_candidate(old, new, backup_finished_at=finished_at)


# --------------------------------------------------------------------------- pgrunbook rollback
@dataclass(frozen=True)
class RollbackOptions:
    secret_id: str
    secret_key: str | None = None
    ecs_service: str | None = None
    webhook_url: str | None = None
    webhook_key: bytes | None = None
    ready: ProofOptions | None = None
    to_version: str | None = None
    old_url: str | None = None  # to lift pgrunbook's read-only mark (default: the URL in the version rolled back to)
    force: bool = False
    roll_timeout: float = 600.0
    poll: float = 2.0


def run_rollback(opts: RollbackOptions) -> CutoverReport:
    """Make the previous (or `to_version`) secret version current again, roll, check /ready, and lift the
    read-only mark pgrunbook put on that database. Refuses (unless force) when the current database holds
    rows the previous one lacks: those writes would be lost."""
    t0 = time.monotonic()
    slot = SecretSlot(opts.secret_id, opts.secret_key)
    roller = make_roller(ecs_service=opts.ecs_service, webhook_url=opts.webhook_url, webhook_key=opts.webhook_key,
                         timeout=opts.roll_timeout, poll=opts.poll)
    current = slot.read()
    back = slot.read(version_id=opts.to_version) if opts.to_version else slot.previous()
    report = CutoverReport(old=current.display, new=back.display, secret=slot.label(),
                           reason="manual rollback (pgrunbook rollback)")
    if back.version_id == current.version_id:
        raise CutoverRefused(f"version {back.version_id} is already current: nothing to roll back")
    back_url = DatabaseUrl.parse(back.url, what="URL in the version rolled back to")
    current_url = DatabaseUrl.parse(current.url, what="URL in the current version")
    try:
        window = window_against_candidate(current_url, back_url)
        report.window = ["rolling back loses the rows written to the current database since the cutover",
                         *window.lines()]
        report.window_data = window.to_dict()
        losing = {t: d for t, d in window.differences.items() if d > 0}
        if losing and not opts.force:
            exc = CutoverRefused(f"rolling back to {back_url.display()} would lose rows written since the cutover: "
                                 f"{', '.join(f'{short_name(t)} +{d:,}' for t, d in losing.items())}; copy them "
                                 "first or pass --force")
            report.reason = str(exc)
            exc.report = report.finish(REFUSED, t0)  # type: ignore[attr-defined]
            raise exc
    except PgrunbookError as exc:
        if isinstance(exc, CutoverRefused):
            raise
        report.warnings.append(f"data window unknown: {exc}")
    old_admin = DatabaseUrl.parse(opts.old_url) if opts.old_url else back_url
    outcome = roll_back(slot, roller, reason="manual rollback", written_version=current.version_id,
                        previous_version=back.version_id, ready=opts.ready, old=old_admin, freeze=None,
                        lift_mark=True)
    report.rollback = outcome
    report.finish(ROLLED_BACK if outcome.ok else ROLLBACK_FAILED, t0)
    if not outcome.ok:
        exc2 = CutoverError("rollback INCOMPLETE: " + "; ".join(outcome.problems))
        exc2.report = report  # type: ignore[attr-defined]
        raise exc2
    return report


def report_of(exc: BaseException) -> CutoverReport | None:
    found = getattr(exc, "report", None)
    return found if isinstance(found, CutoverReport) else None


__all__ = ["CutoverOptions", "ProofOptions", "RollbackOptions", "report_of", "run_cutover", "run_rollback"]
