"""The approval page (HTML) and its plain-text twin (`pgrunbook approvals show`).

Every value from a record or a request passes through `html.escape` (quote=True) before it is
placed in the page; the page has no script, loads nothing, and is served with a CSP that forbids
scripts, frames and foreign form targets, `Referrer-Policy: no-referrer` (the link is a bearer
secret) and `Cache-Control: no-store`.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from typing import Any

from .service import Outcome, backup_age_seconds, decision_words, iso

SECURITY_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-Robots-Tag": "noindex, nofollow",
}

TITLES = {
    "pending": "Waiting for your decision", "deciding": "A decision is being delivered",
    "approved": "Approved", "rejected": "Rejected", "expired": "This link has expired",
    "not_waiting": "The execution is no longer waiting", "forbidden": "This link or form is not valid",
    "not_found": "Unknown approval", "conflict": "Already decided", "bad_input": "Please check the form",
    "unavailable": "Not delivered - try again", "error": "Something went wrong",
}

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#1b1f24;line-height:1.45}
h1{font-size:1.5rem}h2{font-size:1.1rem;margin-top:1.6rem;border-bottom:1px solid #d0d7de}
.state{padding:.8rem 1rem;border-radius:6px;margin:1rem 0;border:1px solid}
.ok{background:#dafbe1;border-color:#4ac26b}.warn{background:#fff8c5;border-color:#d4a72c}
.bad{background:#ffebe9;border-color:#ff8182}.info{background:#ddf4ff;border-color:#54aeff}
table{border-collapse:collapse;width:100%;font-size:.92rem}th,td{text-align:left;padding:.3rem .5rem;
border-bottom:1px solid #eaeef2;vertical-align:top}td.FAIL{color:#cf222e;font-weight:600}td.pass{color:#1a7f37}
dl{display:grid;grid-template-columns:12rem 1fr;gap:.3rem 1rem}dt{font-weight:600}dd{margin:0;word-break:break-all}
form{margin-top:1rem;padding:1rem;border:1px solid #d0d7de;border-radius:6px}
label{display:block;font-weight:600;margin-top:.6rem}input,textarea{width:100%;font:inherit;padding:.4rem;
box-sizing:border-box}button{font:inherit;padding:.5rem 1.4rem;margin:1rem 1rem 0 0;border-radius:6px;
border:1px solid #1f2328;cursor:pointer}button.approve{background:#1f883d;color:#fff}
button.reject{background:#cf222e;color:#fff}.muted{color:#59636e;font-size:.9rem}
"""

_CLASS = {"pending": "info", "deciding": "info", "approved": "ok", "rejected": "warn", "bad_input": "warn"}


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _age(seconds: float | None) -> str:
    from ..units import human_age

    return "unknown" if seconds is None else human_age(seconds)


def _dl(rows: list[tuple[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _facts_html(facts: Mapping[str, Any], now: float) -> str:
    from ..units import human_bytes

    parts: list[str] = []
    backup, ver, ex = facts.get("backup") or {}, facts.get("verification") or {}, facts.get("execution") or {}
    parts.append("<h2>What will change</h2>" + _dl([
        ("Source database", e((facts.get("source") or {}).get("display"))),
        ("Candidate", e((facts.get("candidate") or {}).get("display"))),
        ("If you approve", "the candidate is kept and the cutover continues from it"),
        ("If you reject", "the candidate is deleted; the source is not touched"),
    ]))
    size = backup.get("size_bytes")
    parts.append("<h2>Backup</h2>" + _dl([
        ("Archive", e(backup.get("uri"))),
        ("Taken at", e(backup.get("finished_at") or "unknown")),
        ("Age", e(_age(backup_age_seconds(facts, now)))),
        ("Size", e(human_bytes(size) if size else "unknown")),
    ]))
    verdict = "VERIFIED" if ver.get("ok") else "FAILED"
    rows = "".join(
        f"<tr><td>{e(c.get('check'))}</td><td>{e(c.get('expected'))}</td><td>{e(c.get('actual'))}</td>"
        f"<td class=\"{'pass' if c.get('ok') else 'FAIL'}\">{e(c.get('verdict'))}</td>"
        f"<td>{e(c.get('detail'))}</td></tr>"
        for c in ver.get("checks") or [])
    omitted = f"<p class=\"muted\">{e(ver['omitted'])} passing checks not shown (see the report).</p>" \
        if ver.get("omitted") else ""
    parts.append(f"<h2>Verification: {e(verdict)}, {e(ver.get('passed'))}/{e(ver.get('total'))} checks passed</h2>"
                 f"<p class=\"muted\">Target {e(ver.get('target'))}; against {e(ver.get('manifest') or '-')}</p>"
                 "<table><thead><tr><th>Check</th><th>Expected</th><th>Actual</th><th>Verdict</th><th>Detail</th>"
                 f"</tr></thead><tbody>{rows}</tbody></table>{omitted}")
    console = ex.get("console_url")
    parts.append("<h2>Execution</h2>" + _dl([
        ("Started by", e(ex.get("started_by") or "not recorded in the execution input (see CloudTrail)")),
        ("Started at", e(ex.get("started_at") or "unknown")),
        ("Execution", e(ex.get("arn"))),
        ("Console", f'<a href="{e(console)}" rel="noreferrer">{e(console)}</a>' if console else "-"),
        ("Requested at", e(facts.get("requested_at"))),
        ("Link expires at", e(iso(facts["expires_at"])) if facts.get("expires_at") else "-"),
    ]))
    return "".join(parts)


def _decision_html(decision: Mapping[str, Any] | None) -> str:
    if not decision:
        return ""
    return "<h2>Decision</h2>" + _dl([
        ("Decision", e(decision.get("decision"))), ("By", e(decision.get("approver"))),
        ("At", e(decision.get("decided_at"))), ("Comment", e(decision.get("comment") or "-")),
        ("Via", e(decision.get("via"))), ("Identity", e(decision.get("identity") or "-")),
        ("Source IP", e(decision.get("source_ip") or "-")),
    ])


def _form_html(outcome: Outcome, action: str) -> str:
    form = outcome.form or {}
    reject_first = outcome.intent == "reject"
    approve = '<button class="approve" type="submit" name="decision" value="approve">Approve</button>'
    reject = '<button class="reject" type="submit" name="decision" value="reject">Reject</button>'
    hint = ("You opened the reject link: enter your name (and why) and press Reject." if reject_first
            else "Opening this page decided nothing. Enter your name and press Approve or Reject.")
    return (f'<form method="post" action="{e(action)}">'
            f'<p class="muted">{e(hint)}</p>'
            f'<input type="hidden" name="csrf" value="{e(outcome.csrf)}">'
            f'<label for="name">Your name</label><input id="name" name="name" required maxlength="100" '
            f'autocomplete="name" value="{e(form.get("name"))}">'
            f'<label for="comment">Comment</label><textarea id="comment" name="comment" rows="3" '
            f'maxlength="2000">{e(form.get("comment"))}</textarea>'
            f"{reject + approve if reject_first else approve + reject}</form>")


def render_page(outcome: Outcome, *, action: str = "", now: float | None = None) -> str:
    now = time.time() if now is None else now
    record = outcome.record
    db = record.database if record is not None else ""
    title = f"Approve cutover of {db}?" if db else "pgrunbook cutover approval"
    body = [f"<h1>{e(title)}</h1>",
            f'<div class="state {_CLASS.get(outcome.state, "bad")}" role="status"><strong>'
            f"{e(TITLES.get(outcome.state, outcome.state))}</strong><br>{e(outcome.message)}</div>"]
    if record is not None and outcome.state not in ("forbidden", "not_found"):
        if outcome.csrf:
            body.append(_form_html(outcome, action))
        body.append(_decision_html(record.decision))
        body.append(_facts_html(record.facts, now))
    body.append('<p class="muted">pgrunbook - a decision is recorded with your name, the time, your IP address '
                "and browser, and goes into the execution's report.</p>")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><meta name="robots" content="noindex">'
            f"<title>{e(title)}</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>")


def render_text(outcome: Outcome, *, now: float | None = None) -> str:
    """`pgrunbook approvals show`: the same facts as the page, as text."""
    from ..units import human_bytes

    now = time.time() if now is None else now
    record = outcome.record
    if record is None:
        return outcome.message
    f = record.facts
    backup, ver, ex = f.get("backup") or {}, f.get("verification") or {}, f.get("execution") or {}
    size = human_bytes(backup["size_bytes"]) if backup.get("size_bytes") else "size unknown"
    lines = [f"approval {record.approval_id}: cutover of {record.database}: {outcome.state}", outcome.message, "",
             f"source:     {(f.get('source') or {}).get('display')}",
             f"candidate:  {(f.get('candidate') or {}).get('display')}",
             f"backup:     {backup.get('uri')} (taken {backup.get('finished_at')}, "
             f"{_age(backup_age_seconds(f, now))} old, {size})",
             f"verification: {'VERIFIED' if ver.get('ok') else 'FAILED'}, {ver.get('passed')}/{ver.get('total')} "
             "checks passed"]
    checks = ver.get("checks") or []
    if checks:
        w = max(len(str(c.get("check"))) for c in checks)
        ew = max(len(str(c.get("expected"))) for c in checks)
        aw = max(len(str(c.get("actual"))) for c in checks)
        lines.append(f"  {'CHECK':<{w}}  {'EXPECTED':<{ew}}  {'ACTUAL':<{aw}}  VERDICT")
        lines += [f"  {c.get('check')!s:<{w}}  {c.get('expected')!s:<{ew}}  {c.get('actual')!s:<{aw}}  "
                  f"{c.get('verdict')}" for c in checks]
    lines += ["", f"execution:  {ex.get('arn')}", f"console:    {ex.get('console_url')}",
              f"started:    {ex.get('started_at') or '-'} by {ex.get('started_by') or 'not recorded'}",
              f"requested:  {record.requested_at}; expires {iso(record.expires_at)}"]
    if record.decision:
        lines.append(f"decision:   {decision_words(record.decision)}")
    return "\n".join(lines)
