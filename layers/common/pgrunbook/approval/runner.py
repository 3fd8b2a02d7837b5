"""`pgrunbook local run --approvals serve[=PORT]` and `--approve`: the real approval function on
127.0.0.1 (server.py) for a local cloud. Each approval request's link is printed on stderr as
`approval link: <url>`; with --approve, a scripted person opens it and presses Approve
(client.decide_via_link: GET, then POST with the page's CSRF token; the same endpoint and checks
as a browser, no other way in)."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from .client import decide_via_link
from .config import URL_ENV
from .server import ApprovalServer
from .service import ATTRIBUTE

AUTO_NAME = "pgrunbook local --approve"


class LocalApprovals:
    def __init__(self, port: int = 0, *, auto_approve: bool = False, out: TextIO | None = None) -> None:
        self.server = ApprovalServer(port)
        self.auto_approve = auto_approve
        self.out = out
        self.seen: set[str] = set()
        self.decided: list[dict[str, Any]] = []

    @property
    def env(self) -> dict[str, str]:
        """What the report function must see to build links to this server."""
        return {URL_ENV: self.server.url}

    def attach(self, cloud: Any) -> None:
        assert cloud.adapter is not None
        self.server.serve(cloud.adapter.handlers["ApprovalFunction"])

    def poll(self, cloud: Any) -> bool:
        """Print each new approval link (and approve it with --approve). Returns False: keep waiting."""
        for _subject, _message, attrs in cloud.published():
            raw = attrs.get(ATTRIBUTE)
            if not raw:
                continue
            facts = json.loads(raw)
            if facts["approval_id"] in self.seen:
                continue
            self.seen.add(facts["approval_id"])
            out = self.out or sys.stderr
            out.write(f"approval link: {facts['approve_url']}\n")
            out.flush()
            if self.auto_approve:
                _status, message = decide_via_link(facts["approve_url"], decision="approve", name=AUTO_NAME,
                                                   comment="approved automatically (local run)",
                                                   user_agent="pgrunbook-local")
                self.decided.append({"approval_id": facts["approval_id"], "message": message})
        return False

    def close(self) -> None:
        self.server.close()
