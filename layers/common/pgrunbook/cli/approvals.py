"""Cutover approvals for operators without the e-mail: the same rules and the same store as the
approval page, through the same approval function (its IAM-authorized /cli/ routes, SigV4-signed
with your AWS credentials).

    pgrunbook approvals list [--json]
    pgrunbook approvals show ID [--json]
    pgrunbook approve ID --as NAME [--comment TEXT]
    pgrunbook reject ID --as NAME --reason TEXT

The endpoint is --endpoint or $PGRUNBOOK_APPROVAL_URL (the stack's output ApprovalUrl; for
`pgrunbook local run --approvals serve=PORT`, http://127.0.0.1:PORT). A second decision is
refused (exit 1) and names the first one."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..errors import UsageError
from ..settings import Settings
from .common import add_json, emit

ENDPOINT_ENV = "PGRUNBOOK_APPROVAL_URL"


def _add_endpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", metavar="URL", help=f"the approval API (default ${ENDPOINT_ENV})")


def register(sub: Any) -> None:
    p = sub.add_parser("approvals", help="list or show cutover approval requests", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    asub = p.add_subparsers(dest="approvals_command", metavar="ACTION")
    asub.required = True
    ls = asub.add_parser("list", help="every approval request with its state")
    _add_endpoint(ls)
    add_json(ls)
    ls.set_defaults(handler=_list)
    show = asub.add_parser("show", help="one request: what changes, the backup, the verification, the decision")
    show.add_argument("approval_id", metavar="ID")
    _add_endpoint(show)
    add_json(show)
    show.set_defaults(handler=_show)

    ap = sub.add_parser("approve", help="approve a cutover (the same rules as the approval page)")
    ap.add_argument("approval_id", metavar="ID")
    ap.add_argument("--as", dest="name", required=True, metavar="NAME", help="your name (goes into the audit record)")
    ap.add_argument("--comment", metavar="TEXT")
    _add_endpoint(ap)
    add_json(ap)
    ap.set_defaults(handler=_decide, decision="approve")

    rj = sub.add_parser("reject", help="reject a cutover: the candidate is deleted")
    rj.add_argument("approval_id", metavar="ID")
    rj.add_argument("--as", dest="name", required=True, metavar="NAME", help="your name (goes into the audit record)")
    rj.add_argument("--reason", dest="comment", required=True, metavar="TEXT", help="why (goes into the report)")
    _add_endpoint(rj)
    add_json(rj)
    rj.set_defaults(handler=_decide, decision="reject")


def _client(args: argparse.Namespace, settings: Settings) -> Any:
    from ..approval.client import ApiClient

    endpoint = args.endpoint or settings.approval.base_url
    if not endpoint:
        raise UsageError(f"no approval endpoint: pass --endpoint URL or set {ENDPOINT_ENV} "
                         "(the stack's output ApprovalUrl)")
    return ApiClient(endpoint)


def _when(ts: Any) -> str:
    from ..approval.service import iso

    return iso(float(ts)) if ts else "-"


def _list(args: argparse.Namespace, settings: Settings) -> int:
    approvals = _client(args, settings).list()

    def text() -> str:
        if not approvals:
            return "no approval requests"
        rows = [("ID", "DATABASE", "STATE", "REQUESTED", "EXPIRES", "DECISION")]
        for a in approvals:
            d = a.get("decision") or {}
            state = a.get("status", "")
            if state == "pending" and float(a.get("expires_at") or 0) <= time.time():
                state = "expired"
            rows.append((a.get("approval_id", ""), a.get("database", ""), state, a.get("requested_at", ""),
                         _when(a.get("expires_at")), f"{d.get('decision')} by {d.get('approver')}" if d else "-"))
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)

    emit(args, {"approvals": approvals}, text)
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    data = _client(args, settings).show(args.approval_id)
    emit(args, data, lambda: str(data.get("text") or data.get("message")))
    return 0


def _decide(args: argparse.Namespace, settings: Settings) -> int:
    data = _client(args, settings).decide(args.approval_id, args.decision, args.name, args.comment)
    emit(args, data, lambda: str(data.get("message")))
    return 0
