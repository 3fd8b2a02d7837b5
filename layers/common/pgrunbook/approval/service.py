"""The decide logic: one approval request in (report function), one decision out (approval function).

`create` (report function): seal the task token, write the record, build the signed links and the
notification. `view` / `decide_by_link` (the page) and `show` / `decide_by_cli` (the CLI routes,
authenticated by API Gateway's IAM authorizer) return an `Outcome`: an HTTP status, a state in
words and the record, which apigw.py renders as a page or JSON. Order of checks for a link: the
signature (403), the record (404), the expiry (410), then for a POST the CSRF token (403), the form
(400), an earlier decision (409), the execution still waiting (410), the claim (409 when lost), and
only then the one `SendTaskSuccess`.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import ApprovalConflict as ApprovalConflict  # the approval errors live in errors.py (re-exported)
from ..errors import ApprovalError as ApprovalError
from ..errors import ApprovalForbidden as ApprovalForbidden
from ..errors import ApprovalGone as ApprovalGone
from ..errors import ApprovalInputError as ApprovalInputError
from ..errors import ApprovalNotFound as ApprovalNotFound
from ..errors import ApprovalUnavailable as ApprovalUnavailable
from ..errors import PgrunbookError
from ..events import EventError, _get, _mapping
from ..lambda_support import ConfigError, TransientError
from ..settings import DatabaseConfig, Settings
from .config import ApprovalConfig
from .signing import Signer, signer_from_secret
from .store import ApprovalRecord, ApprovalStore, TokenSealer

log = logging.getLogger(__name__)

APPROVAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
DECISIONS = {"approve": "approved", "reject": "rejected"}
NOT_WAITING_CODES = ("TaskTimedOut", "InvalidToken", "TaskDoesNotExist")
MAX_NAME = 100
MAX_COMMENT = 2000
MAX_FACTS_BYTES = 300_000  # a DynamoDB item holds 400 KB
ATTRIBUTE = "pgrunbook.approval"  # SNS message attribute with the notification's facts as JSON


ERRORS: dict[int, type[PgrunbookError]] = {c.status: c for c in (ApprovalForbidden, ApprovalNotFound,
                                                                  ApprovalConflict, ApprovalGone,
                                                                  ApprovalUnavailable, ApprovalInputError)}


def _now() -> float:
    """The service's clock (one place to move it in tests)."""
    return time.time()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(text: Any) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def console_url(execution_arn: str) -> str:
    parts = execution_arn.split(":")
    region = parts[3] if len(parts) > 3 and parts[3] else "us-east-1"
    return (f"https://{region}.console.aws.amazon.com/states/home?region={region}"
            f"#/v2/executions/details/{execution_arn}")


# --------------------------------------------------------------------------- the request
@dataclass(frozen=True)
class ApprovalRequest:
    """The report function's `request-approval` event (RequestApproval's Payload)."""

    task_token: str = field(repr=False)
    approval_id: str
    execution: str
    plan: Mapping[str, Any]
    target: Mapping[str, Any]
    verify: Mapping[str, Any]
    started_at: str | None = None
    execution_input: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: Any) -> ApprovalRequest:
        what = "request-approval"
        d = _mapping(data, what)
        token = _get(d, "task_token", str, what)
        approval_id = _get(d, "approval_id", str, what)
        if not APPROVAL_ID.fullmatch(approval_id):
            raise EventError(f"{what}: field 'approval_id' must be a UUID (States.UUID())")
        raw_input = d.get("input")
        if isinstance(raw_input, str):
            try:
                raw_input = json.loads(raw_input)
            except json.JSONDecodeError:
                raw_input = {}
        return cls(task_token=token, approval_id=approval_id, execution=_get(d, "execution", str, what),
                   plan=_get(d, "plan", dict, what), target=_get(d, "target", dict, what),
                   verify=_get(d, "verify", dict, what), started_at=_get(d, "started_at", str, what, default=None),
                   execution_input=raw_input if isinstance(raw_input, dict) else {})


def _display(value: Any) -> str:
    from ..dburl import mask_secrets

    return mask_secrets(str(value)) if value not in (None, "") else ""


def _source_display(database: str, databases: Mapping[str, DatabaseConfig]) -> str:
    cfg = databases.get(database)
    if cfg is None or not cfg.host:
        return f"database {cfg.database if cfg else database} (host from its secret)"
    return f"postgresql://{cfg.host}:{cfg.port or 5432}/{cfg.database}"


def _candidate_display(target: Mapping[str, Any]) -> str:
    where = f"{target.get('host')}:{target.get('port') or 5432}" if target.get("host") else "its server"
    if target.get("kind") == "rds":
        return f"new RDS instance {target.get('name')} ({where}), database {target.get('dbname')}"
    server = f" on the server of {target.get('server')}" if target.get("server") else ""
    return f"new database {target.get('dbname') or target.get('name')}{server} ({where})"


def build_facts(req: ApprovalRequest, now: float, expires_at: int,
                databases: Mapping[str, DatabaseConfig] | None = None) -> dict[str, Any]:
    """What the page, the CLI and the notification show (`databases`: the configured ones, to show where
    the source is). Passwords masked; no token."""
    plan, verify, target = req.plan, req.verify, req.target
    database = str(plan.get("database") or "unknown")
    checks = [{"check": _display(c.get("check")), "expected": _display(c.get("expected")),
               "actual": _display(c.get("actual")), "verdict": "pass" if c.get("ok") else "FAIL",
               "ok": bool(c.get("ok")), "detail": _display(c.get("detail"))}
              for c in (verify.get("checks") or []) if isinstance(c, Mapping)]
    started_by = req.execution_input.get("requested_by") or req.execution_input.get("started_by")
    facts: dict[str, Any] = {
        "database": database,
        "source": {"name": database, "display": _display(_source_display(database, databases or {}))},
        "candidate": {**{k: target.get(k) for k in ("kind", "name", "dbname", "host", "port", "server")},
                      "display": _display(_candidate_display(target))},
        "backup": {"uri": _display(plan.get("backup")), "finished_at": plan.get("backup_finished_at"),
                   "size_bytes": plan.get("size_bytes"), "manifest": _display(plan.get("manifest"))},
        "verification": {"ok": bool(verify.get("ok")), "verdict": verify.get("verdict"),
                         "passed": sum(1 for c in checks if c["ok"]), "total": len(checks),
                         "seconds": verify.get("seconds"), "target": _display(verify.get("target")),
                         "manifest": _display(verify.get("manifest")), "checks": checks, "omitted": 0},
        "execution": {"arn": req.execution, "name": req.execution.rsplit(":", 1)[-1],
                      "started_at": req.started_at,
                      "started_by": _display(started_by) if started_by else None,
                      "console_url": console_url(req.execution)},
        "requested_at": iso(now), "expires_at": expires_at,
    }
    while len(json.dumps(facts, default=str)) > MAX_FACTS_BYTES and facts["verification"]["checks"]:
        ver = facts["verification"]  # keep every failure; drop passing checks from the end
        passing = [i for i, c in enumerate(ver["checks"]) if c["ok"]]
        if not passing:
            break
        for i in reversed(passing[-max(1, len(passing) // 2):]):
            del ver["checks"][i]
            ver["omitted"] += 1
    return facts


@dataclass(frozen=True)
class Created:
    approval_id: str
    expires_at: int
    approve_url: str
    reject_url: str
    subject: str
    text: str
    attribute: dict[str, Any]


def links(base_url: str, approval_id: str, exp: int, sig: str) -> tuple[str, str]:
    approve = f"{base_url}/approvals/{approval_id}?exp={exp}&sig={sig}"
    return approve, approve + "&intent=reject"


def backup_age_seconds(facts: Mapping[str, Any], now: float) -> float | None:
    finished = _parse_time((facts.get("backup") or {}).get("finished_at"))
    return None if finished is None else max(0.0, now - finished)


# --------------------------------------------------------------------------- outcomes
@dataclass
class Outcome:
    status: int
    state: str  # pending deciding approved rejected expired not_waiting forbidden not_found conflict bad_input
    message: str  # unavailable error
    record: ApprovalRecord | None = None
    csrf: str | None = None  # set: the page shows the form
    intent: str | None = None
    form: Mapping[str, str] = field(default_factory=dict)  # what was typed (bad input re-renders it)

    def to_json(self, *, with_facts: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.status < 300, "status": self.status, "state": self.state,
                               "message": self.message}
        if self.record is not None:
            out["approval"] = self.record.summary()
            if with_facts:
                out["approval"]["facts"] = self.record.facts
        return out


def decision_words(decision: Mapping[str, Any] | None) -> str:
    """'approved by Ann at 2026-11-25T12:00:00Z (comment: ...)'."""
    if not decision:
        return "no decision"
    text = f"{decision.get('decision')} by {decision.get('approver')} at {decision.get('decided_at')}"
    if decision.get("via"):
        text += f" via {decision['via']}"
    if decision.get("comment"):
        text += f" (comment: {decision['comment']})"
    return text


@dataclass(frozen=True)
class RequestMeta:
    """Who sent a decision, as the HTTP API saw it."""

    source_ip: str | None = None
    user_agent: str | None = None
    identity: str | None = None  # the authorizer's identity (IAM user/role ARN, JWT subject), if any


def _clean(text: str | None, limit: int, what: str) -> str:
    text = (text or "").strip()
    if len(text) > limit:
        raise ApprovalInputError(f"{what} is longer than {limit} characters")
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in text):
        raise ApprovalInputError(f"{what} contains control characters")
    return text


# --------------------------------------------------------------------------- the service
class ApprovalService:
    def __init__(self, config: ApprovalConfig, *, store: ApprovalStore | None = None,
                 signer: Signer | None = None, sealer: TokenSealer | None = None,
                 clock: Callable[[], float] | None = None,
                 databases: Mapping[str, DatabaseConfig] | None = None) -> None:
        self.config = config
        self.databases = dict(databases or {})  # the configured databases (where the source is, for people)
        self.store = store or ApprovalStore(config.table)
        self._signer = signer
        self.sealer = sealer or TokenSealer(config.token_key)
        self.clock = clock or (lambda: _now())

    @classmethod
    def from_settings(cls, settings: Settings) -> ApprovalService:
        """The service of the stack these settings describe (SettingsInvalid naming what is not configured)."""
        return cls(settings.approval.required(), databases=settings.stack.database_map())

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            self._signer = signer_from_secret(self.config.signing_secret)
        return self._signer

    # ------------------------------------------------------------------ report function
    def create(self, req: ApprovalRequest) -> Created:
        if not self.config.base_url:
            raise ConfigError("PGRUNBOOK_APPROVAL_URL is not set: approval links cannot be built")
        now = self.clock()
        timeout = int(req.plan.get("approval_timeout_seconds") or 86400)
        expires_at = int(now) + timeout
        facts = build_facts(req, now, expires_at, self.databases)
        record = ApprovalRecord(approval_id=req.approval_id, execution=req.execution, database=facts["database"],
                                requested_at=facts["requested_at"], expires_at=expires_at, facts=facts)
        sealed = self.sealer.seal(req.task_token, req.approval_id)
        if not self.store.put_new(record, sealed):
            raise ApprovalConflict(f"approval {req.approval_id} already exists for another execution or was decided")
        sig = self.signer.link_signature(req.approval_id, expires_at)
        approve_url, reject_url = links(self.config.base_url, req.approval_id, expires_at, sig)
        subject, text, attribute = notification(facts, req, approve_url, reject_url, now)
        return Created(req.approval_id, expires_at, approve_url, reject_url, subject, text, attribute)

    # ------------------------------------------------------------------ the page
    def _link(self, approval_id: str, exp: str | None, sig: str | None) -> int:
        link_exp = self.signer.verify_link(approval_id, exp, sig)
        if link_exp is None or not APPROVAL_ID.fullmatch(approval_id):
            raise _Refusal(Outcome(403, "forbidden", "This link is not valid: it was changed or was not issued "
                                                     "by pgrunbook. Use the link from the notification as is."))
        return link_exp

    def _record(self, approval_id: str) -> ApprovalRecord:
        record = self.store.get(approval_id) if APPROVAL_ID.fullmatch(approval_id) else None
        if record is None:
            raise _Refusal(Outcome(404, "not_found", f"There is no approval {approval_id} (unknown, or removed "
                                                     "30 days after it expired)."))
        return record

    def _not_expired(self, record: ApprovalRecord, link_exp: int | None = None) -> None:
        deadline = min(record.expires_at, link_exp if link_exp is not None else record.expires_at)
        if self.clock() >= deadline:
            extra = f" It was {decision_words(record.decision)}." if record.decision else " Nothing was decided."
            raise _Refusal(Outcome(410, "expired", f"This approval link expired at {iso(deadline)}.{extra}",
                                   record))

    def view(self, approval_id: str, exp: str | None, sig: str | None, intent: str | None = None) -> Outcome:
        """GET: show the request and its state. Never decides, never writes."""
        try:
            link_exp = self._link(approval_id, exp, sig)
            record = self._record(approval_id)
            self._not_expired(record, link_exp)
            settled = self._settled(record)
            if settled is not None:
                return settled
            running = self._execution_status(record)
            if running != "RUNNING":
                return Outcome(410, "not_waiting", f"The execution is no longer waiting for this decision "
                                                   f"({running}). Nothing was decided.", record)
            csrf = self.signer.csrf_token(approval_id, link_exp, int(self.clock()))
            return Outcome(200, "pending", "Waiting for a decision.", record, csrf=csrf,
                           intent="reject" if intent == "reject" else None)
        except _Refusal as refusal:
            return refusal.outcome

    def decide_by_link(self, approval_id: str, exp: str | None, sig: str | None, form: Mapping[str, str],
                       meta: RequestMeta) -> Outcome:
        """POST from the page: the link's signature and expiry, the CSRF token, then the decision."""
        try:
            link_exp = self._link(approval_id, exp, sig)
            record = self._record(approval_id)
            self._not_expired(record, link_exp)
            if not self.signer.verify_csrf(approval_id, link_exp, form.get("csrf"), self.clock()):
                return Outcome(403, "forbidden", "The form's security token is missing or belongs to another "
                                                 "approval. Open the link from the notification again.", record)
            try:
                decision = self._decision(approval_id, form.get("decision"), form.get("name"), form.get("comment"),
                                          meta, via="page")
            except ApprovalInputError as exc:
                csrf = self.signer.csrf_token(approval_id, link_exp, int(self.clock()))
                return Outcome(400, "bad_input", str(exc), record, csrf=csrf, form=form)
            return self._decide(record, decision)
        except _Refusal as refusal:
            return refusal.outcome

    # ------------------------------------------------------------------ the CLI (IAM-authenticated routes)
    def list(self) -> list[ApprovalRecord]:
        return self.store.list()

    def show(self, approval_id: str) -> Outcome:
        """A read: status 200 whatever the state (the state and message say it in words)."""
        try:
            record = self._record(approval_id)
        except _Refusal as refusal:
            return refusal.outcome
        settled = self._settled(record)
        if settled is not None:
            settled.status = 200
            return settled
        if self.clock() >= record.expires_at:
            return Outcome(200, "expired", f"Expired at {iso(record.expires_at)}; nothing was decided.", record)
        return Outcome(200, "pending", f"Waiting for a decision until {iso(record.expires_at)}.", record)

    def decide_by_cli(self, approval_id: str, decision: str | None, name: str | None, comment: str | None,
                      meta: RequestMeta) -> Outcome:
        try:
            record = self._record(approval_id)
            self._not_expired(record)
            try:
                if decision == "reject" and not (comment or "").strip():
                    raise ApprovalInputError("a rejection needs a reason (--reason)")
                parsed = self._decision(approval_id, decision, name, comment, meta, via="cli")
            except ApprovalInputError as exc:
                return Outcome(400, "bad_input", str(exc), record)
            return self._decide(record, parsed)
        except _Refusal as refusal:
            return refusal.outcome

    # ------------------------------------------------------------------ shared
    def _decision(self, approval_id: str, decision: str | None, name: str | None, comment: str | None,
                  meta: RequestMeta, *, via: str) -> dict[str, Any]:
        if decision not in DECISIONS:
            raise ApprovalInputError("choose Approve or Reject")
        who = _clean(name, MAX_NAME, "Your name")
        if not who:
            raise ApprovalInputError("enter your name: it goes into the audit record")
        return {"decision": DECISIONS[decision], "approval_id": approval_id, "approver": who,
                "decided_at": iso(self.clock()), "comment": _clean(comment, MAX_COMMENT, "The comment") or None,
                "identity": meta.identity, "source_ip": meta.source_ip,
                "user_agent": (meta.user_agent or "")[:300] or None, "via": via}

    def _settled(self, record: ApprovalRecord) -> Outcome | None:
        if record.status in ("approved", "rejected"):
            return Outcome(200, record.status, f"This cutover was {decision_words(record.decision)}.", record)
        if record.status == "deciding":
            return Outcome(200, "deciding", f"A decision is being delivered: {decision_words(record.decision)}.",
                           record)
        if record.status == "not_waiting":
            reason = (record.delivery or {}).get("reason") or (record.delivery or {}).get("error") or "stopped"
            return Outcome(410, "not_waiting", f"The execution is no longer waiting for this decision ({reason}). "
                                               f"{_undelivered(record)}", record)
        return None

    def _conflict(self, record: ApprovalRecord) -> Outcome:
        settled = self._settled(record)
        if settled is not None and settled.status == 410:
            return settled
        return Outcome(409, "conflict", f"Already decided: this cutover was {decision_words(record.decision)}. "
                                        "Your decision was not recorded.", record)

    def _execution_status(self, record: ApprovalRecord) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        from .. import aws

        try:
            return str(aws.client("stepfunctions").describe_execution(executionArn=record.execution)["status"])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("ExecutionDoesNotExist", "InvalidArn"):
                return code
            raise _Refusal(_unavailable(record, f"Step Functions answered {code}")) from None
        except BotoCoreError as exc:
            raise _Refusal(_unavailable(record, f"Step Functions unreachable ({type(exc).__name__})")) from None

    def _decide(self, record: ApprovalRecord, decision: dict[str, Any]) -> Outcome:
        if record.decision or record.status != "pending":
            return self._conflict(record)
        running = self._execution_status(record)
        if running != "RUNNING":
            self.store.mark_not_waiting(record.approval_id, running, iso(self.clock()))
            fresh = self.store.get(record.approval_id) or record
            return self._conflict(fresh) if fresh.decision else Outcome(
                410, "not_waiting", f"The execution is no longer waiting for this decision ({running}). "
                                    "Nothing was decided.", fresh)
        nonce = secrets.token_hex(8)
        if not self.store.claim(record.approval_id, decision, nonce):
            fresh = self.store.get(record.approval_id) or record
            log.info("approval claim lost", extra={"approval_id": record.approval_id})
            return self._conflict(fresh)
        try:
            code = self._deliver(record, decision)
        except Exception as exc:  # never leave the claim held: nothing is known to be decided
            _quietly(lambda: self.store.release(record.approval_id, nonce))
            log.error("approval delivery failed", extra={"approval_id": record.approval_id,
                                                         "error": type(exc).__name__})
            return Outcome(500, "error", "The decision could not be sent (an unexpected error). Nothing was "
                                         "decided: try again, or use the CLI.", record)
        if code is None:
            if not _quietly(lambda: self.store.finish(record.approval_id, nonce, decision["decision"],
                                                      {"status": "delivered", "at": iso(self.clock())})):
                log.error("approval delivered but its record was not updated",
                          extra={"approval_id": record.approval_id})
            log.info("approval decided", extra={"approval_id": record.approval_id, "decision": decision["decision"],
                                                "via": decision["via"]})
            fresh = self.store.get(record.approval_id) or record
            return Outcome(200, decision["decision"], f"Done: this cutover was {decision_words(decision)}.", fresh)
        if code in NOT_WAITING_CODES:
            _quietly(lambda: self.store.finish(record.approval_id, nonce, "not_waiting",
                                               {"status": "not_delivered", "error": code, "at": iso(self.clock())}))
            fresh = self.store.get(record.approval_id) or record
            return Outcome(410, "not_waiting", f"The execution is no longer waiting for this decision ({code}). "
                                               f"{_undelivered(fresh)}", fresh)
        _quietly(lambda: self.store.release(record.approval_id, nonce))
        log.error("approval not delivered", extra={"approval_id": record.approval_id, "error": code})
        return _unavailable(record, code)

    def _deliver(self, record: ApprovalRecord, decision: dict[str, Any]) -> str | None:
        """SendTaskSuccess once. None when delivered, else the error code (never the token)."""
        from botocore.exceptions import BotoCoreError, ClientError

        from .. import aws

        try:
            sealed = self.store.sealed_token(record.approval_id)
            if sealed is None:
                return "TaskDoesNotExist"
            token = self.sealer.open(sealed, record.approval_id)
        except (TransientError, ConfigError) as exc:
            return type(exc).__name__
        try:
            aws.client("stepfunctions").send_task_success(taskToken=token, output=json.dumps(decision))
        except ClientError as exc:
            return str(exc.response.get("Error", {}).get("Code", "ClientError"))
        except BotoCoreError as exc:
            return type(exc).__name__
        return None


class _Refusal(Exception):  # control flow inside the service only
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def _undelivered(record: ApprovalRecord) -> str:
    if record.decision:
        return f"The decision ({decision_words(record.decision)}) was not delivered."
    return "Nothing was decided."


def _unavailable(record: ApprovalRecord | None, why: str) -> Outcome:
    return Outcome(503, "unavailable", f"The decision could not be delivered right now ({why}). Nothing was "
                                       "decided: try again in a minute.", record)


def _quietly(call: Callable[[], bool]) -> bool:
    try:
        return call()
    except PgrunbookError as exc:
        log.error("approval record update failed", extra={"error": type(exc).__name__})
        return False


# --------------------------------------------------------------------------- notifications and reports
def notification(facts: Mapping[str, Any], req: ApprovalRequest, approve_url: str, reject_url: str,
                 now: float) -> tuple[str, str, dict[str, Any]]:
    """Subject, plain text and the JSON attribute (same facts) of the approval request."""
    from ..units import human_age, human_bytes

    ver, backup, ex = facts["verification"], facts["backup"], facts["execution"]
    db = facts["database"]
    subject = f"Approve cutover of {db}? {ver['passed']}/{ver['total']} checks passed"
    age = backup_age_seconds(facts, now)
    size = backup.get("size_bytes")
    lines = [
        f"The restore of {db} for a cutover is verified and waits for your decision.",
        "",
        f"Source:     {facts['source']['display']}",
        f"Candidate:  {facts['candidate']['display']}",
        f"Backup:     {backup['uri']}",
        f"            taken {backup.get('finished_at') or 'at an unknown time'}"
        + (f", {human_age(age)} old" if age is not None else "") + (f", {human_bytes(size)}" if size else ""),
        f"Verification: {'VERIFIED' if ver['ok'] else 'FAILED'}, {ver['passed']}/{ver['total']} checks passed",
    ]
    if req.verify.get("text"):
        lines += ["", str(req.verify["text"])]
    lines += [
        "",
        f"Approve: {approve_url}",
        f"Reject:  {reject_url}",
        f"The links expire at {iso(facts['expires_at'])} (in {human_age(facts['expires_at'] - now)}). Opening a "
        "link decides nothing: the page shows this report and asks for your name and a click.",
        "",
        f"Execution: {ex['console_url']}",
        f"Started {ex.get('started_at') or '-'} by {ex.get('started_by') or 'someone not recorded in the input'}",
        f"Approval id: {req.approval_id}  (CLI: pgrunbook approve {req.approval_id} --as NAME)",
    ]
    attribute = {
        "type": "pgrunbook.cutover-approval", "approval_id": req.approval_id, "database": db,
        "verified": ver["ok"], "checks_passed": ver["passed"], "checks_total": ver["total"],
        "failures": [f"{c['check']}: expected {c['expected']}, actual {c['actual']}"
                     for c in ver["checks"] if not c["ok"]],
        "source": facts["source"]["display"], "candidate": facts["candidate"]["display"],
        "backup": backup["uri"], "backup_finished_at": backup.get("finished_at"),
        "backup_age_seconds": None if age is None else round(age), "backup_size_bytes": size,
        "approve_url": approve_url, "reject_url": reject_url, "expires_at": iso(facts["expires_at"]),
        "console_url": ex["console_url"], "execution": ex["arn"], "started_at": ex.get("started_at"),
        "started_by": ex.get("started_by"),
    }
    return subject, "\n".join(lines), attribute


def approval_summary(approval: Any) -> str | None:
    """The decision line of the final report/notification, or None when there is none."""
    if not isinstance(approval, Mapping) or not approval.get("decision"):
        return None
    line = f"approval: {decision_words(approval)}"
    who = [f"{k.replace('_', ' ')} {approval[k]}" for k in ("identity", "source_ip", "user_agent") if approval.get(k)]
    return line + (f"; {', '.join(who)}" if who else "")
