"""Post-cutover proof (runbook step 5): the application works on the new database.

- `GET /ready` polled until it answers 200, or the deadline;
- the configured CloudWatch alarms (error rate, DB connections, ...) stay OK for the soak period,
  while /ready keeps answering 200;
- an optional attachment URL answers 200 (object storage does not depend on the database host);
- from the database side, the strongest evidence that the roll really happened: the application's
  sessions (pg_stat_activity, by user or application_name) appear on the new database and leave
  the old one within a grace period.

Every check is a verify.CheckResult (expected, actual, verdict), so the report reads like the
verification table. No check sleeps a fixed time: each polls until its condition or its deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import aws
from ..dburl import DatabaseUrl
from ..errors import AwsCallFailed, UsageError
from ..verify import CheckResult, HttpCheck, http_check
from . import dbstate
from .roll import aws_reason


def _get(url: str, timeout: float, name: str) -> CheckResult:
    base, _, path = url.partition("://")
    host, slash, rest = path.partition("/")
    return http_check(f"{base}://{host}", HttpCheck("GET", slash + rest or "/", 200), timeout, name=name)


def wait_ready(ready_url: str, *, timeout: float, poll: float, http_timeout: float = 5.0) -> CheckResult:
    """Poll GET ready_url until 200 or `timeout` seconds; the result names the last answer."""
    if not ready_url.startswith(("http://", "https://")):
        raise UsageError(f"--ready-url must be an http(s) URL, not {ready_url!r}")
    t0 = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        result = _get(ready_url, http_timeout, "ready GET " + ready_url)
        if result.ok:
            result.detail = f"healthy after {time.monotonic() - t0:.1f} s ({attempts} attempt(s))"
            return result
        if time.monotonic() - t0 >= timeout:
            result.detail = f"never healthy in {timeout:g} s ({attempts} attempts); last: {result.actual}"
            return result
        time.sleep(poll)


@dataclass
class AlarmStates:
    states: dict[str, str] = field(default_factory=dict)  # name -> OK | ALARM | INSUFFICIENT_DATA
    missing: list[str] = field(default_factory=list)


def alarm_states(names: list[str]) -> AlarmStates:
    from botocore.exceptions import BotoCoreError, ClientError

    out = AlarmStates()
    if not names:
        return out
    try:
        found: dict[str, str] = {}
        for start in range(0, len(names), 100):
            resp = aws.client("cloudwatch").describe_alarms(AlarmNames=names[start:start + 100])
            for alarm in list(resp.get("MetricAlarms") or []) + list(resp.get("CompositeAlarms") or []):
                found[str(alarm["AlarmName"])] = str(alarm.get("StateValue"))
    except (ClientError, BotoCoreError) as exc:
        raise AwsCallFailed(f"cannot read CloudWatch alarms: {aws_reason(exc)}") from None
    out.states = {n: found[n] for n in names if n in found}
    out.missing = [n for n in names if n not in found]
    return out


def soak(alarms: list[str], ready_url: str | None, *, seconds: float, poll: float,
         http_timeout: float = 5.0) -> list[CheckResult]:
    """For `seconds`, every `poll`: no alarm in ALARM and /ready answers 200. Stops at the first problem.
    Returns one check per alarm plus one for /ready during the soak."""
    t0 = time.monotonic()
    rounds = 0
    while True:
        rounds += 1
        states = alarm_states(alarms)
        bad = {n: s for n, s in states.states.items() if s == "ALARM"}
        ready = _get(ready_url, http_timeout, "ready during soak") if ready_url else None
        elapsed = time.monotonic() - t0
        if bad or states.missing or (ready is not None and not ready.ok) or elapsed >= seconds:
            break
        time.sleep(min(poll, max(0.0, seconds - elapsed)))
    checks = []
    for name in alarms:
        if name in states.missing:
            checks.append(CheckResult(f"alarm {name}", "OK during the soak", "no such alarm", False))
        else:
            state = states.states[name]
            checks.append(CheckResult(f"alarm {name}", "OK during the soak", state, state != "ALARM",
                                      f"after {elapsed:.1f} s of {seconds:g} s soak"))
    if ready is not None:
        ready.name = "ready during soak"
        ready.expected = f"200 for {seconds:g} s"
        if ready.ok:
            ready.detail = f"{rounds} check(s) in {elapsed:.1f} s"
        checks.append(ready)
    return checks


def attachment(url: str, http_timeout: float = 10.0) -> CheckResult:
    return _get(url, http_timeout, "attachment GET")


@dataclass
class SessionsProof:
    new: int
    old: int
    seconds: float
    user: str | None
    application_name: str | None

    @property
    def moved(self) -> bool:
        return self.new > 0 and self.old == 0

    def who(self) -> str:
        if self.application_name:
            return f"application_name {self.application_name}"
        return f"user {self.user}" if self.user else "any user"

    def check(self, strict: bool) -> CheckResult:
        actual = f"{self.new} on the new, {self.old} on the old"
        detail = (f"sessions of {self.who()} after {self.seconds:.1f} s"
                  + ("" if self.moved else "; the application still uses the old database or did not reconnect"))
        return CheckResult("sessions moved", "> 0 on the new, 0 on the old", actual, self.moved or not strict, detail)

    def to_dict(self) -> dict[str, Any]:
        return {"new": self.new, "old": self.old, "seconds": round(self.seconds, 2), "user": self.user,
                "application_name": self.application_name, "moved": self.moved}


def sessions_moved(new: DatabaseUrl, old: DatabaseUrl, *, user: str | None, application_name: str | None,
                   grace: float, poll: float,
                   count: Callable[..., int] = dbstate.count_sessions) -> SessionsProof:
    """Poll both databases until the application's sessions are on the new one and gone from the old one,
    or `grace` seconds passed."""
    t0 = time.monotonic()
    while True:
        n = count(new, user=user, application_name=application_name)
        o = count(old, user=user, application_name=application_name)
        elapsed = time.monotonic() - t0
        if (n > 0 and o == 0) or elapsed >= grace:
            return SessionsProof(new=n, old=o, seconds=elapsed, user=user, application_name=application_name)
        time.sleep(poll)
