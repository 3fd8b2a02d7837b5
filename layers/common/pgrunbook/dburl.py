"""Database URLs: parse once, mask for display, hand the password to tools via environment.

libpq accepts both URIs (postgresql://user:pw@host/db?sslmode=require) and key=value strings;
psycopg's conninfo helpers parse both the way libpq does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import UsageError

_URI_PASSWORD = re.compile(r"(?P<pre>postgres(?:ql)?://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<post>@)")
_KV_PASSWORD = re.compile(r"(?P<pre>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)")


def mask_secrets(text: str) -> str:
    """Replace every password in URLs or key=value conninfo found in text with '***'."""
    text = _URI_PASSWORD.sub(lambda m: f"{m['pre']}***{m['post']}", text)
    return _KV_PASSWORD.sub(lambda m: f"{m['pre']}***", text)


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed connection target. `password` never appears in str(), repr() or conninfo."""

    params: dict[str, str]
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str | None, *, what: str = "database URL") -> DatabaseUrl:
        if not url or not url.strip():
            raise UsageError(f"no {what} given (pass it as an option or set the environment variable)")
        try:
            params = {k: str(v) for k, v in conninfo_to_dict(url.strip()).items() if v is not None}
        except Exception as exc:  # psycopg raises ProgrammingError with the raw text
            raise UsageError(f"invalid {what}: {mask_secrets(str(exc))}") from None
        password = params.pop("password", None)
        if "dbname" not in params:
            raise UsageError(f"the {what} names no database: {mask_secrets(url)}")
        return cls(params=params, password=password)

    @property
    def dbname(self) -> str:
        return self.params["dbname"]

    @property
    def host(self) -> str:
        return self.params.get("host", "localhost")

    @property
    def port(self) -> str:
        return self.params.get("port", "5432")

    @property
    def user(self) -> str | None:
        return self.params.get("user")

    def with_dbname(self, dbname: str) -> DatabaseUrl:
        return DatabaseUrl(params={**self.params, "dbname": dbname}, password=self.password)

    def conninfo(self) -> str:
        """libpq conninfo WITHOUT the password: safe for argv (the password goes in env)."""
        return make_conninfo("", **self.params)

    def connect_kwargs(self) -> dict[str, str]:
        kwargs = dict(self.params)
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs

    def tool_env(self) -> dict[str, str]:
        """Environment for pg tools: the password via PGPASSWORD, never argv."""
        return {"PGPASSWORD": self.password} if self.password is not None else {}

    def display(self) -> str:
        """postgresql://user:***@host:port/db: for logs, manifests and messages."""
        user = self.user or ""
        auth = f"{user}:***@" if self.password is not None else (f"{user}@" if user else "")
        host = self.host
        if host.startswith("/"):
            return f"postgresql://{auth}/{self.dbname}?host={host}&port={self.port}"
        return f"postgresql://{auth}{host}:{self.port}/{self.dbname}"

    def __str__(self) -> str:
        return self.display()

    def same_target(self, other: DatabaseUrl) -> bool:
        """True when both URLs name the same database on the same server endpoint."""
        return (self.host, self.port, self.dbname) == (other.host, other.port, other.dbname)
