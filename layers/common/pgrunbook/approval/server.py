"""The approval function on 127.0.0.1 for `pgrunbook local run`: each HTTP request becomes the
HTTP API v2 event API Gateway would send (same routes, apigw.ROUTES) and goes to the real handler
of functions/approval/app.py; its v2 response goes back as HTTP.

Stands in for API Gateway, including its IAM authorizer on the /cli/ routes: locally those pass as
the local user without a SigV4 check (the server listens on 127.0.0.1 only). Request lines are not
logged (links carry their signature in the query string).
"""

from __future__ import annotations

import base64
import getpass
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..lambda_support import LocalContext
from .apigw import MAX_BODY, match_route

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
LOCAL_ACCOUNT = "123456789012"


def v2_event(method: str, target: str, headers: dict[str, str], body: bytes, source_ip: str) -> dict[str, Any] | None:
    """The HTTP API v2 event for a request, or None when no route matches (API Gateway's 404)."""
    split = urlsplit(target)
    found = match_route(method, split.path)
    if found is None:
        return None
    route, params = found
    lower = {k.lower(): v for k, v in headers.items()}
    query = parse_qs(split.query, keep_blank_values=True)
    now = time.time()
    ctx: dict[str, Any] = {
        "accountId": LOCAL_ACCOUNT, "apiId": "local", "domainName": lower.get("host", "127.0.0.1"),
        "domainPrefix": "local", "requestId": uuid.uuid4().hex, "routeKey": route.key, "stage": "$default",
        "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)), "timeEpoch": int(now * 1000),
        "http": {"method": method, "path": split.path, "protocol": "HTTP/1.1", "sourceIp": source_ip,
                 "userAgent": lower.get("user-agent", "")},
    }
    if route.iam:
        ctx["authorizer"] = {"iam": {"accountId": LOCAL_ACCOUNT, "callerId": "local",
                                     "userArn": f"arn:aws:iam::{LOCAL_ACCOUNT}:user/local-{getpass.getuser()}",
                                     "userId": "local"}}
    return {"version": "2.0", "routeKey": route.key, "rawPath": split.path, "rawQueryString": split.query,
            "headers": lower, "queryStringParameters": {k: ",".join(v) for k, v in query.items()} or None,
            "pathParameters": params or None, "requestContext": ctx,
            "body": base64.b64encode(body).decode() if body else None, "isBase64Encoded": bool(body)}


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request line holds the link's signature

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 2 * MAX_BODY:
            self._send(413, {"Content-Type": "application/json"}, b'{"message":"Request Entity Too Large"}')
            return
        body = self.rfile.read(length) if length else b""
        event = v2_event(self.command, self.path, dict(self.headers.items()), body, self.client_address[0])
        handler = self.server.handler
        if event is None or handler is None:
            self._send(404, {"Content-Type": "application/json"}, b'{"message":"Not Found"}')
            return
        try:
            resp = handler(event, LocalContext(function_name="ApprovalFunction"))
        except Exception:  # Lambda's unhandled error: API Gateway answers 500
            self._send(500, {"Content-Type": "application/json"}, b'{"message":"Internal Server Error"}')
            return
        out = resp.get("body") or ""
        data = base64.b64decode(out) if resp.get("isBase64Encoded") else str(out).encode()
        self._send(int(resp.get("statusCode") or 200), dict(resp.get("headers") or {}), data)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    handler: Handler | None = None


class ApprovalServer:
    """`with ApprovalServer(port) as server: server.serve(handler)`; `server.url` is known at once
    (the port is bound in the constructor; 0 picks a free one)."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self._httpd = _Server((host, port), _RequestHandler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve(self, handler: Handler) -> None:
        self._httpd.handler = handler
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="approval-server", daemon=True)
            self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ApprovalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
