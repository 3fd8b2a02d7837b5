"""The application's DATABASE_URL in Secrets Manager: read, switch, switch back; and the same for the
stack's own secret of the database (StackSecretSlot: the RDS-style secret of its PGRUNBOOK_DATABASES
entry, which the Backup and Migrate functions read).

The secret holds the URL as a plain string, or as one key of a JSON object (`key`); a switch writes
a NEW VERSION (PutSecretValue, staged AWSCURRENT), so the previous one becomes AWSPREVIOUS and stays;
a rollback moves AWSCURRENT back to it (UpdateSecretVersionStage). Nothing is ever deleted.

Invariants:
- Reads always name VersionStage=AWSCURRENT (moto keeps a stale default version after a stage move;
  AWS does not, and naming the stage is right on both).
- The new version's id is the ClientRequestToken the caller passes (derived from the execution), so a
  retried switch writes nothing twice and a rollback can recognise the version this cutover wrote.
- `restore` moves AWSCURRENT back only while the current version is the one this cutover wrote: a
  secret someone changed since is not overwritten (the caller reports it).
- The secret's value is never logged or put in an error: URLs are shown masked.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from .. import aws
from ..dburl import DatabaseUrl, mask_secrets
from ..errors import CutoverError, SecretUnreadable, SecretUpdateDenied, UsageError

_DENIED = ("AccessDeniedException", "AccessDenied", "403", "UnauthorizedOperation")
_TRANSIENT = ("ThrottlingException", "InternalServiceError", "LimitExceededException")


def version_token(*parts: str) -> str:
    """A stable ClientRequestToken (a UUID) for one cutover or rollback: same parts, same token."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "pgrunbook:" + "/".join(parts)))


@dataclass(frozen=True)
class SecretVersion:
    version_id: str
    url: str  # the DATABASE_URL in it (with its password: never show it)
    raw: str  # the whole SecretString

    @property
    def display(self) -> str:
        try:
            return DatabaseUrl.parse(self.url).display()
        except UsageError:
            return mask_secrets(self.url)


@dataclass(frozen=True)
class Switch:
    secret_id: str
    previous_version_id: str
    new_version_id: str
    previous_display: str
    new_display: str

    def to_dict(self) -> dict[str, Any]:
        return {"secret_id": self.secret_id, "previous_version_id": self.previous_version_id,
                "new_version_id": self.new_version_id, "previous": self.previous_display, "new": self.new_display}


def _code(exc: Any) -> str:
    from .roll import aws_reason

    return aws_reason(exc)


def _denied(exc: Any) -> bool:
    return _code(exc).split(":")[0] in _DENIED or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403


class SecretSlot:
    """One DATABASE_URL in one secret (`key`: the JSON key holding it, None for a plain string)."""

    def __init__(self, secret_id: str, key: str | None = None) -> None:
        if not secret_id:
            raise UsageError("a secret id is needed (--secret-id)")
        self.secret_id = secret_id
        self.key = key or None

    @property
    def client(self) -> Any:
        return aws.client("secretsmanager")

    def label(self) -> str:
        return self.secret_id + (f" (key {self.key})" if self.key else "")

    def _extract(self, raw: str) -> str:
        if self.key is None:
            if raw.lstrip().startswith("{"):
                raise UsageError(f"secret {self.secret_id} holds a JSON object: name the key of the URL "
                                 "(--secret-key)")
            return raw.strip()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            raise UsageError(f"secret {self.secret_id} is not a JSON object: drop --secret-key") from None
        if not isinstance(data, dict) or not isinstance(data.get(self.key), str):
            raise SecretUnreadable(f"secret {self.secret_id} has no string key {self.key!r}")
        return str(data[self.key])

    def _replace(self, raw: str, url: str) -> str:
        if self.key is None:
            return url
        data = json.loads(raw)
        data[self.key] = url
        return json.dumps(data)

    def read(self, stage: str = "AWSCURRENT", version_id: str | None = None) -> SecretVersion:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs: dict[str, Any] = {"SecretId": self.secret_id}
        if version_id:
            kwargs["VersionId"] = version_id
        else:
            kwargs["VersionStage"] = stage
        try:
            resp = self.client.get_secret_value(**kwargs)
        except ClientError as exc:
            raise SecretUnreadable(f"cannot read secret {self.secret_id} ({version_id or stage}): "
                                   f"{_code(exc)}") from None
        except BotoCoreError as exc:
            raise SecretUnreadable(f"Secrets Manager unreachable: {_code(exc)}") from None
        raw = str(resp.get("SecretString") or "")
        return SecretVersion(version_id=str(resp["VersionId"]), url=self._extract(raw), raw=raw)

    def stages(self) -> dict[str, list[str]]:
        """version id -> stage labels."""
        return dict(self.client.describe_secret(SecretId=self.secret_id).get("VersionIdsToStages") or {})

    def switch(self, new_url: str, token: str) -> Switch:
        """Write `new_url` as a new AWSCURRENT version (id = token); the current one becomes AWSPREVIOUS.
        A retry with the same token after a success writes nothing and returns the same versions."""
        from botocore.exceptions import BotoCoreError, ClientError

        current = self.read()
        if current.version_id == token:  # already switched by this cutover (a retried step)
            previous = self._previous_of(token)
            return Switch(self.secret_id, previous.version_id if previous else "", token,
                          previous.display if previous else "-", current.display)
        try:
            resp = self.client.put_secret_value(SecretId=self.secret_id, ClientRequestToken=token,
                                                SecretString=self._replace(current.raw, new_url))
        except ClientError as exc:
            if _denied(exc):
                raise SecretUpdateDenied(f"Secrets Manager denied writing secret {self.secret_id}: {_code(exc)} "
                                         "(nothing was switched)") from None
            raise CutoverError(f"cannot write secret {self.secret_id}: {_code(exc)} (nothing was switched)") from None
        except BotoCoreError as exc:
            raise CutoverError(f"Secrets Manager unreachable: {_code(exc)} (nothing was switched)") from None
        written = self.read()
        if written.version_id != str(resp["VersionId"]):
            raise CutoverError(f"secret {self.secret_id}: the version just written is not AWSCURRENT")
        return Switch(self.secret_id, current.version_id, written.version_id, current.display, written.display)

    def _previous_of(self, version_id: str) -> SecretVersion | None:
        for vid, stages in self.stages().items():
            if vid != version_id and "AWSPREVIOUS" in stages:
                return self.read(version_id=vid)
        return None

    def restore(self, previous_version_id: str, expected_current: str | None) -> SecretVersion:
        """Make `previous_version_id` AWSCURRENT again. With `expected_current`, only while that version is
        current (someone else's change is never overwritten). Returns the version now current."""
        from botocore.exceptions import BotoCoreError, ClientError

        current = self.read()
        if current.version_id == previous_version_id:
            return current  # already back (a retried rollback)
        if expected_current is not None and current.version_id != expected_current:
            raise CutoverError(f"secret {self.secret_id} was changed since the cutover (current version "
                               f"{current.version_id}, not {expected_current}): not moved back; check it by hand")
        try:
            self.client.update_secret_version_stage(SecretId=self.secret_id, VersionStage="AWSCURRENT",
                                                    MoveToVersionId=previous_version_id,
                                                    RemoveFromVersionId=current.version_id)
        except ClientError as exc:
            if _denied(exc):
                raise SecretUpdateDenied(f"Secrets Manager denied moving AWSCURRENT of {self.secret_id} back to "
                                         f"{previous_version_id}: {_code(exc)}") from None
            raise CutoverError(f"cannot move AWSCURRENT of {self.secret_id}: {_code(exc)}") from None
        except BotoCoreError as exc:
            raise CutoverError(f"Secrets Manager unreachable: {_code(exc)}") from None
        return self.read()

    def previous(self) -> SecretVersion:
        """The AWSPREVIOUS version (what `pgrunbook rollback` makes current again)."""
        return self.read(stage="AWSPREVIOUS")


class StackSecretSlot(SecretSlot):
    """The stack's secret of one configured database: an RDS-style JSON object (DatabaseUrl.to_secret's
    shape). Its "URL" is the target the stack reaches with it: the secret read as the functions read it
    (the entry's host/port/dbname win over the secret's, `entry`: settings.DatabaseConfig); a switch writes
    the new target's username, password, host, port and dbname and keeps every other key."""

    _TARGET_KEYS = ("username", "user", "password", "host", "port", "dbname")

    def __init__(self, secret_id: str, entry: Any) -> None:
        super().__init__(secret_id, None)
        self.entry = entry

    def label(self) -> str:
        return f"{self.secret_id} (database {self.entry.name})"

    def _object(self, raw: str) -> dict[str, Any]:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise SecretUnreadable(f"secret {self.secret_id} is not a JSON object with username/password")
        return data

    def _extract(self, raw: str) -> str:
        e = self.entry
        try:
            return DatabaseUrl.from_secret(self._object(raw), host=e.host, port=e.port, dbname=e.database,
                                           sslmode=e.sslmode).secret_url()
        except UsageError as exc:
            raise SecretUnreadable(f"secret {self.secret_id}: {exc}") from None

    def _replace(self, raw: str, url: str) -> str:
        data = {k: v for k, v in self._object(raw).items() if k not in self._TARGET_KEYS}
        data.update(DatabaseUrl.parse(url).to_secret())
        return json.dumps(data)


def rebase_url(app_url: str, *, host: str | None, port: int | None, dbname: str) -> str:
    """The application's URL (its own user, password and options) pointed at another database."""
    from urllib.parse import quote, urlsplit, urlunsplit

    text = app_url.strip()
    if text.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(text)
        netloc = parts.netloc
        auth, at, hostport = netloc.rpartition("@")
        old_host = parts.hostname or ""
        new_host = host or old_host
        new_port = port or parts.port
        if ":" in new_host and not new_host.startswith("["):
            new_host = f"[{new_host}]"
        hostport = new_host + (f":{new_port}" if new_port else "")
        return urlunsplit((parts.scheme, f"{auth}{at}{hostport}", "/" + quote(dbname, safe=""), parts.query,
                           parts.fragment))
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = {k: v for k, v in conninfo_to_dict(text).items() if v is not None}
    params["dbname"] = dbname
    if host:
        params["host"] = host
    if port:
        params["port"] = str(port)
    return make_conninfo("", **params)
