"""The alarms can fire, and only when they should: both sides are derived, the metrics from the EMF
lines the report function really prints (on moto, with the environment template.yaml gives it), the
alarms from template.yaml; then the alarms are evaluated (CloudWatch's M-of-N rule with their
TreatMissingData) on the gauges the real code emits hour by hour for a fresh and an abandoned stack."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from moto import mock_aws

from pgrunbook import aws, reporting
from pgrunbook.lambda_support import LocalContext
from pgrunbook.localcloud import handler_path, load_handler
from pgrunbook.settings import Settings
from tests.conftest import AWS_TEST_ENV
from tests.unit.template_support import raw_template

NAMESPACE_OF_CUSTOM = "pgrunbook"


def template_env() -> dict[str, str]:
    env = raw_template()["Globals"]["Function"]["Environment"]["Variables"]
    return {k: v for k, v in env.items() if k.startswith("POWERTOOLS_") and isinstance(v, str)}


@pytest.fixture()
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for key, value in {**AWS_TEST_ENV, **template_env()}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    with mock_aws():
        aws.reset_clients()
        aws.client("s3").create_bucket(Bucket="pgrunbook-alarms")
        # an RDS source (its PITR window is watched) and a self-managed one
        aws.client("rds").create_db_instance(DBInstanceIdentifier="app-prod", Engine="postgres",
                                             DBInstanceClass="db.t4g.micro", AllocatedStorage=20,
                                             MasterUsername="u", MasterUserPassword="p" * 12, BackupRetentionPeriod=3)
        monkeypatch.setenv("PGRUNBOOK_DATABASES", json.dumps([
            {"name": "app", "secret_arn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:a",
             "host": "app-prod.abcdefgh.us-east-1.rds.amazonaws.com"},
            {"name": "billing", "secret_arn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:b",
             "host": "db.internal"}]))
        monkeypatch.setenv("PGRUNBOOK_BACKUP_DEST", "s3://pgrunbook-alarms")
        monkeypatch.setenv("PGRUNBOOK_DRILL_DATABASES", "app")
        yield "pgrunbook-alarms"
    aws.reset_clients()


def emitted(out: str) -> set[tuple[str, str, frozenset[tuple[str, str]]]]:
    """(namespace, metric, dimensions) of every EMF blob printed."""
    found = set()
    for line in out.splitlines():
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for dims in directive["Dimensions"]:
                for metric in directive["Metrics"]:
                    found.add((directive["Namespace"], metric["Name"],
                               frozenset((d, str(blob[d])) for d in dims)))
    return found


def custom_alarms() -> dict[str, dict[str, Any]]:
    out = {}
    for lid, res in raw_template()["Resources"].items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::CloudWatch::Alarm" and props.get("Namespace") == NAMESPACE_OF_CUSTOM:
            out[lid] = props
    return out


def test_every_alarm_watches_a_metric_the_functions_emit(stack: str, capsys: pytest.CaptureFixture[str]) -> None:
    handler = load_handler(handler_path("ReportFunction"))
    handler({"action": "metrics"}, LocalContext())
    metrics = emitted(capsys.readouterr().out)
    assert metrics, "the metrics action printed no EMF"
    alarms = custom_alarms()
    assert {"NoRecentBackupAlarm", "NoRecentVerifiedDrillAlarm", "PitrWindowTooShortAlarm",
            "PitrLagAlarm"} <= set(alarms)
    for lid, props in alarms.items():
        dims = frozenset((d["Name"], str(d["Value"])) for d in props.get("Dimensions", []))
        assert (props["Namespace"], props["MetricName"], dims) in metrics, (lid, sorted(metrics))
    # per database as well (dimension Database only), for dashboards and alarms of your own
    assert ("pgrunbook", "PitrWindowDays", frozenset({("Database", "app")})) in metrics
    assert not any(name == "PitrWindowDays" and ("Database", "billing") in dims for _, name, dims in metrics)


# --------------------------------------------------------------------------- when they fire
def evaluate(alarm: dict[str, Any], points: list[float | None]) -> str:
    """CloudWatch's rule for a static threshold: the last EvaluationPeriods periods, ALARM when at least
    DatapointsToAlarm of them breach; missing periods count per TreatMissingData."""
    n, m = int(alarm["EvaluationPeriods"]), int(alarm.get("DatapointsToAlarm", alarm["EvaluationPeriods"]))
    window = points[-n:]
    ops: dict[str, Callable[[float], bool]] = {"GreaterThanThreshold": lambda v: v > alarm["Threshold"],
           "LessThanThreshold": lambda v: v < alarm["Threshold"]}
    breach = ops[alarm["ComparisonOperator"]]
    missing = alarm.get("TreatMissingData", "missing")
    bad = sum(1 for v in window if (v is None and missing == "breaching") or (v is not None and breach(v)))
    if all(v is None for v in window) and missing in ("missing", "ignore"):
        return "INSUFFICIENT_DATA"
    return "ALARM" if bad >= m else "OK"


def gauge(out: dict[str, Any], metric: str) -> float | None:
    key = {"OldestBackupAgeHours": ("backup_age_hours", max),
           "OldestVerifiedRestoreAgeDays": ("verified_restore_age_days", max)}[metric]
    values = [v[key[0]] for v in out["databases"].values() if key[0] in v]
    return key[1](values) if values else None


def test_a_fresh_stack_is_not_in_alarm_before_its_first_backup_and_an_abandoned_one_is(stack: str) -> None:
    alarms = custom_alarms()
    backup_alarm, drill_alarm = alarms["NoRecentBackupAlarm"], alarms["NoRecentVerifiedDrillAlarm"]
    deployed = datetime(2026, 3, 1, 4, 0, tzinfo=UTC)  # the first scheduled backup is at 03:00 tomorrow
    settings = Settings.from_env()
    backup_points: list[float | None] = [None]  # the hour of the deployment: no metrics run yet
    drill_points: list[float | None] = [None]
    for hour in range(1, 24):
        out = reporting.age_metrics(settings, None, now=deployed + timedelta(hours=hour))
        backup_points.append(gauge(out, "OldestBackupAgeHours"))
        drill_points.append(gauge(out, "OldestVerifiedRestoreAgeDays"))
        assert evaluate(backup_alarm, backup_points) != "ALARM", (hour, backup_points[-3:])
        assert evaluate(drill_alarm, drill_points) != "ALARM", (hour, drill_points[-3:])
    # never backed up at all: alarm once 26 hours have passed since the stack started watching
    for hour in range(24, 31):
        out = reporting.age_metrics(settings, None, now=deployed + timedelta(hours=hour))
        backup_points.append(gauge(out, "OldestBackupAgeHours"))
    assert evaluate(backup_alarm, backup_points) == "ALARM"
    # abandoned: the hourly metrics stop (the function, its schedule or the stack is gone)
    assert evaluate(backup_alarm, [5.0, 6.0, 7.0, None]) == "OK"  # one late run is not an alarm
    assert evaluate(backup_alarm, [5.0, None, None, None]) == "ALARM"
    assert evaluate(drill_alarm, [1.0, None, None, None]) == "ALARM"


def test_pitr_alarms_fire_on_a_short_window_or_a_stalled_archive(stack: str) -> None:
    alarms = custom_alarms()
    out = reporting.age_metrics(Settings.from_env(), None)
    assert out["databases"]["app"]["pitr_window_days"] == 3 and "pitr_window_days" not in out["databases"]["billing"]
    assert evaluate(alarms["PitrWindowTooShortAlarm"], [3.0]) == "ALARM"
    assert evaluate(alarms["PitrWindowTooShortAlarm"], [7.0]) == "OK"
    assert evaluate(alarms["PitrLagAlarm"], [5.0, 5.0]) == "OK"
    assert evaluate(alarms["PitrLagAlarm"], [40.0, 45.0]) == "ALARM"
    assert evaluate(alarms["PitrLagAlarm"], [None, None]) == "OK"  # no RDS source: nothing to watch
