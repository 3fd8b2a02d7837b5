"""Database URLs: parse once, mask for display, hand the password to tools via environment.

libpq accepts both URIs (postgresql://user:pw@host/db?sslmode=require) and key=value strings;
psycopg's conninfo helpers parse both the way libpq does. Every form libpq takes is accepted
(a unix-socket directory as host: `postgresql://u@/app?host=/run/pg`, `postgresql://u@%2Frun%2Fpg/app`,
`host=/run/pg user=u dbname=app`; several hosts: `postgresql://u@h1,h2/app`).

Secrets: the stack keeps a database's credentials in an RDS-style secret
({"username", "password", "host", "port", "dbname"}). `to_secret` and `from_secret` are the ONE
writer and reader of that shape: host is whatever libpq takes as host (a name, an address, a
socket directory, a comma list), port an int (a string for a comma list of ports). Invariant:
`from_secret(to_secret(u))` names the same connection target as `u` (host, port, user, password,
database), whatever the form `u` was written in.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import UsageError
from .settings import LibpqDefaults

_URI_PASSWORD = re.compile(r"(?P<pre>postgres(?:ql)?://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<post>@)")
_PLAIN_HOST = re.compile(r"[A-Za-z0-9._-]+")
_PORTS = re.compile(r"\d*(,\d*)*")  # one port, or one per host (empty: the default)
_KV_PASSWORD = re.compile(r"(?P<pre>\b(?:ssl)?password\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)")


def mask_secrets(text: str) -> str:
    """Replace every password in URLs or key=value conninfo (password=, sslpassword=) found in text
    with '***'."""
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

    def secret_conninfo(self) -> str:
        """libpq conninfo WITH the password: only for a process's own connection string (never argv,
        logs or messages)."""
        return make_conninfo("", **self.connect_kwargs())

    def secret_url(self) -> str:
        """A postgresql:// URL WITH the password (same rules as secret_conninfo): every value
        percent-encoded; the host in the authority when it is a plain name or address, otherwise
        (a socket directory, several hosts, an IPv6 address) as ?host=."""
        params = dict(self.params)
        user, dbname = params.pop("user", None), params.pop("dbname")
        auth = ""
        if user is not None or self.password is not None:
            auth = quote(user or "", safe="") + (f":{quote(self.password, safe='')}" if self.password else "") + "@"
        host, port = params.get("host"), params.get("port")
        netloc = ""
        if host and _PLAIN_HOST.fullmatch(host) and (port is None or port.isdigit()):
            netloc = host + (f":{port}" if port else "")
            params.pop("host")
            params.pop("port", None)
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        return f"postgresql://{auth}{netloc}/{quote(dbname, safe='')}" + (f"?{query}" if query else "")

    def to_secret(self, defaults: LibpqDefaults | None = None) -> dict[str, Any]:
        """This target as an RDS-style secret. What libpq would take from the environment or the
        OS (`defaults`: Settings.libpq, i.e. PGHOST, PGPORT, PGUSER; then the login name) is resolved
        here, so the secret names the same target wherever it is read; a URL without any host (libpq's
        compiled-in socket directory, which differs between builds) is refused."""
        defaults = defaults or LibpqDefaults()
        host = self.params.get("host") or self.params.get("hostaddr") or defaults.host
        if not host:
            raise UsageError("the URL names no host (libpq would use its built-in socket directory, which "
                             "differs between builds): give a server or a socket directory, e.g. "
                             "?host=/var/run/postgresql")
        user = self.params.get("user") or defaults.user or getpass.getuser()
        port = self.params.get("port") or defaults.port
        if port is not None and not _PORTS.fullmatch(port):
            raise UsageError(f"port {port!r} is not a port number")
        secret: dict[str, Any] = {"engine": "postgres", "username": user, "password": self.password,
                                  "host": host, "dbname": self.dbname}
        if port is not None:
            secret["port"] = int(port) if port.isdigit() else port  # an int, as RDS writes it
        return secret

    @classmethod
    def from_secret(cls, secret: Mapping[str, Any], *, host: str | None = None, port: int | str | None = None,
                    dbname: str | None = None, sslmode: str | None = None) -> DatabaseUrl:
        """The target an RDS-style secret names; explicit values win over the secret's. The caller
        checks that a host and a user are known (their absence means a misconfigured stack)."""
        params: dict[str, str] = {}
        host = host or secret.get("host")
        port = port or secret.get("port")
        user = secret.get("username") or secret.get("user")
        dbname = dbname or secret.get("dbname")
        for key, value in (("host", host), ("port", port), ("user", user), ("dbname", dbname),
                           ("sslmode", sslmode)):
            if value not in (None, ""):
                params[key] = str(value)
        if "port" in params and not _PORTS.fullmatch(params["port"]):
            raise UsageError(f"port {params['port']!r} is not a port number")
        if "dbname" not in params:
            raise UsageError("no database name (dbname) given")
        password = secret.get("password")
        return cls(params=params, password=None if password is None else str(password))

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
