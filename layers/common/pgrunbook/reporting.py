"""Reports and notifications of the state machines (the `report` Lambda function).

- backup_summary: one message for a whole Backup run (which databases succeeded, which failed);
- restore_report: the verification report of a restore/drill, kept in the bucket under
  `_reports/restore/<database>/...` (the age metrics read it) and sent by SNS;
- request_approval: the cutover approval request (task token kept server-side in the bucket);
- age_metrics: hourly gauges BackupAgeHours / LastVerifiedRestoreAgeDays per database plus the
  worst of each (what the alarms watch).
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import UTC, datetime
from typing import Any

from . import aws
from .catalog_list import latest_backup
from .lambda_support import configured_databases
from .operations import APPROVALS_PREFIX, REPORTS_PREFIX, drilled_databases
from .settings import Settings
from .store import open_store

NEVER_HOURS = 24.0 * 3650  # "no backup at all" is reported as ten years old: alarms fire


def publish(subject: str, message: str) -> str | None:
    """Publish to the stack's topic (PGRUNBOOK_TOPIC_ARN); returns the message id (None when unset)."""
    topic = os.environ.get("PGRUNBOOK_TOPIC_ARN")
    if not topic:
        return None
    resp = aws.client("sns").publish(TopicArn=topic, Subject=subject[:99], Message=message)
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
        err = r.get("error") or {}
        message = _cause_message(err)
        failures.append({"database": r.get("database"), "error": err.get("Error"), "message": message})
        lines.append(f"  FAILED  {r.get('database')}: {err.get('Error')}: {message}")
    if data.get("execution"):
        lines.append(f"execution: {data['execution']}")
    text = "\n".join(lines)
    subject = (f"pgrunbook backup FAILED for {len(failed)} database(s)" if failed
               else f"pgrunbook backup ok ({len(ok)} databases)")
    publish(subject, text)
    return {"ok": not failed, "succeeded": [r.get("database") for r in ok], "failed": failures, "text": text}


def _cause_message(err: dict[str, Any]) -> str:
    """The errorMessage inside a Catch's Cause (a JSON string of Lambda's error body), or the Cause."""
    cause = err.get("Cause")
    if isinstance(cause, str):
        try:
            body = json.loads(cause)
            if isinstance(body, dict) and "errorMessage" in body:
                return str(body["errorMessage"])
        except json.JSONDecodeError:
            pass
        return cause
    return ""


def restore_report(data: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Keep and send the report of a restore (drill or cutover candidate)."""
    plan = data.get("plan") or {}
    database = str(plan.get("database") or data.get("database") or "unknown")
    mode = str(plan.get("mode") or "drill")
    verify = data.get("verify") or {}
    error = data.get("error")
    verified = bool(verify.get("ok")) and not error
    now = datetime.now(UTC)
    err_info = None if not error else {"error": error.get("Error"), "message": _cause_message(error)}
    report: dict[str, Any] = {
        "report_version": 1, "database": database, "mode": mode, "verified": verified,
        "finished_at": now.isoformat(), "execution": data.get("execution"), "backup": plan.get("backup"),
        "backup_finished_at": plan.get("backup_finished_at"), "target": data.get("target"),
        "restore": data.get("restore"), "verify": {k: v for k, v in verify.items() if k != "text"} or None,
        "error": err_info,
    }
    key = f"{REPORTS_PREFIX}/restore/{database}/{now:%Y/%m}/{now:%Y%m%d-%H%M%S}Z-{mode}.json"
    _store(settings).put_bytes(key, json.dumps(report, indent=2, default=str).encode(), "application/json")
    uri = _store(settings).uri(key)
    lines = [f"pgrunbook {mode} of {database}: {'VERIFIED' if verified else 'FAILED'}",
             f"backup: {plan.get('backup')}"]
    if err_info:
        lines.append(f"error: {err_info['error']}: {err_info['message']}")
    if verify.get("text"):
        lines += ["", str(verify["text"])]
    lines += ["", f"report: {uri}"]
    if data.get("execution"):
        lines.append(f"execution: {data['execution']}")
    text = "\n".join(lines)
    publish(f"pgrunbook {mode} {database}: {'verified' if verified else 'FAILED'}", text)
    return {"verified": verified, "report": uri, "text": text,
            "failures": list(verify.get("failures") or []), "restore_seconds":
            float((data.get("restore") or {}).get("seconds") or 0.0)}


def request_approval(data: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Cutover approval request. Contract (input): {task_token, execution, plan, target, verify};
    the execution resumes with SendTaskSuccess output {"decision": "approved"|"rejected",
    "approval_id", "approver", "decided_at", "comment"}. The token is stored in the bucket
    (`_approvals/<id>.json`, SSE-KMS), never sent by mail; the approval issue adds the signed link."""
    token = data.get("task_token")
    if not token:
        raise ValueError("request-approval: missing task_token")
    approval_id = secrets.token_urlsafe(12)
    plan = data.get("plan") or {}
    expires = int(plan.get("approval_timeout_seconds") or 86400)
    record = {"approval_id": approval_id, "task_token": token, "execution": data.get("execution"),
              "database": plan.get("database"), "backup": plan.get("backup"), "target": data.get("target"),
              "verify": {k: v for k, v in (data.get("verify") or {}).items() if k != "text"},
              "requested_at": datetime.now(UTC).isoformat(), "expires_in_seconds": expires, "status": "pending"}
    _store(settings).put_bytes(f"{APPROVALS_PREFIX}/{approval_id}.json", json.dumps(record, default=str).encode(),
                               "application/json")
    text = (f"Cutover of {plan.get('database')} to the restored target {(data.get('target') or {}).get('name')} "
            f"waits for approval {approval_id} (expires in {expires // 3600} h).\n\n"
            f"{(data.get('verify') or {}).get('text', '')}")
    publish(f"pgrunbook cutover approval needed: {plan.get('database')}", text)
    return {"approval_id": approval_id}


def age_metrics(settings: Settings, metrics: Any = None) -> dict[str, Any]:
    """Per database: hours since the newest backup, days since the newest verified restore."""
    from .lambda_support import put_metric

    dest = settings.backup_dest.rstrip("/")
    store = _store(settings)
    now = datetime.now(UTC)
    out: dict[str, Any] = {}
    drilled = set(drilled_databases())
    for name, cfg in sorted(configured_databases().items()):
        last = latest_backup(f"{dest}/{cfg.database}", settings=settings)
        backup_hours = round(NEVER_HOURS if last is None else last.age_seconds / 3600, 2)
        put_metric(metrics, "BackupAgeHours", backup_hours, "Count", name)
        out[name] = {"backup_age_hours": backup_hours}
        if name not in drilled:
            continue  # not drilled (PGRUNBOOK_DRILL_DATABASES): no drill age to alarm on
        verified_days = NEVER_HOURS / 24
        for key in sorted((i.key for i in store.list(f"{REPORTS_PREFIX}/restore/{name}/")), reverse=True):
            rep = json.loads(store.get_bytes(key))
            if rep.get("verified"):
                verified_days = (now - datetime.fromisoformat(rep["finished_at"])).total_seconds() / 86400
                break
        put_metric(metrics, "LastVerifiedRestoreAgeDays", round(verified_days, 2), "Count", name)
        out[name]["verified_restore_age_days"] = round(verified_days, 2)
    if out:
        put_metric(metrics, "OldestBackupAgeHours", max(v["backup_age_hours"] for v in out.values()), "Count")
    drill_ages = [v["verified_restore_age_days"] for v in out.values() if "verified_restore_age_days" in v]
    if drill_ages:
        put_metric(metrics, "OldestVerifiedRestoreAgeDays", max(drill_ages), "Count")
    return {"databases": out}
