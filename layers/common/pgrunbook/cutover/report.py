"""The cutover report and the rollback report: one structure for the CLI, the state machine and the
notification, as JSON (to_dict) and as text (text). No password ever reaches it: URLs are masked
(DatabaseUrl.display) before they are stored here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..verify import CheckResult, VerifyReport

CUT_OVER = "cut over"
ROLLED_BACK = "rolled back"
REFUSED = "refused"  # nothing switched (a check before the switch failed, or the secret write was denied)
ROLLBACK_FAILED = "rollback FAILED"


def _check_from(data: dict[str, Any]) -> CheckResult:
    return CheckResult(name=str(data.get("check") or data.get("name")), expected=str(data.get("expected", "")),
                       actual=str(data.get("actual", "")), ok=bool(data.get("ok")),
                       detail=str(data.get("detail") or ""))


def check_table(checks: list[CheckResult]) -> list[str]:
    """The verification table (CHECK EXPECTED ACTUAL VERDICT) for these checks."""
    if not checks:
        return []
    return VerifyReport(target="", checks=checks).text().splitlines()[1:-1]


@dataclass
class RollbackOutcome:
    reason: str
    secret: str = "not switched: nothing to move back"  # noqa: S105 - a sentence, not a password
    restored_version_id: str | None = None
    roll: str | None = None
    ready: CheckResult | None = None
    source: str = "not frozen"
    problems: list[str] = field(default_factory=list)
    stack_secret: str | None = None  # the stack's secret of the database (cutover.stacksecret), when it was switched

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "secret": self.secret, "restored_version_id": self.restored_version_id,
                "roll": self.roll, "ready": None if self.ready is None else self.ready.to_dict(),
                "source": self.source, "problems": self.problems, "ok": self.ok, "stack_secret": self.stack_secret}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RollbackOutcome:
        ready = data.get("ready")
        return cls(reason=str(data.get("reason", "")), secret=str(data.get("secret", "")),
                   restored_version_id=data.get("restored_version_id"), roll=data.get("roll"),
                   ready=_check_from(ready) if isinstance(ready, dict) else None, source=str(data.get("source", "")),
                   problems=list(data.get("problems") or []), stack_secret=data.get("stack_secret"))


@dataclass
class CutoverReport:
    old: str  # masked URLs
    new: str
    secret: str
    outcome: str = REFUSED
    reason: str | None = None
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    finished_at: str | None = None
    seconds: float = 0.0
    execution: str | None = None
    window: list[str] = field(default_factory=list)  # DataWindow.lines()
    window_data: dict[str, Any] | None = None
    freeze: dict[str, Any] | None = None  # FreezeState + frozen_seconds + lifted
    switch: dict[str, Any] | None = None
    stack_secret: dict[str, Any] | None = None  # cutover.stacksecret.switch's result: switched, or why not
    roll: str | None = None
    checks: list[CheckResult] = field(default_factory=list)
    sessions: dict[str, Any] | None = None
    old_database: list[str] = field(default_factory=list)
    stragglers: dict[str, int] = field(default_factory=dict)
    rollback: RollbackOutcome | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome == CUT_OVER

    def headline(self) -> str:
        word = {CUT_OVER: "CUT OVER", ROLLED_BACK: "ROLLED BACK", REFUSED: "NOT CUT OVER",
                ROLLBACK_FAILED: "ROLLBACK FAILED"}.get(self.outcome, self.outcome.upper())
        return f"pgrunbook cutover: {word}  {self.old} -> {self.new}"

    def subject(self) -> str:
        return self.headline().split("  ", 1)[0] + f" ({self.new.rsplit('/', 1)[-1]})"

    def text(self) -> str:
        lines = [self.headline()]
        if self.reason:
            lines.append(f"  reason        {self.reason}")
        lines.append(f"  secret        {self.secret}")
        if self.switch:
            lines.append(f"                version {self.switch.get('previous_version_id')} (was current: "
                         f"{self.switch.get('previous')}) -> {self.switch.get('new_version_id')} (written: "
                         f"{self.switch.get('new')})")
        if self.stack_secret:
            lines += _stack_secret_lines(self.stack_secret)
        if self.roll:
            lines.append(f"  roll          {self.roll}")
        for i, line in enumerate(self.window):
            lines.append(f"  {'data window' if i == 0 else '':<12}  {line}")
        if self.freeze:
            lines.append(f"  freeze        {_freeze_line(self.freeze)}")
        if self.checks:
            lines.append("  checks")
            lines += ["  " + line for line in check_table(self.checks)]
        if self.ok:
            for i, line in enumerate(self.old_database):
                lines.append(f"  {'old database' if i == 0 else '':<12}  {line}")
            if self.stragglers:
                parts = ", ".join(f"{_short(t)} {d:+,}" for t, d in self.stragglers.items())
                lines.append(f"  stragglers    rows written to the OLD database after the switch: {parts} "
                             "(not in the new database: copy them by hand)")
            else:
                lines.append("  stragglers    none: no row reached the old database after the switch")
        if self.rollback is not None:
            rb = self.rollback
            lines.append(f"  rollback      {'done' if rb.ok else 'INCOMPLETE: act now'}")
            lines.append(f"    secret      {rb.secret}")
            if rb.stack_secret:
                lines.append(f"    stack secret {rb.stack_secret}")
            if rb.roll:
                lines.append(f"    roll        {rb.roll}")
            if rb.ready is not None:
                lines.append(f"    ready       {rb.ready.actual} ({rb.ready.detail})")
            lines.append(f"    source      {rb.source}")
            lines.append(f"    candidate   kept unchanged: {self.new}")
            lines += [f"    PROBLEM     {p}" for p in rb.problems]
        lines += [f"  warning       {w}" for w in self.warnings]
        if self.execution:
            lines.append(f"  execution     {self.execution}")
        lines.append(f"  took {self.seconds:.1f} s (started {self.started_at})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "ok": self.ok, "reason": self.reason, "old": self.old, "new": self.new,
                "secret": self.secret, "started_at": self.started_at, "finished_at": self.finished_at,
                "seconds": round(self.seconds, 2), "execution": self.execution, "window": self.window,
                "window_data": self.window_data, "freeze": self.freeze, "switch": self.switch,
                "stack_secret": self.stack_secret, "roll": self.roll,
                "checks": [c.to_dict() for c in self.checks], "sessions": self.sessions,
                "old_database": self.old_database, "stragglers": self.stragglers,
                "rollback": None if self.rollback is None else self.rollback.to_dict(), "warnings": self.warnings,
                "text": self.text()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CutoverReport:
        rb = data.get("rollback")
        return cls(old=str(data.get("old", "")), new=str(data.get("new", "")), secret=str(data.get("secret", "")),
                   outcome=str(data.get("outcome", REFUSED)), reason=data.get("reason"),
                   started_at=str(data.get("started_at", "")), finished_at=data.get("finished_at"),
                   seconds=float(data.get("seconds") or 0.0), execution=data.get("execution"),
                   window=list(data.get("window") or []), window_data=data.get("window_data"),
                   freeze=data.get("freeze"), switch=data.get("switch"), stack_secret=data.get("stack_secret"),
                   roll=data.get("roll"),
                   checks=[_check_from(c) for c in data.get("checks") or []], sessions=data.get("sessions"),
                   old_database=list(data.get("old_database") or []), stragglers=dict(data.get("stragglers") or {}),
                   rollback=RollbackOutcome.from_dict(rb) if isinstance(rb, dict) else None,
                   warnings=list(data.get("warnings") or []))

    def finish(self, outcome: str, t0: float) -> CutoverReport:
        import time

        self.outcome = outcome
        self.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.seconds = round(time.monotonic() - t0, 2)
        return self


def _stack_secret_lines(stack: dict[str, Any]) -> list[str]:
    """The stack's own secret of the database: which versions, or why it was not switched."""
    if not stack.get("switched"):
        return [f"  stack secret  NOT switched: {stack.get('why')}"]
    return [f"  stack secret  {stack.get('secret_id')} (database {stack.get('database')}: scheduled backups, "
            "Migrate)",
            f"                version {stack.get('previous_version_id')} (was current: {stack.get('previous')}) -> "
            f"{stack.get('new_version_id')} (written: {stack.get('new')})"]


def _short(table: str) -> str:
    return table[len("public."):] if table.startswith("public.") else table


def _freeze_line(freeze: dict[str, Any]) -> str:
    seconds = freeze.get("frozen_seconds")
    ended = len(freeze.get("ended_sessions") or [])
    state = "lifted: the source is writable again" if freeze.get("lifted") else \
        "kept: the old database stays read-only" if freeze.get("kept") else ""
    text = f"writes frozen from {freeze.get('frozen_at')}"
    if seconds is not None:
        text += f" for {float(seconds):.1f} s"
    if ended:
        text += f"; {ended} session(s) opened before the freeze ended after {freeze.get('grace_seconds', 0):g} s grace"
    return text + (f"; {state}" if state else "")
