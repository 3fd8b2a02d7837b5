"""HMAC-SHA256 links and CSRF tokens.

- link signature: HMAC(key, "pgrunbook-approval-link", id, exp), base64url without padding;
- CSRF token: "<issued>.<HMAC(key, 'pgrunbook-approval-csrf', id, exp, issued)>": bound to one
  approval (and its link), useless for any other;
- the key is the Secrets Manager secret's AWSCURRENT value; AWSPREVIOUS still verifies, so a
  rotation does not break links already mailed. Comparisons are constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import threading
import time
from collections.abc import Sequence

from ..lambda_support import ConfigError, TransientError

MIN_KEY_BYTES = 32
CACHE_SECONDS = 300.0
_EXP = re.compile(r"[0-9]{1,12}")
_SIG = re.compile(r"[A-Za-z0-9_-]{43}")
_ISSUED = re.compile(r"[0-9]{1,12}")


def _mac(key: bytes, *parts: str) -> str:
    msg = "\x00".join(parts).encode()
    return base64.urlsafe_b64encode(hmac.new(key, msg, hashlib.sha256).digest()).rstrip(b"=").decode()


class Signer:
    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys or any(len(k) < MIN_KEY_BYTES for k in keys):
            raise ConfigError(f"the approval signing key must be at least {MIN_KEY_BYTES} bytes")
        self.keys = tuple(keys)

    def link_signature(self, approval_id: str, exp: int) -> str:
        return _mac(self.keys[0], "pgrunbook-approval-link", approval_id, str(exp))

    def verify_link(self, approval_id: str, exp: str | None, sig: str | None) -> int | None:
        """The link's expiry (unix seconds) when id+exp carry a valid signature, else None."""
        if not exp or not sig or not _EXP.fullmatch(exp) or not _SIG.fullmatch(sig):
            return None
        for key in self.keys:
            if hmac.compare_digest(_mac(key, "pgrunbook-approval-link", approval_id, exp), sig):
                return int(exp)
        return None

    def csrf_token(self, approval_id: str, exp: int, issued: int) -> str:
        return f"{issued}.{_mac(self.keys[0], 'pgrunbook-approval-csrf', approval_id, str(exp), str(issued))}"

    def verify_csrf(self, approval_id: str, exp: int, token: str | None, now: float) -> bool:
        if not token:
            return False
        issued, _, mac = token.partition(".")
        if not _ISSUED.fullmatch(issued) or not _SIG.fullmatch(mac) or int(issued) > now + 300:
            return False
        return any(hmac.compare_digest(_mac(k, "pgrunbook-approval-csrf", approval_id, str(exp), issued), mac)
                   for k in self.keys)


_cache: dict[str, tuple[float, Signer]] = {}
_cache_lock = threading.Lock()


def signer_from_secret(secret_arn: str) -> Signer:
    """The signer for the key in `secret_arn` (cached for a few minutes per Lambda container)."""
    with _cache_lock:
        hit = _cache.get(secret_arn)
        if hit and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
    signer = Signer(_read_keys(secret_arn))
    with _cache_lock:
        _cache[secret_arn] = (time.monotonic(), signer)
    return signer


def _read_keys(secret_arn: str) -> list[bytes]:
    from botocore.exceptions import BotoCoreError, ClientError

    from .. import aws

    keys: list[bytes] = []
    for stage in ("AWSCURRENT", "AWSPREVIOUS"):
        try:
            value = aws.client("secretsmanager").get_secret_value(SecretId=secret_arn, VersionStage=stage)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if stage == "AWSPREVIOUS" and code == "ResourceNotFoundException":
                break  # never rotated
            if code in ("ThrottlingException", "InternalServiceError"):
                raise TransientError(f"Secrets Manager: {code}") from None
            raise ConfigError(f"cannot read the approval signing key ({secret_arn}): {code}") from None
        except BotoCoreError as exc:
            raise TransientError(f"Secrets Manager unreachable: {type(exc).__name__}") from None
        text = value.get("SecretString")
        if text:
            keys.append(text.encode())
    return keys
