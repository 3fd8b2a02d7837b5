"""Cutover approval an operator can trust.

The Restore state machine stops at `RequestApproval` (`.waitForTaskToken`). The report function
(`request` in service.py) keeps the task token server-side and notifies with a signed link; the
approval function (functions/approval/app.py, behind an API Gateway HTTP API) shows the page and
takes the decision; the CLI (`pgrunbook approvals|approve|reject`) goes through the same function.

Modules: signing (HMAC links and CSRF tokens), store (DynamoDB records, KMS-sealed task tokens),
service (the decide logic), page (HTML and text), apigw (HTTP API v2 events), server (the same
events on 127.0.0.1 for `pgrunbook local run`, and a GET-then-POST client).

Invariants:
- GET never decides: only a POST carrying a CSRF token bound to this approval does (mail scanners
  prefetch links). A link is `/approvals/<id>?exp=<unix>&sig=<HMAC-SHA256(id, exp)>` with a key
  from a Secrets Manager secret; links are only built where the task token arrives (report).
- One decision per approval, enforced by a DynamoDB conditional write (the claim) before the one
  `SendTaskSuccess`; a lost claim is a 409 naming the first decision. A delivery that could not be
  attempted releases the claim (nothing decided); one refused by Step Functions (TaskTimedOut,
  InvalidToken, execution stopped) records "no longer waiting" (410).
- The raw task token exists only sealed (KMS, encryption context = the approval id) in the table
  and in memory while `SendTaskSuccess` is called: it is never in a link, page, notification,
  response or log line. Reading views never fetch it.
- Every refusal is a page (or, for the CLI, a JSON body) with a specific status: 403 forged or
  tampered link, missing or wrong CSRF token; 404 unknown approval; 410 expired link or execution no
  longer waiting; 409 second decision; 400 bad form input; 503 AWS unreachable (nothing decided).
"""

from __future__ import annotations
