"""Talking to the approval endpoint as a person or an operator would.

- `decide_via_link`: what a person does in a browser: GET the link from the notification, read
  the form (its action and CSRF token), POST the decision. Used by `pgrunbook local run
  --approve` (no back door: the same endpoint, the same checks).
- `ApiClient`: the CLI's JSON routes (/cli/...), signed with SigV4 (service execute-api) with the
  caller's AWS credentials; API Gateway's IAM authorizer checks them.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

from ..errors import ApprovalError, ApprovalUnavailable, PgrunbookError, UsageError
from .service import ERRORS


class _FormReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.csrf: str | None = None
        self.state: list[str] = []
        self._in_state = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form" and (a.get("method") or "").lower() == "post":
            self.action = a.get("action")
        elif tag == "input" and a.get("name") == "csrf":
            self.csrf = a.get("value")
        elif tag == "div" and a.get("role") == "status":
            self._in_state = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            self._in_state = False

    def handle_data(self, data: str) -> None:
        if self._in_state and data.strip():
            self.state.append(data.strip())


def _http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
          timeout: float = 30.0) -> tuple[int, str]:
    if urlsplit(url).scheme not in ("http", "https"):
        raise UsageError(f"not an http(s) URL: {url.split('?', 1)[0]}")
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310 - checked above
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        raise ApprovalUnavailable(f"approval endpoint unreachable ({urlsplit(url).netloc}): "
                             f"{getattr(exc, 'reason', exc)}") from None


def _refusal(status: int, message: str) -> PgrunbookError:
    cls = ERRORS.get(status, ApprovalError)
    return cls(message)


def decide_via_link(link: str, *, decision: str, name: str, comment: str | None = None,
                    user_agent: str = "pgrunbook") -> tuple[int, str]:
    """GET the page, then POST the form. Returns (status, page text) of the POST; a refusal of
    either request raises the ApprovalError of its status, with the page's message."""
    status, page = _http("GET", link, headers={"User-Agent": user_agent})
    reader = _FormReader()
    reader.feed(page)
    if status != 200 or not reader.action or not reader.csrf:
        raise _refusal(status if status != 200 else 409, " ".join(reader.state) or f"HTTP {status}")
    form = urlencode({"csrf": reader.csrf, "name": name, "comment": comment or "", "decision": decision}).encode()
    status, page = _http("POST", urljoin(link, reader.action), form,
                         {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": user_agent})
    reader = _FormReader()
    reader.feed(page)
    message = " ".join(reader.state) or f"HTTP {status}"
    if status != 200:
        raise _refusal(status, message)
    return status, message


class ApiClient:
    """JSON calls to /cli/... on `endpoint`, SigV4-signed when AWS credentials are available."""

    def __init__(self, endpoint: str) -> None:
        if urlsplit(endpoint).scheme not in ("http", "https") or not urlsplit(endpoint).netloc:
            raise UsageError(f"--endpoint must be the approval API's URL (http(s)://...), not {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")

    def _signed_headers(self, method: str, url: str, body: bytes) -> dict[str, str]:
        import boto3
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        headers = {"Content-Type": "application/json", "User-Agent": "pgrunbook-cli"}
        session = boto3.session.Session()
        creds = session.get_credentials()
        host = urlsplit(url).hostname or ""
        if creds is None:
            if host in ("127.0.0.1", "localhost"):
                return headers  # the local server stands in for the IAM authorizer
            raise UsageError("no AWS credentials: the approval API's CLI routes are IAM-authorized")
        parts = host.split(".")
        region = parts[2] if len(parts) > 3 and parts[1] == "execute-api" else (session.region_name or "us-east-1")
        request = AWSRequest(method=method, url=url, data=body, headers=headers)
        SigV4Auth(creds.get_frozen_credentials(), "execute-api", region).add_auth(request)
        return dict(request.headers.items())

    def call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.endpoint + path
        body = json.dumps(payload).encode() if payload is not None else b""
        status, text = _http(method, url, body or None, self._signed_headers(method, url, body))
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = {"message": text[:200]}
        if not isinstance(data, dict):
            data = {"message": str(data)[:200]}
        if status >= 300:
            raise _refusal(status, str(data.get("message") or f"HTTP {status}"))
        return data

    def list(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/cli/approvals").get("approvals") or [])

    def show(self, approval_id: str) -> dict[str, Any]:
        return self.call("GET", f"/cli/approvals/{quote(approval_id, safe='')}")

    def decide(self, approval_id: str, decision: str, name: str, comment: str | None) -> dict[str, Any]:
        return self.call("POST", f"/cli/approvals/{quote(approval_id, safe='')}",
                         {"decision": decision, "name": name, "comment": comment})
