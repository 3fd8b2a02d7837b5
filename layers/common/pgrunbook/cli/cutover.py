"""`pgrunbook cutover`, `pgrunbook rollback`, `pgrunbook retire`: runbook steps 4 and 5 by hand, with the
same checks and automatic rollback as the state machine. Exit 0 cut over (rolled back / retired) and
proven; 1 failed (for cutover: rolled back or refused, the reason in one line); 2 usage."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..errors import PgrunbookError, UsageError
from ..settings import Settings
from .common import add_json, emit


def _roll_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--secret-id", required=True, metavar="ID", help="the application's DATABASE_URL secret")
    p.add_argument("--secret-key", metavar="KEY", help="the JSON key holding the URL (default: a plain string)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ecs-service", metavar="CLUSTER/SERVICE", help="roll with ECS --force-new-deployment")
    how.add_argument("--webhook", metavar="URL", help="roll with a POST to this URL (other platforms)")
    p.add_argument("--webhook-secret-env", metavar="NAME",
                   help="environment variable holding the webhook key (signs X-Pgrunbook-Signature)")
    p.add_argument("--roll-timeout", type=float, default=600.0, metavar="S",
                   help="seconds for an ECS deployment to complete (default 600)")
    p.add_argument("--poll", type=float, default=2.0, metavar="S", help="seconds between polls (default 2)")


def register(sub: Any) -> None:
    c = sub.add_parser(
        "cutover", help="switch the application's DATABASE_URL to a verified copy, roll, prove, or roll back",
        description="Runbook steps 4 and 5. Checks first (nothing changes until they pass): the candidate answers, "
                    "the secret's current URL names the old database, the roll target and the alarms exist and no "
                    "alarm is in ALARM; states the data window (rows the live source has that the candidate lacks). "
                    "With --freeze the old database is set read-only first (sessions opened before are ended "
                    "after --freeze-grace) and the switch happens only when the candidate's per-table counts equal "
                    "the frozen source's. Then: a new secret version with --new-url (the previous one stays "
                    "AWSPREVIOUS), the service rolled, GET --ready-url until 200, the alarms OK for --soak seconds, "
                    "the attachment URL, and the application's sessions moving from the old database to the new "
                    "one. Any failure rolls back (previous version current again, roll, /ready, freeze lifted) and "
                    "exits 1. On success the old database is set read-only with a retire-after date and writes "
                    "that still reached it are counted.")
    c.add_argument("--new-url", required=True, metavar="URL", help="the candidate, as the application will use it")
    c.add_argument("--old-url", metavar="URL", help="the current database (default: $DATABASE_URL)")
    _roll_args(c)
    c.add_argument("--ready-url", required=True, metavar="URL", help="the application's readiness URL")
    c.add_argument("--ready-timeout", type=float, default=300.0, metavar="S", help="default 300")
    c.add_argument("--alarm", action="append", default=[], metavar="NAME",
                   help="a CloudWatch alarm that must stay OK during the soak (repeatable)")
    c.add_argument("--soak", type=float, default=60.0, metavar="S", help="seconds the alarms must stay OK (60)")
    c.add_argument("--attachment-url", metavar="URL", help="an attachment that must load (200) after the cutover")
    c.add_argument("--freeze", action="store_true", help="set the old database read-only first (closes the window)")
    c.add_argument("--freeze-grace", type=float, default=30.0, metavar="S",
                   help="seconds sessions opened before the freeze may finish before they are ended (30)")
    c.add_argument("--app-user", metavar="NAME", help="whose sessions must move (default: the user in --new-url)")
    c.add_argument("--app-name", metavar="NAME", help="match sessions by application_name instead of user")
    c.add_argument("--sessions-grace", type=float, default=60.0, metavar="S",
                   help="seconds for the sessions to leave the old database (60)")
    c.add_argument("--strict", action="store_true",
                   help="roll back when the application is still connected to the old database after the grace")
    c.add_argument("--manifest", metavar="URI", help="the backup the candidate was restored from (its time)")
    c.add_argument("--retire-after-days", type=int, default=7, metavar="N", help="default 7")
    add_json(c)
    c.set_defaults(handler=cmd_cutover)

    r = sub.add_parser(
        "rollback", help="make the previous DATABASE_URL secret version current again and roll",
        description="Moves AWSCURRENT of the secret back to the AWSPREVIOUS version (or --to-version), rolls the "
                    "service, checks --ready-url, and lifts the read-only setting and retire mark pgrunbook put on "
                    "that database. Refused when the current database holds rows the previous one lacks (writes "
                    "since the cutover would be lost) unless --force.")
    _roll_args(r)
    r.add_argument("--ready-url", metavar="URL", help="the application's readiness URL")
    r.add_argument("--ready-timeout", type=float, default=300.0, metavar="S", help="default 300")
    r.add_argument("--to-version", metavar="VERSION_ID", help="default: the AWSPREVIOUS version")
    r.add_argument("--old-url", metavar="URL",
                   help="the database rolled back to, as an owner (to lift the read-only mark; default: its URL in "
                        "the secret)")
    r.add_argument("--force", action="store_true", help="roll back even though writes since the cutover are lost")
    add_json(r)
    r.set_defaults(handler=cmd_rollback)

    t = sub.add_parser(
        "retire", help="drop an old database pgrunbook marked after a cutover, once its retire-after date passed",
        description="Drops the database only when pgrunbook marked it after a proven cutover, its retire-after date "
                    "has passed, --confirm repeats its name and no session is connected to it.")
    t.add_argument("--database-url", required=True, metavar="URL")
    t.add_argument("--force", action="store_true", help="required")
    t.add_argument("--confirm", metavar="NAME", help="the database's name, typed back")
    add_json(t)
    t.set_defaults(handler=cmd_retire)


def _webhook_key(args: argparse.Namespace, settings: Settings) -> bytes | None:
    name = args.webhook_secret_env
    if not name:
        return None
    if not args.webhook:
        raise UsageError("--webhook-secret-env goes with --webhook")
    value = settings.variable(name)
    if not value:
        raise UsageError(f"--webhook-secret-env {name}: the variable is not set")
    return value.encode()


def _notify(report: Any, settings: Settings) -> None:
    """Send the report to $PGRUNBOOK_TOPIC_ARN when one is set (the same notification as the state machine)."""
    from ..reporting import cutover_notification

    cutover_notification(report.to_dict(), settings)


def _finish(args: argparse.Namespace, report: Any, error: PgrunbookError | None, settings: Settings) -> int:
    _notify(report, settings)
    emit(args, report.to_dict(), report.text)
    if error is not None:
        from ..dburl import mask_secrets

        print(f"pgrunbook: error: {mask_secrets(str(error))}", file=sys.stderr)  # noqa: T201
        return error.exit_code
    return 0


def cmd_cutover(args: argparse.Namespace, settings: Settings) -> int:
    from ..cutover.run import CutoverOptions, ProofOptions, run_cutover

    old = args.old_url or settings.database_url
    if not old:
        raise UsageError("no old database: pass --old-url or set DATABASE_URL")
    if args.app_user and args.app_name:
        raise UsageError("match sessions by --app-user or by --app-name, not both")
    opts = CutoverOptions(
        new_url=args.new_url, old_url=old, secret_id=args.secret_id, secret_key=args.secret_key,
        ecs_service=args.ecs_service, webhook_url=args.webhook, webhook_key=_webhook_key(args, settings),
        roll_timeout=args.roll_timeout, freeze=args.freeze, freeze_grace=args.freeze_grace, manifest=args.manifest,
        retire_after_days=args.retire_after_days,
        proof=ProofOptions(ready_url=args.ready_url, ready_timeout=args.ready_timeout, alarms=tuple(args.alarm),
                           soak_seconds=args.soak, attachment_url=args.attachment_url, strict=args.strict,
                           sessions_grace=args.sessions_grace, app_user=args.app_user, app_name=args.app_name,
                           poll=args.poll))
    return _run(args, settings, lambda: run_cutover(opts))


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from ..cutover.run import ProofOptions, RollbackOptions, run_rollback

    ready = None
    if args.ready_url:
        ready = ProofOptions(ready_url=args.ready_url, ready_timeout=args.ready_timeout, poll=args.poll)
    opts = RollbackOptions(secret_id=args.secret_id, secret_key=args.secret_key, ecs_service=args.ecs_service,
                           webhook_url=args.webhook, webhook_key=_webhook_key(args, settings), ready=ready,
                           to_version=args.to_version, old_url=args.old_url, force=args.force,
                           roll_timeout=args.roll_timeout, poll=args.poll)
    return _run(args, settings, lambda: run_rollback(opts))


def _run(args: argparse.Namespace, settings: Settings, procedure: Callable[[], Any]) -> int:
    """Run a cutover or rollback; a failure that carries its report (rolled back, refused) is reported like a
    success, with the error's one line."""
    from ..cutover.run import report_of

    try:
        report = procedure()
    except PgrunbookError as exc:
        found = report_of(exc)
        if found is None:
            raise
        return _finish(args, found, exc, settings)
    return _finish(args, report, None, settings)


def cmd_retire(args: argparse.Namespace, settings: Settings) -> int:
    from ..cutover.retire import run_retire

    result = run_retire(args.database_url, force=args.force, confirm=args.confirm)
    emit(args, result.to_dict(), result.text)
    return 0
