from __future__ import annotations

import json
import random
from typing import Any
from urllib.parse import quote

import pytest
from psycopg.conninfo import conninfo_to_dict

from pgrunbook.dburl import DatabaseUrl, mask_secrets
from pgrunbook.errors import UsageError
from pgrunbook.settings import Settings


def test_password_is_kept_out_of_conninfo_display_and_repr() -> None:
    url = DatabaseUrl.parse("postgresql://app:p%40ss@db.example.com:6543/prod?sslmode=require")
    assert url.password == "p@ss"
    assert "p@ss" not in url.conninfo() and "p@ss" not in repr(url) and "p@ss" not in str(url)
    assert url.display() == "postgresql://app:***@db.example.com:6543/prod"
    assert "sslmode=require" in url.conninfo()
    assert url.tool_env() == {"PGPASSWORD": "p@ss"}


def test_key_value_conninfo_is_accepted() -> None:
    url = DatabaseUrl.parse("host=/tmp/sock port=5433 dbname=app user=me password=x")
    assert (url.host, url.port, url.dbname, url.password) == ("/tmp/sock", "5433", "app", "x")


@pytest.mark.parametrize("bad", ["", "   ", "postgresql://host"])
def test_bad_urls_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError):
        DatabaseUrl.parse(bad)


def test_mask_secrets_in_free_text() -> None:
    text = "failed: postgresql://u:hunter2@h/db and host=h password=hunter3 dbname=x"
    masked = mask_secrets(text)
    assert "hunter2" not in masked and "hunter3" not in masked
    assert "postgresql://u:***@h/db" in masked


def test_same_target_compares_endpoint_and_database() -> None:
    a = DatabaseUrl.parse("postgresql://u:x@h:5432/db")
    assert a.same_target(DatabaseUrl.parse("postgresql://other:y@h:5432/db"))
    assert not a.same_target(DatabaseUrl.parse("postgresql://u:x@h:5432/db2"))


# --------------------------------------------------------------------------- secrets (RDS-style JSON)
SEED = 20261201
NAME_CHARS = "abcxyz019_-.@:/?#%&=+ 'é\\\"ü"


def _word(rng: random.Random, chars: str = NAME_CHARS, size: int = 8) -> str:
    return "".join(rng.choice(chars) for _ in range(rng.randint(1, size)))


def _kv(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _target(rng: random.Random) -> dict[str, Any]:
    """One connection target: host kind (name, IPv4, IPv6, socket directory, several hosts), port, user,
    password (absent, empty or any text), database (any text)."""
    kind = rng.choice(["name", "ipv4", "ipv6", "socket", "multi"])
    host = {"name": rng.choice(["db.example.com", "pg-1", "localhost"]), "ipv4": "10.1.2.3",
            "ipv6": rng.choice(["::1", "fe80::1"]), "multi": "h1.example.com,h2.example.com",
            "socket": rng.choice(["/run/pg", "/tmp", "/var/run/postgresql", "/srv/pg sockets/x"])}[kind]
    port: str | None = rng.choice([None, "5432", str(rng.randint(1024, 65535))])
    if kind == "multi" and port is not None:
        port = f"{port},{rng.randint(1024, 65535)}"
    password = rng.choice([None, "", _word(rng, NAME_CHARS, 16)])
    return {"kind": kind, "host": host, "port": port, "user": _word(rng), "password": password,
            "dbname": _word(rng)}


def _forms(t: dict[str, Any]) -> list[str]:
    """The target written in every form libpq takes for it."""
    auth = quote(t["user"], safe="") + ("" if t["password"] is None else ":" + quote(t["password"], safe=""))
    db = quote(t["dbname"], safe="")
    forms = []
    if t["kind"] != "socket":
        hosts = t["host"].split(",")
        ports = (t["port"] or "").split(",") if t["port"] else [""] * len(hosts)
        netloc = ",".join(("[" + h + "]" if ":" in h else h) + (":" + p if p else "")
                          for h, p in zip(hosts, ports, strict=True))
        forms.append(f"postgresql://{auth}@{netloc}/{db}")
    else:  # a socket directory: percent-encoded in the authority, or as ?host=
        forms.append(f"postgresql://{auth}@{quote(t['host'], safe='')}{':' + t['port'] if t['port'] else ''}/{db}")
    query = f"host={quote(t['host'], safe='')}" + (f"&port={t['port']}" if t["port"] else "")
    forms.append(f"postgresql://{auth}@/{db}?{query}")
    kv = [f"host={_kv(t['host'])}", f"user={_kv(t['user'])}", f"dbname={_kv(t['dbname'])}"]
    if t["port"]:
        kv.append(f"port={t['port']}")
    if t["password"] is not None:
        kv.append(f"password={_kv(t['password'])}")
    forms.append(" ".join(kv))
    return forms


def _seen(url: DatabaseUrl) -> tuple[Any, ...]:
    return (url.params.get("host"), url.params.get("port"), url.params.get("user"), url.password, url.dbname)


def test_every_connection_form_survives_the_secret_round_trip() -> None:
    """parse -> RDS-style secret (JSON, as Secrets Manager keeps it) -> parse names the same target, for
    every form (URL, socket directory percent-encoded or as ?host=, key=value) of generated targets."""
    rng = random.Random(SEED)
    checked = 0
    for _ in range(150):
        t = _target(rng)
        for form in _forms(t):
            # libpq's URI parser reads `user:@host` as no password; key=value keeps password=''
            password = None if form.startswith("postgresql://") and t["password"] == "" else t["password"]
            # and `h1,h2` in the authority without ports as one empty port per host
            port = "," if t["kind"] == "multi" and not t["port"] and "@/" not in form and "://" in form else t["port"]
            expected = (t["host"], port, t["user"], password, t["dbname"])
            url = DatabaseUrl.parse(form)
            assert _seen(url) == expected, form  # the parser reads every form as libpq does
            secret = json.loads(json.dumps(url.to_secret()))
            assert secret["host"] == t["host"] and secret["username"] == t["user"] and secret["dbname"] == t["dbname"]
            back = DatabaseUrl.from_secret(secret)
            assert _seen(back) == expected, (form, secret)
            assert _seen(DatabaseUrl.parse(back.secret_conninfo())) == expected, form
            as_url = expected if password != "" else (*expected[:3], None, expected[4])  # `u:@h` reads as none
            assert _seen(DatabaseUrl.parse(back.secret_url())) == as_url, (form, back.secret_url())
            assert "password" not in conninfo_to_dict(back.conninfo())  # argv-safe form stays without it
            checked += 1
    assert checked == 450


def test_to_secret_resolves_what_libpq_would_take_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.delenv("PGPORT", raising=False)
    monkeypatch.setenv("PGUSER", "envuser")
    secret = DatabaseUrl.parse("host=/run/pg dbname=app").to_secret(Settings.from_env().libpq)
    assert (secret["host"], secret["username"], "port" in secret) == ("/run/pg", "envuser", False)
    with pytest.raises(UsageError, match="names no host"):
        DatabaseUrl.parse("postgresql:///app").to_secret(Settings.from_env().libpq)  # the built-in socket differs
    monkeypatch.setenv("PGHOST", "/var/run/postgresql")
    monkeypatch.setenv("PGPORT", "5433")
    secret = DatabaseUrl.parse("postgresql:///app").to_secret(Settings.from_env().libpq)
    assert (secret["host"], secret["port"]) == ("/var/run/postgresql", 5433)


def test_from_secret_explicit_values_win_and_bad_ports_are_refused() -> None:
    secret = {"username": "u", "password": "p w", "host": "/run/pg", "port": 5433, "dbname": "app"}
    url = DatabaseUrl.from_secret(secret, host="db.internal", port=6543, dbname="other", sslmode="require")
    assert url.params == {"host": "db.internal", "port": "6543", "user": "u", "dbname": "other", "sslmode": "require"}
    assert url.password == "p w"
    with pytest.raises(UsageError, match="not a port number"):
        DatabaseUrl.from_secret({**secret, "port": "fivefour"})
    with pytest.raises(UsageError, match="'x' is not a port number"):
        DatabaseUrl.parse("host=/tmp port=x dbname=a").to_secret()  # refused when stored, not when used


def test_mask_secrets_covers_the_ssl_key_passphrase() -> None:
    masked = mask_secrets("host=h sslpassword=keypass sslkey=/k.pem password = 'a b'")
    assert "keypass" not in masked and "a b" not in masked and "sslkey=/k.pem" in masked
