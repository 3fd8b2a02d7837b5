"""Reports and notifications of the state machines (the `report` Lambda function).

- backup_summary: one message for a whole Backup run (which databases succeeded, which failed);
- restore_report: the verification report of a restore/drill, kept in the bucket under
  `_reports/restore/<database>/...` (the age metrics read it) and sent by SNS;
- request_approval: the cutover approval request (pgrunbook.approval: sealed token, signed links);
- age_metrics: hourly gauges BackupAgeHours / LastVerifiedRestoreAgeDays per database plus the
  worst of each (what the alarms watch);
- describe_error: a Catch's {"Error", "Cause"} as {"Error", "Cause": one line} for the state
  machines' failure notifications and Fail states.

Every error these carry is the error's class and one line (lambda_support.describe_failure): a
Lambda failure's Cause holds its stack trace, which stays in the execution history and the log.
Each result that a Fail state reads as its cause (`cause`, `error.Cause`) is one line.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from . import aws
from .approval.service import approval_summary
from .errors import one_line
from .keys import restore_report_key
from .lambda_support import describe_failure, described_error
from .settings import Settings
from .store import open_store


def publish(settings: Settings, subject: str, message: str, attributes: dict[str, str] | None = None) -> str | None:
    """Publish to the stack's topic (Settings.stack.topic_arn); returns the message id (None when unset).
    `attributes`: SNS message attributes (strings), e.g. the same facts as JSON for chat integrations."""
    topic = settings.stack.topic_arn
    if not topic:
        return None
    extra = {"MessageAttributes": {k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()}} \
        if attributes else {}
    resp = aws.client("sns").publish(TopicArn=topic, Subject=subject[:99], Message=message, **extra)
    return str(resp.get("MessageId"))


def _store(settings: Settings) -> Any:
    return open_store(settings.backup_dest.rstrip("/"), kms_key_id=settings.kms_key_id)


def backup_summary(data: dict[str, Any], settings: Settings) -> dict[str, Any]:
    results = list(data.get("results") or [])
    ok = [r for r in results if r.get("ok")]
    failed = [r for r in results if not r.get("ok")]
    lines = [f"pgrunbook backup ({data.get('kind', 'scheduled')}): {len(ok)} of {len(results)} databases backed up"]
    for r in ok:
        res = r.get("result") or {}
        lines.append(f"  ok      {r.get('database')}: {res.get('archive')} ({res.get('bytes', 0)} bytes, "
                     f"{res.get('rows', 0)} rows, {res.get('seconds', 0)} s)")
    failures = []
    for r in failed:
        name, message = describe_failure(r.get("error") or {})
        failures.append({"database": r.get("database"), "error": name, "message": message})
        lines.append(f"  FAILED  {r.get('database')}: {name}: {message}")
    if data.get("execution"):
        lines.append(f"execution: {data['execution']}")
    text = "\n".join(lines)
    subject = (f"pgrunbook backup FAILED for {len(failed)} database(s)" if failed
               else f"pgrunbook backup ok ({len(ok)} databases)")
    publish(settings, subject, text)
    # the execution's cause when some failed (one line; the notification above has the details)
    cause = one_line(f"{len(ok)} of {len(results)} databases backed up; failed: "
                     + "; ".join(f"{f['database']}: {f['error']}: {f['message']}" for f in failures),
                     limit=4000) if failed else ""
    return {"ok": not failed, "succeeded": [r.get("database") for r in ok], "failed": failures, "text": text,
            "cause": cause}


def describe_error(data: dict[str, Any]) -> dict[str, str]:
    """{"error": {"Error", "Cause"}} -> {"Error", "Cause": one line} (nothing published)."""
    return described_error(data.get("error"))


def restore_report(data: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Keep and send the report of a restore (drill or cutover candidate)."""
    plan = data.get("plan") or {}
    database = str(plan.get("database") or data.get("database") or "unknown")
    mode = str(plan.get("mode") or "drill")
    verify = data.get("verify") or {}
    error = data.get("error")
    verified = bool(verify.get("ok")) and not error
    now = datetime.now(UTC)
    err_info = None
    if error:
        name, message = describe_failure(error)
        err_info = {"error": name, "message": message}
    report: dict[str, Any] = {
        "report_version": 1, "database": database, "mode": mode, "verified": verified,
        "finished_at": now.isoformat(), "execution": data.get("execution"), "backup": plan.get("backup"),
        "backup_finished_at": plan.get("backup_finished_at"), "target": data.get("target"),
        "restore": data.get("restore"), "verify": {k: v for k, v in verify.items() if k != "text"} or None,
        "error": err_info, "approval": data.get("approval") if isinstance(data.get("approval"), dict) else None,
    }
    cutover = data.get("cutover") if isinstance(data.get("cutover"), dict) else None
    if cutover:  # a cutover's or rollback's report (pgrunbook.cutover) joins the restore's
        report["cutover"] = {k: v for k, v in cutover.items() if k != "text"}
    key = restore_report_key(database, now, mode)
    _store(settings).put_bytes(key, json.dumps(report, indent=2, default=str).encode(), "application/json")
    uri = _store(settings).uri(key)
    lines = [f"pgrunbook {mode} of {database}: {'VERIFIED' if verified else 'FAILED'}",
             f"backup: {plan.get('backup')}"]
    if err_info:
        lines.append(f"error: {err_info['error']}: {err_info['message']}")
    decided = approval_summary(data.get("approval"))
    if decided:
        lines.append(decided)
    if cutover:
        lines += ["", str(cutover.get("text") or "")]
        mode = f"cutover ({cutover.get('outcome')})"
    if verify.get("text"):
        lines += ["", str(verify["text"])]
    lines += ["", f"report: {uri}"]
    if data.get("execution"):
        lines.append(f"execution: {data['execution']}")
    text = "\n".join(lines)
    decision = (report["approval"] or {}).get("decision")
    publish(settings, f"pgrunbook {mode} {database}: {'verified' if verified else 'FAILED'}"
            + (f", {decision} by {report['approval'].get('approver')}" if decision else ""), text)
    out: dict[str, Any] = {"verified": verified, "report": uri, "text": text,
                           "failures": list(verify.get("failures") or []), "restore_seconds":
                           float((data.get("restore") or {}).get("seconds") or 0.0)}
    if err_info:  # the Catch's error, described: the state machine's Fail state reads it
        out["error"] = {"Error": err_info["error"], "Cause": err_info["message"]}
    # one line for a Fail state (a failed verification): what failed, not the whole table
    out["cause"] = (f"{err_info['error']}: {err_info['message']}" if err_info else
                    one_line(f"{mode} of {database}: {'verified' if verified else 'verification FAILED'}: "
                             + str(verify.get("summary") or "; ".join(out["failures"]) or "no checks ran"),
                             limit=4000))
    return out


def request_approval(data: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Cutover approval request (pgrunbook.approval): the task token is sealed (KMS) into the approval
    table, never sent; the notification carries signed, expiring approve/reject links, the verification
    summary, the backup's age and the execution's console link, as text and as a JSON attribute."""
    from .approval.service import ATTRIBUTE, ApprovalRequest, ApprovalService

    created = ApprovalService.from_settings(settings).create(ApprovalRequest.parse(data))
    publish(settings, created.subject, created.text, {ATTRIBUTE: json.dumps(created.attribute, default=str)})
    return {"approval_id": created.approval_id, "expires_at": created.expires_at}


def age_metrics(settings: Settings, metrics: Any = None, now: datetime | None = None) -> dict[str, Any]:
    """Per database (dimension Database): hours since the newest backup, days since the newest verified
    restore (drilled databases only), and for RDS sources the PITR window (PitrWindowDays) and lag
    (PitrLagMinutes); plus the worst of each without dimension, which the alarms watch. Something that
    never happened ages from when the database was first watched (oncall.first_seen)."""
    from .lambda_support import put_metric
    from .oncall import collect

    now = now or datetime.now(UTC)
    out: dict[str, Any] = {}
    for f in collect(settings, now=now, record=True):
        backup_hours = f.backup_age_hours(now)
        put_metric(metrics, "BackupAgeHours", backup_hours, "Count", f.name)
        out[f.name] = {"backup_age_hours": backup_hours}
        if f.drilled:  # not drilled (PGRUNBOOK_DRILL_DATABASES): no drill age to alarm on
            verified_days = f.verified_age_days(now)
            put_metric(metrics, "LastVerifiedRestoreAgeDays", verified_days, "Count", f.name)
            out[f.name]["verified_restore_age_days"] = verified_days
        if f.pitr is not None and f.pitr.error is None:
            put_metric(metrics, "PitrWindowDays", f.pitr.retention_days, "Count", f.name)
            out[f.name]["pitr_window_days"] = f.pitr.retention_days
            if f.pitr.lag_minutes is not None:
                put_metric(metrics, "PitrLagMinutes", f.pitr.lag_minutes, "Count", f.name)
                out[f.name]["pitr_lag_minutes"] = f.pitr.lag_minutes
    if out:
        put_metric(metrics, "OldestBackupAgeHours", max(v["backup_age_hours"] for v in out.values()), "Count")
    worst = {"OldestVerifiedRestoreAgeDays": (max, "verified_restore_age_days"),
             "ShortestPitrWindowDays": (min, "pitr_window_days"), "LongestPitrLagMinutes": (max, "pitr_lag_minutes")}
    for metric, (pick, key) in worst.items():
        values = [v[key] for v in out.values() if key in v]
        if values:
            put_metric(metrics, metric, pick(values), "Count")
    return {"databases": out}


def cutover_notification(report: dict[str, Any], settings: Settings) -> str | None:
    """Publish a cutover or rollback report made outside the state machine (`pgrunbook cutover`/`rollback`)
    to $PGRUNBOOK_TOPIC_ARN, when one is set (the state machine reports through restore_report)."""
    from .cutover.report import CutoverReport

    rep = CutoverReport.from_dict(report)
    return publish(settings, rep.subject(), rep.text())
