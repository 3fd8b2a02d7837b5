"""Every name Postgres accepts survives backup -> restore -> verify (issue 8, items 1, 7 and 8).

- Hand-picked: one database holding each class of hostile name (dots, quotes, backslashes, spaces,
  tabs, CR/LF, form feed, U+2028, unicode, 63-byte names, the same table name in several schemas,
  `s."x.y"` next to `"s.x".y`, a schema called "DATA x", a table named like a TOC line), with
  schemas, tables, sequences and columns owned by and granted to roles with such names.
- Generated: a seeded Hypothesis strategy builds schemas, tables, columns, rows and roles from the
  same alphabet, backs them up in both archive formats, restores, verifies and compares per-table
  counts, data fingerprints and ownership.
- Old manifests (version 1) of such databases still restore and verify.
- Ownership and extensions are checked before anything is created in the target.
- "The target is the source" is recognised whatever the host spelling (127.0.0.1, localhost, socket).
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from psycopg import sql

from pgrunbook.archive import ArchiveRef, verify_archive
from pgrunbook.backup import BackupOptions, BackupResult, run_backup
from pgrunbook.cli import main
from pgrunbook.errors import PrivilegeRefused, TargetRefused
from pgrunbook.manifest import Manifest
from pgrunbook.pgserver import LocalServer
from pgrunbook.restore import RestoreOptions, run_restore
from pgrunbook.settings import Settings
from pgrunbook.verify import VerifyOptions, run_verify
from tests.fixtures.manifest_versions import as_v1
from tests.fixtures.restore_helpers import db_comment, drop_db, new_db, user_relations

SETTINGS = Settings.from_env({})
pytestmark = pytest.mark.usefixtures("clean_env")


# --------------------------------------------------------------------------- building databases
@dataclass
class Table:
    schema: str
    name: str
    columns: list[tuple[str, str]]  # (name, type): serial, int or text
    rows: list[tuple[Any, ...]] = field(default_factory=list)  # values of the non-serial columns
    owner: str | None = None
    grantee: str | None = None


@dataclass
class Spec:
    roles: list[str] = field(default_factory=list)
    schemas: list[tuple[str, str | None]] = field(default_factory=list)  # (name, owner)
    tables: list[Table] = field(default_factory=list)
    sequences: list[tuple[str, str, int]] = field(default_factory=list)  # (schema, name, setval)


def build(url: str, spec: Spec) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for schema, owner in spec.schemas:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            if owner:
                conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(schema),
                                                                           sql.Identifier(owner)))
        for t in spec.tables:
            rel = sql.Identifier(t.schema, t.name)
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(rel, sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(kind)) for c, kind in t.columns)))
            data_cols = [c for c, kind in t.columns if kind != "serial"]
            if t.rows and data_cols:  # values as literals: a "%" in a name must not read as a placeholder
                conn.execute(sql.SQL("INSERT INTO {} ({}) VALUES {}").format(
                    rel, sql.SQL(", ").join(map(sql.Identifier, data_cols)), sql.SQL(", ").join(
                        sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Literal, row))) for row in t.rows)))
            elif t.rows:
                for _ in t.rows:
                    conn.execute(sql.SQL("INSERT INTO {} DEFAULT VALUES").format(rel))
            if t.owner:
                conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(rel, sql.Identifier(t.owner)))
            if t.grantee:
                conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(rel, sql.Identifier(t.grantee)))
        for schema, name, value in spec.sequences:
            seq = sql.Identifier(schema, name)
            conn.execute(sql.SQL("CREATE SEQUENCE {}").format(seq))
            conn.execute(sql.SQL("SELECT setval({}::regclass, {})").format(sql.Literal(seq.as_string(conn)),
                                                                           sql.Literal(value)))


def create_roles(server: LocalServer, roles: list[str]) -> None:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        for role in roles:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))


def drop_roles(server: LocalServer, roles: list[str]) -> None:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        for role in roles:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


State = dict[str, Any]


def state(url: str) -> State:
    """What must survive, keyed by (schema, name) tuples (never joined text): per table the row count, an
    order-independent fingerprint of its rows, its owner and effective grants (an explicit grant equal to
    the default is not kept by pg_dump); sequences; schema owners."""
    out: State = {"tables": {}, "sequences": {}, "schemas": {}}
    with psycopg.connect(url, autocommit=True) as conn:
        rels = conn.execute("""
            SELECT n.nspname, c.relname, pg_get_userbyid(c.relowner),
                   coalesce(c.relacl, acldefault('r', c.relowner))::text
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2""").fetchall()
        for schema, name, owner, acl in rels:
            row = conn.execute(sql.SQL(
                "SELECT count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint::numeric), 0)"
                "::text FROM {} AS t").format(sql.Identifier(schema, name))).fetchone()
            assert row is not None
            out["tables"][(schema, name)] = (int(row[0]), str(row[1]), owner, acl)
        for schema, name, value in conn.execute(
                "SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2").fetchall():
            out["sequences"][(schema, name)] = value
        for name, owner in conn.execute(
                "SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                "AND nspname <> 'information_schema'").fetchall():
            out["schemas"][name] = owner
    return out


def round_trip(source: str, server: LocalServer, tmp: Path, fmt: str, expected: State) -> BackupResult:
    """Back up `source` in `fmt`, restore it into a new database, verify it and compare its state."""
    opts = {"custom": {"jobs": 1, "dest": str(tmp)}, "directory-tar": {"jobs": 2, "dest": str(tmp)},
            "plain": {"out": str(tmp / f"{uuid.uuid4().hex[:6]}.sql.gz")}}[fmt]
    backup = run_backup(BackupOptions(database_url=source, **opts), SETTINGS)  # type: ignore[arg-type]
    assert backup.format == fmt
    manifest = Manifest(backup.manifest_data)
    # every table once, with its own count (no two names collapse into one key)
    listed = {(t["schema"], t["name"]): t["rows"] for t in backup.manifest_data["tables"]}
    assert listed == {key: v[0] for key, v in expected["tables"].items()}
    assert len(manifest.tables) == len(listed)
    # `verify-backup` finds every table's data in the archive
    checked = verify_archive(ArchiveRef.from_uri(backup.archive))
    assert checked.ok, checked.first_failure()
    with new_db(server) as target:
        result = run_restore(RestoreOptions(file=backup.archive, target_url=target, force=True, jobs=2,
                                            analyze=False), SETTINGS)
        assert result.missing_roles == [] and result.warnings == []
        report = run_verify(VerifyOptions(database_url=target, manifest=backup.archive), SETTINGS)
        assert report.ok, report.text()
        assert sum(1 for c in report.checks if c.name.startswith("rows ")) == len(listed)
        assert all("\n" not in c.name for c in report.checks)
        assert state(target) == expected
    return backup


# --------------------------------------------------------------------------- hand-picked names
TOKEN = uuid.uuid4().hex[:6]
OWNER = f"own er {TOKEN}"
QUOTED = f'role"q\\ {TOKEN}'
NEWLINE_ROLE = f"r\nnl\t{TOKEN}"
UNICODE_ROLE = f"rôle ünï 🙂 {TOKEN}"
LONG_ROLE = f"R{TOKEN}" + "ü" * 28  # 63 bytes
HAND_ROLES = [OWNER, QUOTED, NEWLINE_ROLE, UNICODE_ROLE, LONG_ROLE]

LONG_ASCII = "n" * 63
LONG_UTF8 = "é" * 31 + "x"  # 63 bytes
HAND_SCHEMAS = ["s", "s.x", "sp ace", 'q"uote', "back\\slash", "new\nline", "tab\tbed", "cr\rlf", "ünï cødé 🙂",
                "DATA x", LONG_ASCII, LONG_UTF8, "UPPER lower"]
HAND_TABLES = ["new\nline", "tab\there", 'quo"te', "back\\slash", "sp ace", "日本語 テーブル", LONG_ASCII, LONG_UTF8,
               "1; 0 16389 TABLE DATA s.x y postgres", "trailing ", " leading", "x", "x ", "cr\rlf", 'U&"x"',
               "\u2028sep", "form\x0cfeed", "semi;colon", "-", "'"]
HAND_COLUMNS = [("col.umn", "text"), ('c"q', "text"), ("c\nnl", "text"), ("select", "int"), ("日本", "text"),
                ("c\\b", "text"), ("C Up", "text")]
HAND_VALUES = [("a\\b", 'q"', "line\nbreak", 1, "日本語", "\t\r", None), ("", "\\.", "\\N", -2, "🙂", "é", "x y")]


def hand_spec() -> Spec:
    spec = Spec(roles=HAND_ROLES)
    spec.schemas = [(s, {"sp ace": QUOTED, "ünï cødé 🙂": UNICODE_ROLE}.get(s)) for s in HAND_SCHEMAS]
    for schema in HAND_SCHEMAS:  # the same table name in every schema, each with its own sequence
        spec.tables.append(Table(schema, "t", [("id", "serial"), ("v", "text")],
                                 rows=[(schema,)] * (1 + len(schema) % 3), owner=OWNER if schema == "s" else None))
    spec.tables += [Table("s", "x.y", [("v", "int")], rows=[(1,)]),  # s."x.y" next to "s.x".y
                    Table("s.x", "y", [("v", "int")], rows=[(1,), (2,)], grantee=NEWLINE_ROLE)]
    for i, name in enumerate(HAND_TABLES):
        spec.tables.append(Table("public", name, HAND_COLUMNS, rows=HAND_VALUES[: 1 + i % 2],
                                 owner=[None, OWNER, QUOTED, NEWLINE_ROLE, UNICODE_ROLE, LONG_ROLE][i % 6],
                                 grantee=[None, UNICODE_ROLE, OWNER][i % 3]))
    spec.sequences = [("s.x", "seq.x\n", 42), ("public", 'se"q', 7)]
    return spec


@pytest.fixture(scope="module")
def hostile_db(pg_server: LocalServer) -> Iterator[tuple[str, State]]:
    assert all(len(n.encode()) <= 63 for n in [*HAND_ROLES, *HAND_SCHEMAS, *HAND_TABLES])
    assert len(LONG_ROLE.encode()) == len(LONG_ASCII.encode()) == len(LONG_UTF8.encode()) == 63
    create_roles(pg_server, HAND_ROLES)
    url = f"{pg_server.url()[: -len('/postgres')]}/ids_{TOKEN}"
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"ids_{TOKEN}")))
    try:
        build(url, hand_spec())
        yield url, state(url)
    finally:
        drop_db(url)
        drop_roles(pg_server, HAND_ROLES)


@pytest.mark.parametrize("fmt", ["custom", "directory-tar", "plain"])
def test_hand_picked_names_round_trip(fmt: str, hostile_db: tuple[str, State], pg_server: LocalServer,
                                      tmp_path: Path) -> None:
    url, expected = hostile_db
    # the database really holds what it should: both tables of the colliding pair, t in every schema
    assert {("s", "x.y"), ("s.x", "y")} <= set(expected["tables"])
    assert sum(1 for (_, name) in expected["tables"] if name == "t") == len(HAND_SCHEMAS)
    assert expected["schemas"]["sp ace"] == QUOTED
    round_trip(url, pg_server, tmp_path, fmt, expected)


def test_verify_tells_apart_tables_whose_names_join_alike(hostile_db: tuple[str, State], pg_server: LocalServer,
                                                          tmp_path: Path) -> None:
    # Given a restored copy of the hostile database that lost a row of s."x.y" (not of "s.x".y)
    url, _ = hostile_db
    backup = run_backup(BackupOptions(database_url=url, dest=str(tmp_path), jobs=1), SETTINGS)
    with new_db(pg_server) as target:
        run_restore(RestoreOptions(file=backup.archive, target_url=target, force=True), SETTINGS)
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute('DELETE FROM s."x.y"')
        # When it is verified against the manifest; Then exactly that table fails, by its unambiguous name
        report = run_verify(VerifyOptions(database_url=target, manifest=backup.archive), SETTINGS)
    assert not report.ok
    assert [(c.name, c.expected, c.actual) for c in report.failures] == [('rows s."x.y"', "1", "0")]
    assert next(c for c in report.checks if c.name == 'rows "s.x".y').ok


def _with_v1_manifest(backup: BackupResult, folder: Path) -> Path:
    """The backup's files copied to `folder`, its manifest rewritten as pgrunbook wrote it before version 2."""
    src = Path(backup.archive)
    for suffix in ("", ".sha256"):
        shutil.copy(f"{src}{suffix}", folder / f"{src.name}{suffix}")
    v1 = Manifest.validated(as_v1(backup.manifest_data)).data
    (folder / f"{src.name}.manifest.json").write_text(json.dumps(v1))
    return folder / src.name


@pytest.mark.parametrize("fmt", ["custom", "directory-tar"])
def test_v1_manifest_of_hostile_names_restores_and_verifies(fmt: str, hostile_db: tuple[str, State],
                                                            pg_server: LocalServer, tmp_path: Path) -> None:
    # Given an archive of the hostile database whose manifest is version 1 ("schema.table" keys, no OIDs)
    url, expected = hostile_db
    backup = run_backup(BackupOptions(database_url=url, dest=str(tmp_path / "v2"), jobs=1 if fmt == "custom" else 2),
                        SETTINGS)
    (tmp_path / "v1").mkdir()
    archive = _with_v1_manifest(backup, tmp_path / "v1")
    with new_db(pg_server) as target:
        # When it is restored: the table of contents is matched by every reading of its lines (the old
        # reader refused: "the archive lacks data for tables in its manifest")
        run_restore(RestoreOptions(file=str(archive), target_url=target, force=True), SETTINGS)
        assert state(target) == expected
        # Then verify passes every table but the two whose names the version 1 manifest joined alike
        report = run_verify(VerifyOptions(database_url=target, manifest=str(archive)), SETTINGS)
    assert [(c.name, c.actual) for c in report.failures] == [("rows s.x.y", "2 tables of this name")]
    assert sum(1 for c in report.checks if c.name.startswith("rows ") and c.ok) == len(expected["tables"]) - 2


# --------------------------------------------------------------------------- generated names
_HOSTILE = st.sampled_from([*".\"\\ \n\r\t$_-'`/;,&", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u202e", "\ufeff",
                            "é", "ß", "日", "🙂", "a", "Z", "0", "x", "U"])
_RESERVED = {"public", "none", "current_user", "session_user", "current_role", "information_schema", "all"}


def _ok_name(name: str) -> bool:
    return 0 < len(name.encode()) <= 63 and not name.lower().startswith("pg_") and name.lower() not in _RESERVED


NAMES = st.text(alphabet=st.one_of(_HOSTILE, st.characters(exclude_characters="\x00", exclude_categories=["Cs"])),
                min_size=1, max_size=24).filter(_ok_name)
VALUES = st.one_of(st.none(), st.text(alphabet=st.one_of(_HOSTILE, st.characters(exclude_characters="\x00",
                                                                                  exclude_categories=["Cs"])),
                                      max_size=12))


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    token = draw(st.text(alphabet="0123456789abcdef", min_size=6, max_size=6))
    roles = [(r + " " + token) for r in draw(st.lists(NAMES, max_size=2, unique=True))]
    roles = [r.encode()[:63].decode(errors="ignore") for r in roles]
    roles = [r for r in dict.fromkeys(roles) if _ok_name(r)]
    schemas = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    pool = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))  # table names shared across schemas
    owners = st.sampled_from([None, *roles])
    spec = Spec(roles=roles, schemas=[(s, draw(owners)) for s in schemas])
    for schema in schemas:
        for name in draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True)):
            columns = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
            kinds = [draw(st.sampled_from(["text", "int", "serial"])) for _ in columns]
            data = [c for c, k in zip(columns, kinds, strict=True) if k != "serial"]
            rows = draw(st.lists(st.tuples(*[VALUES if k == "text" else st.integers(-5, 5)
                                             for k in kinds if k != "serial"]), max_size=3))
            spec.tables.append(Table(schema, name, list(zip(columns, kinds, strict=True)),
                                     rows=rows if data else [()] * len(rows),
                                     owner=draw(owners), grantee=draw(owners)))
    if draw(st.booleans()):  # a pair whose names join alike: a."b.c" and "a.b".c
        a, b, c = draw(st.lists(NAMES, min_size=3, max_size=3, unique=True))
        pair = [(a, f"{b}.{c}"), (f"{a}.{b}", c)]
        if all(_ok_name(n) for n in (pair[1][0], pair[0][1])) and not {a, pair[1][0]} & set(schemas):
            spec.schemas += [(a, None), (pair[1][0], None)]
            spec.tables += [Table(x, y, [("v", "int")], rows=[(1,)] * (i + 1)) for i, (x, y) in enumerate(pair)]
    return spec


@seed(8_2026)
@settings(max_examples=5, deadline=None, database=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=specs())
def test_generated_names_round_trip(spec: Spec, pg_server: LocalServer, tmp_path_factory: pytest.TempPathFactory,
                                    ) -> None:
    create_roles(pg_server, spec.roles)
    try:
        with new_db(pg_server, "gen") as source:
            build(source, spec)
            expected = state(source)
            assert len(expected["tables"]) == len(spec.tables)
            for fmt in ("custom", "directory-tar"):
                round_trip(source, pg_server, tmp_path_factory.mktemp("gen"), fmt, expected)
    finally:
        drop_roles(pg_server, spec.roles)


# --------------------------------------------------------------------------- ownership before loading
RESTORER_PASSWORD = "pw"


def _login_role(server: LocalServer, name: str) -> None:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name),
                                                                       sql.Literal(RESTORER_PASSWORD)))


def _url(server: LocalServer, db: str, user: str = "postgres", password: str | None = None,
         how: str = "ip") -> str:
    auth = f"{quote(user, safe='')}:{quote(password or server.password, safe='')}"
    if how == "socket":
        return f"postgresql://{auth}@/{quote(db, safe='')}?host={quote(str(server.data_dir))}&port={server.port}"
    host = "localhost" if how == "localhost" else "127.0.0.1"
    return f"postgresql://{auth}@{host}:{server.port}/{quote(db, safe='')}"


@pytest.fixture()
def restorer(pg_server: LocalServer) -> Iterator[str]:
    """A non-superuser LOGIN role with a hostile name (the one that restores)."""
    name = f"rest orer {uuid.uuid4().hex[:6]}"
    _login_role(pg_server, name)
    yield name
    drop_roles(pg_server, [name])


def _target_owned_by(server: LocalServer, owner: str) -> tuple[str, str]:
    """A new database owned by `owner`: (name, URL as `owner`)."""
    db = f"tgt_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(owner)))
    return db, _url(server, db, owner, RESTORER_PASSWORD)


def _untouched(superuser_url: str) -> None:
    assert user_relations(superuser_url) == []
    assert db_comment(superuser_url) is None


def test_owner_roles_checked_before_loading(pg_server: LocalServer, restorer: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # Given a backup whose table (with an index, built after ownership moved) belongs to a role with a hostile
    # name, and a restoring role that owns the target database but is not a member of that role
    owner = f"own er {uuid.uuid4().hex[:6]}"
    create_roles(pg_server, [owner])
    targets: list[str] = []
    try:
        with new_db(pg_server, "own") as source:
            build(source, Spec(tables=[Table("public", "t", [("i", "int")], rows=[(1,), (2,)], owner=owner)]))
            with psycopg.connect(source, autocommit=True) as conn:
                conn.execute("CREATE INDEX ON t (i)")
            backup = run_backup(BackupOptions(database_url=source, dest=str(tmp_path), jobs=1), SETTINGS)
            assert backup.manifest_data["source"]["owners"] == [owner]
            db, target = _target_owned_by(pg_server, restorer)
            targets.append(db)
            as_superuser = pg_server.url(db)
            # When restored: refused before anything is created, one line naming the role and both ways out
            rc = main(["restore", "--file", backup.archive, "--target-url", target, "--force"])
            err = capsys.readouterr().err
            assert rc == 1
            assert err.count("\n") == 1 and "Traceback" not in err
            assert f'cannot act as role "{owner}"' in err
            assert "--no-owner" in err and f'GRANT "{owner}" TO "{restorer}"' in err
            _untouched(as_superuser)
            # and an old (version 1) manifest of the same archive is refused the same way (owners read from
            # the archive's table of contents)
            (tmp_path / "v1").mkdir()
            with pytest.raises(PrivilegeRefused, match="cannot act as role"):
                run_restore(RestoreOptions(file=str(_with_v1_manifest(backup, tmp_path / "v1")), target_url=target,
                                           force=True), SETTINGS)
            _untouched(as_superuser)
            # When restored with --no-owner: done, the restoring role owns the table
            run_restore(RestoreOptions(file=backup.archive, target_url=target, force=True, no_owner=True), SETTINGS)
            assert state(as_superuser)["tables"][("public", "t")][2] == restorer
            # When the role is granted to the restoring role: still refused before loading, since the owner role
            # may not create in the target's schema public (ALTER TABLE ... OWNER TO needs it)
            with psycopg.connect(pg_server.url(), autocommit=True) as conn:
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner), sql.Identifier(restorer)))
            db2, target2 = _target_owned_by(pg_server, restorer)
            targets.append(db2)
            with pytest.raises(PrivilegeRefused, match=rf'"{owner}" may not create in schema public.*'
                                                      rf'GRANT CREATE ON SCHEMA public TO "{owner}"'):
                run_restore(RestoreOptions(file=backup.archive, target_url=target2, force=True), SETTINGS)
            _untouched(pg_server.url(db2))
            # When that is granted too: done, the table keeps its owner
            with psycopg.connect(pg_server.url(db2), autocommit=True) as conn:
                conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(owner)))
            run_restore(RestoreOptions(file=backup.archive, target_url=target2, force=True), SETTINGS)
            assert state(pg_server.url(db2))["tables"][("public", "t")][2] == owner
            assert run_verify(VerifyOptions(database_url=target2, manifest=backup.archive), SETTINGS).ok
    finally:
        for db in targets:
            drop_db(pg_server.url(db))
        with psycopg.connect(pg_server.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(owner)))


def test_extensions_the_role_may_not_create_are_refused_before_loading(pg_server: LocalServer, restorer: str,
                                                                       tmp_path: Path) -> None:
    targets: list[str] = []
    try:
        with new_db(pg_server, "ext") as untrusted_src, new_db(pg_server, "ext") as trusted_src:
            # Given a backup using an untrusted extension (superuser only) and one using a trusted one, their
            # tables owned by the restoring role
            with psycopg.connect(untrusted_src, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION pageinspect")
            with psycopg.connect(trusted_src, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION citext")
            build(trusted_src, Spec(tables=[Table("public", "t", [("a", "citext")], rows=[("X",)], owner=restorer)]))
            untrusted = run_backup(BackupOptions(database_url=untrusted_src, dest=str(tmp_path), jobs=1), SETTINGS)
            trusted = run_backup(BackupOptions(database_url=trusted_src, dest=str(tmp_path), jobs=1), SETTINGS)
            # When the untrusted one is restored by a non-superuser: refused, nothing created, no mark
            db, target = _target_owned_by(pg_server, restorer)
            targets.append(db)
            with pytest.raises(PrivilegeRefused, match="pageinspect: only a superuser may create"):
                run_restore(RestoreOptions(file=untrusted.archive, target_url=target, force=True), SETTINGS)
            _untouched(pg_server.url(db))
            # When the trusted one goes to a database where the role lacks CREATE: refused the same way
            db2 = f"tgt_{uuid.uuid4().hex[:8]}"
            targets.append(db2)
            with psycopg.connect(pg_server.url(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db2)))
            with psycopg.connect(pg_server.url(db2), autocommit=True) as conn:
                conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(restorer)))
            with pytest.raises(PrivilegeRefused, match="citext: needs CREATE on the database"):
                run_restore(RestoreOptions(file=trusted.archive, force=True,
                                           target_url=_url(pg_server, db2, restorer, RESTORER_PASSWORD)), SETTINGS)
            _untouched(pg_server.url(db2))
            # When it goes to the database the role owns: restored
            run_restore(RestoreOptions(file=trusted.archive, target_url=target, force=True), SETTINGS)
            assert state(pg_server.url(db))["tables"][("public", "t")][:1] == (1,)
    finally:
        for db in targets:
            drop_db(pg_server.url(db))


# --------------------------------------------------------------------------- one identity check
def _small_backup(url: str, tmp: Path) -> BackupResult:
    build(url, Spec(tables=[Table("public", "t", [("i", "int")], rows=[(1,)])]))
    return run_backup(BackupOptions(database_url=url, dest=str(tmp), jobs=1), SETTINGS)


SPELLINGS = ["localhost", "socket"]  # the URLs the tests restore with name 127.0.0.1


def test_database_url_is_recognised_whatever_its_host_spelling(pg_server: LocalServer, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with new_db(pg_server, "src") as source, new_db(pg_server) as target:
        backup = _small_backup(source, tmp_path)
        for how in SPELLINGS:
            # Given $DATABASE_URL names the target database, spelled another way than --target-url
            monkeypatch.setenv("DATABASE_URL", _url(pg_server, target.rsplit("/", 1)[1], how=how))
            # When restored into it: refused as production, untouched
            with pytest.raises(TargetRefused, match=r"is \$DATABASE_URL"):
                run_restore(RestoreOptions(file=backup.archive, target_url=target, force=True), Settings.from_env())
            _untouched(target)
        # and a different database on the same server is not mistaken for it
        monkeypatch.setenv("DATABASE_URL", _url(pg_server, source.rsplit("/", 1)[1], how="socket"))
        run_restore(RestoreOptions(file=backup.archive, target_url=target, force=True), Settings.from_env())


def test_backup_source_is_recognised_whatever_its_host_spelling(pg_server: LocalServer, tmp_path: Path,
                                                                restorer: str) -> None:
    # Given a database whose owner (not a superuser) may not read pg_control_system(), backed up over 127.0.0.1:
    # the manifest has no system_identifier
    db, source = _target_owned_by(pg_server, restorer)
    try:
        with psycopg.connect(pg_server.url(db), autocommit=True) as conn:
            conn.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
        backup = _small_backup(source, tmp_path)
        assert backup.manifest_data["source"]["system_identifier"] is None
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute("DROP TABLE t")
        for how in SPELLINGS:
            # When it is restored into its own (now empty) source, spelled another way: refused
            with pytest.raises(TargetRefused, match="is the backup's source database"):
                run_restore(RestoreOptions(file=backup.archive, force=True,
                                           target_url=_url(pg_server, db, restorer, RESTORER_PASSWORD, how)), SETTINGS)
            _untouched(pg_server.url(db))
        # and into a new database of its own: refused before loading, since the archive revokes a privilege on a
        # system function, which only a superuser may restore (pg_restore failed on it at the very end)
        other, other_url = _target_owned_by(pg_server, restorer)
        try:
            with pytest.raises(PrivilegeRefused, match=r"changes privileges on system objects \(FUNCTION "
                                                        r"pg_control_system\(.*only a superuser"):
                run_restore(RestoreOptions(file=backup.archive, target_url=other_url, force=True), SETTINGS)
            _untouched(pg_server.url(other))
        finally:
            drop_db(pg_server.url(other))
    finally:
        drop_db(pg_server.url(db))
