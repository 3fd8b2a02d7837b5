"""Manifest versions, names for people, `pg_restore --list` parsing and server identity, without a server."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from pgrunbook.archive import (
    missing_table_data,
    parse_toc,
    table_data_count,
    toc_extensions,
    toc_owners,
    toc_system_acls,
)
from pgrunbook.dbinfo import DatabaseIdentity, TableRef, display_name, ident, same_database
from pgrunbook.errors import PgrunbookError
from pgrunbook.manifest import MANIFEST_VERSION, Manifest, contents
from tests.fixtures.manifest_versions import as_v1

SHA = "0" * 64

# Any name Postgres accepts: no NUL, 1..63 bytes of UTF-8 (names are generated with the dangerous
# characters over-represented).
_CHARS = st.sampled_from([*".\"\\ \n\r\t$_-'`/;,", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u202e", "\ufeff",
                          "é", "ß", "日", "🙂", "a", "Z", "0", "x", "U", "&"])
NAMES = st.text(alphabet=st.one_of(_CHARS, st.characters(exclude_characters="\x00")), min_size=1, max_size=20) \
    .filter(lambda n: len(n.encode()) <= 63)


def v2(tables: list[dict[str, Any]], sequences: list[dict[str, Any]] | None = None, **source: Any) -> dict[str, Any]:
    return {
        "manifest_version": 2, "kind": "manual",
        "archive": {"name": "a.dump", "format": "custom", "compression": "zstd:1", "bytes": 1, "sha256": SHA},
        "source": {"url": "postgresql://u@h:5432/db", "host": "h", "port": "5432", "database": "db",
                   "server_version": "18.6", "server_version_num": 180006, "system_identifier": "7",
                   "server_port": 5432, "server_started_at": "1.5", "extensions": {}, "roles": ["o"],
                   "owners": ["o"], **source},
        "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:01+00:00", "seconds": 1,
        "tools": {}, "tables": tables, "totals": {"tables": len(tables), "rows": sum(t["rows"] for t in tables)},
        "sequences": sequences or [], "prisma": None,
    }


TOC = """;
; Archive created at 2026-12-01 14:05:46 UTC
;
; Selected TOC Entries:
;
8; 2615 16388 SCHEMA - s postgres
7; 2615 16387 SCHEMA - s.x postgres
2; 3079 16405 EXTENSION - citext \n2681; 0 0 COMMENT - EXTENSION citext \n225; 1259 16395 TABLE public new line postgres
224; 1259 16392 TABLE s x.y postgres
227; 1259 16400 TABLE sp ace t b own er
2672; 0 16395 TABLE DATA public new line postgres
2671; 0 16392 TABLE DATA s x.y postgres
2670; 0 16389 TABLE DATA s.x y postgres
2674; 0 16400 TABLE DATA sp ace t b own er
2683; 0 0 SEQUENCE SET sp ace t b_id_seq own er
"""
TABLES = [{"schema": "public", "name": "new\nline", "oid": 16395, "rows": 1},
          {"schema": "s", "name": "x.y", "oid": 16392, "rows": 1},
          {"schema": "s.x", "name": "y", "oid": 16389, "rows": 2},
          {"schema": "sp ace", "name": "t b", "oid": 16400, "rows": 0}]


def test_current_version_is_2_and_the_writer_helper_validates() -> None:
    assert MANIFEST_VERSION == 2
    parts = contents({TableRef("s.x", "y", 16389): 2, TableRef("s", "x.y", 16392): 1},
                     {("s", "q\"\n"): 3, ("s", "a"): None})
    data = v2(parts["tables"], parts["sequences"])
    manifest = Manifest.validated(data)
    # both tables of the colliding pair are there, sorted by schema then name, each with its own count
    assert [(t["schema"], t["name"]) for t in data["tables"]] == [("s", "x.y"), ("s.x", "y")]
    assert manifest.tables == {'s."x.y"': 1, '"s.x".y': 2}
    assert manifest.sequences == {"s.a": None, 's.U&"q""\\000A"': 3}
    assert parts["totals"] == {"tables": 2, "rows": 3}


def test_v1_manifest_still_reads_with_its_own_keys() -> None:
    data = as_v1(v2(TABLES, [{"schema": "sp ace", "name": "t b_id_seq", "last_value": 4}]))
    manifest = Manifest.validated(data)
    assert manifest.version == 1
    assert manifest.tables == {"public.new\nline": 1, "s.x.y": 2, "sp ace.t b": 0}  # v1 itself lost "s.x.y" = 1
    assert manifest.key("s.x", "y") == "s.x.y" and manifest.table_oids is None and manifest.owners is None
    assert manifest.sequences == {"sp ace.t b_id_seq": 4}


@pytest.mark.parametrize("change", ["duplicate name", "duplicate oid", "version 3", "no owners"])
def test_invalid_v2_manifests_are_refused(change: str) -> None:
    data = v2([dict(t) for t in TABLES])
    if change == "duplicate name":
        data["tables"][1]["schema"], data["tables"][1]["name"] = "s.x", "y"
    elif change == "duplicate oid":
        data["tables"][1]["oid"] = data["tables"][0]["oid"]
    elif change == "version 3":
        data["manifest_version"] = 3
    else:
        del data["source"]["owners"]
    with pytest.raises(PgrunbookError):
        Manifest.validated(data)


def test_toc_is_read_by_fields() -> None:
    entries = parse_toc(TOC)
    assert table_data_count(entries) == 4
    assert {e.oid for e in entries if e.is_table_data} == {16395, 16392, 16389, 16400}
    assert toc_extensions(entries) == {"citext"}
    # a TABLE entry in a schema called "DATA x" is not table data (its catalog OID is pg_class's)
    assert not parse_toc("9; 1259 5 TABLE DATA x t o")[0].is_table_data


def test_missing_table_data_by_oid_and_for_v1_by_every_reading() -> None:
    entries = parse_toc(TOC)
    assert missing_table_data(Manifest.validated(v2(TABLES)), entries) == []
    gone = [*TABLES, {"schema": "s", "name": "gone", "oid": 99999, "rows": 0}]
    assert missing_table_data(Manifest.validated(v2(gone)), entries) == ["s.gone"]
    # version 1: names with newlines and spaces are found (the old reader split on spaces and missed them)
    assert missing_table_data(Manifest.validated(as_v1(v2(TABLES))), entries) == []
    assert missing_table_data(Manifest.validated(as_v1(v2(gone))), entries) == ["s.gone"]


def test_toc_system_acls() -> None:
    entries = parse_toc("7; 0 0 ACL pg_catalog FUNCTION pg_control_system() postgres\n"
                        "8; 0 0 ACL - SCHEMA public pg_database_owner\n9; 0 0 ACL public TABLE t o\n")
    assert toc_system_acls(entries) == ["FUNCTION pg_control_system()"]


def test_toc_owners_for_v1_manifests() -> None:
    entries = parse_toc(TOC)
    assert toc_owners(entries, ["own er", "postgres", "reader"]) == {"own er", "postgres"}


@pytest.mark.parametrize(("name", "shown"), [
    ("User", "User"), ("x.y", '"x.y"'), ('q"', '"q"""'), ("a b", '"a b"'), ("new\nline", 'U&"new\\000Aline"'),
    ("back\\slash\t", 'U&"back\\\\slash\\0009"'), ("U&x", '"U&x"'), ("日本", "日本"), ("\U000e0001", 'U&"\\+0E0001"'),
])
def test_ident(name: str, shown: str) -> None:
    assert ident(name) == shown
    assert "\n" not in ident(name)


@seed(20260801)
@settings(max_examples=400, deadline=None, database=None)
@given(a=st.tuples(NAMES, NAMES), b=st.tuples(NAMES, NAMES))
def test_display_names_never_collide(a: tuple[str, str], b: tuple[str, str]) -> None:
    shown_a, shown_b = display_name(*a), display_name(*b)
    assert (shown_a == shown_b) == (a == b)
    assert shown_a.isprintable()


def _id(database: str = "db", sysid: str | None = "7", port: int | None = 5432, started: str | None = "1.5",
        live: bool = True) -> DatabaseIdentity:
    return DatabaseIdentity(database=database, system_identifier=sysid, port=port, started_at=started, live=live)


@pytest.mark.parametrize(("a", "b", "same"), [
    (_id(), _id(), True),
    (_id(), _id(database="db2"), False),
    (_id(), _id(port=5433), False),  # a copy of the cluster on another port of the same host
    (_id(), _id(sysid="8"), False),
    (_id(), _id(started="2.5"), False),  # two live servers: two postmasters
    (_id(live=False), _id(started="2.5"), True),  # the source restarted since the backup
    (_id(sysid=None), _id(), True),  # identifier unreadable on one side: the start time decides
    (_id(sysid=None, live=False), _id(started="2.5"), None),  # ... and after a restart nothing can tell
    (_id(sysid=None, port=None, started=None, live=False), _id(), None),
    (_id(port=None, started=None, live=False), _id(), True),  # version 1: identifier and name
    (_id(port=None, started=None, live=False), _id(database="other"), False),
])
def test_same_database(a: DatabaseIdentity, b: DatabaseIdentity, same: bool | None) -> None:
    assert same_database(a, b) is same
    assert same_database(b, a) is same


def test_recorded_identity_of_v1_ignores_the_url_port() -> None:
    v1 = Manifest.validated(as_v1(v2(TABLES)))
    recorded = DatabaseIdentity.recorded(v1.source)
    assert (recorded.port, recorded.started_at, recorded.system_identifier, recorded.live) == (None, None, "7", False)
    current = DatabaseIdentity.recorded(Manifest.validated(v2(TABLES)).source)
    assert (current.port, current.started_at) == (5432, "1.5")
