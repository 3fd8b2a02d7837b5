"""Restore guards: what the archive needs from the target, what the target is, and the refusals.

Invariant: every check here only reads the target; nothing is written to it before all passed.
`check_target` runs twice: before the archive is fetched (what the manifest says the archive needs)
and after (what the archive's own table of contents or script says: extensions, owners, grants on
system objects). Order of the refusals: $DATABASE_URL's database, the backup's source database (one
check, `dbinfo.same_database`: what the servers say about themselves, never host spellings), a
restore mark, emptiness, server version, extensions (present, creatable by this role), roles,
ownership (the restoring role must be able to become each owner role and the owners must be able
to create in their objects' schemas, unless `--no-owner` or a superuser restores).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .. import dbinfo
from ..dburl import DatabaseUrl, mask_secrets
from ..errors import PgrunbookError, PrivilegeRefused, TargetNotEmpty, TargetRefused
from ..manifest import Manifest
from ..settings import Settings
from .marks import database_mark, refuse_marked

_NON_EMPTY_SQL = f"""
WITH ext AS (SELECT classid, objid FROM pg_depend WHERE deptype = 'e')
SELECT kind, name FROM (
    SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
                          WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' ELSE 'foreign table' END,
           quote_ident(n.nspname) || '.' || quote_ident(c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {dbinfo.USER_SCHEMAS}
      AND NOT EXISTS (SELECT 1 FROM ext WHERE classid = 'pg_class'::regclass AND objid = c.oid)
    UNION ALL
    SELECT 'function', quote_ident(n.nspname) || '.' || quote_ident(p.proname)
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE {dbinfo.USER_SCHEMAS}
      AND NOT EXISTS (SELECT 1 FROM ext WHERE classid = 'pg_proc'::regclass AND objid = p.oid)
    UNION ALL
    SELECT 'type', quote_ident(n.nspname) || '.' || quote_ident(t.typname)
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE {dbinfo.USER_SCHEMAS} AND t.typcategory <> 'A'
      AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
      AND NOT EXISTS (SELECT 1 FROM ext WHERE classid = 'pg_type'::regclass AND objid = t.oid)
    UNION ALL
    SELECT 'large object', oid::text FROM pg_largeobject_metadata
) AS objects(kind, name)
LIMIT 6
"""


def target_objects(conn: psycopg.Connection[Any]) -> list[str]:
    """Up to 6 'kind name' strings of user objects in the connected database (empty: none)."""
    return [f"{kind} {name}" for kind, name in conn.execute(_NON_EMPTY_SQL).fetchall()]


@dataclass
class Needs:
    """What the archive needs from the target server."""

    source_major: int | None = None
    extensions: set[str] = field(default_factory=set)
    roles: set[str] = field(default_factory=set)
    owners: set[str] | None = None  # roles owning objects (None: not known yet, e.g. a version 1 manifest)
    schemas: list[dict[str, Any]] = field(default_factory=list)  # name, owner, object_owners (manifest v2)
    system_acls: list[str] = field(default_factory=list)  # grants on pg_catalog objects (superuser only)
    source: dbinfo.DatabaseIdentity | None = None  # the backup's source database


def needs_of(manifest: Manifest | None) -> Needs:
    needs = Needs()
    if manifest is None:
        return needs
    src = manifest.source
    needs.source_major = int(src["server_version_num"]) // 10000
    needs.extensions = set(src.get("extensions") or {})
    needs.roles = set(manifest.roles)
    owners = manifest.owners
    needs.owners = None if owners is None else set(owners)
    needs.schemas = manifest.schemas or []
    needs.source = dbinfo.DatabaseIdentity.recorded(src)
    return needs


@dataclass
class TargetInfo:
    identity: dbinfo.ServerIdentity
    available_extensions: set[str]
    installed_extensions: set[str]
    roles: set[str]
    current_user: str
    session_extras: dict[str, str] = field(default_factory=dict)
    objects: list[str] = field(default_factory=list)  # user objects already there (up to 6)
    mark: str | None = None  # a pgrunbook restore mark on the database (an earlier restore did not finish)
    superuser: bool = False
    can_become: set[str] = field(default_factory=set)  # roles current_user may SET ROLE to and act as
    can_create_in_database: bool = False
    extension_needs_superuser: dict[str, bool] = field(default_factory=dict)  # name -> superuser, default version
    extension_trusted: dict[str, bool] = field(default_factory=dict)
    # privileges pg_restore will need, found missing: (role, what, the GRANT that gives it); `self_gaps` for
    # the restoring role (needed even with --no-owner), `owner_gaps` for the roles objects are given to
    self_gaps: list[tuple[str, str, str]] = field(default_factory=list)
    owner_gaps: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class Verdict:
    """What check_target allowed with --no-owner (or skip_missing_roles) and what it could not decide."""

    missing_roles: list[str] = field(default_factory=list)
    foreign_owners: list[str] = field(default_factory=list)  # owner roles the restoring role cannot become
    warnings: list[str] = field(default_factory=list)


def inspect_target(url: DatabaseUrl, needs: Needs | None = None) -> TargetInfo:
    with dbinfo.connect(url, autocommit=True, application="pgrunbook-restore") as conn:
        identity = dbinfo.server_identity(conn)
        objects = target_objects(conn)
        mark = database_mark(conn)
        available = {str(r[0]) for r in conn.execute("SELECT name FROM pg_available_extensions").fetchall()}
        installed = {str(r[0]) for r in conn.execute("SELECT extname FROM pg_extension").fetchall()}
        roles = {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
        # ALTER ... OWNER TO r needs SET ROLE r (PostgreSQL 16+; membership before); the objects pg_restore
        # then adds to r's objects (indexes, constraints, grants) need r's privileges (USAGE)
        set_option = "AND pg_has_role(current_user, r.oid, 'SET')" if identity.server_version_num >= 160000 else ""
        become = {str(r[0]) for r in conn.execute(
            f"SELECT r.rolname FROM pg_roles r WHERE pg_has_role(current_user, r.oid, 'USAGE') {set_option}"
        ).fetchall()}
        me = conn.execute("SELECT current_user, rolsuper, has_database_privilege(current_database(), 'CREATE') "
                          "FROM pg_roles WHERE rolname = current_user").fetchone()
        ext_rows = conn.execute("""
            SELECT e.name, v.superuser, v.trusted FROM pg_available_extensions e
            JOIN pg_available_extension_versions v ON v.name = e.name AND v.version = e.default_version""").fetchall()
        extra = _session_extras(conn)
        info = TargetInfo(identity=identity, available_extensions=available, installed_extensions=installed,
                           roles=roles, current_user=str(me[0]) if me else "", session_extras=extra, objects=objects,
                           mark=mark,
                           superuser=bool(me and me[1]), can_become=become, can_create_in_database=bool(me and me[2]),
                           extension_needs_superuser={str(n): bool(s) for n, s, _ in ext_rows},
                           extension_trusted={str(n): bool(t) for n, _, t in ext_rows})
        if needs is not None and needs.schemas and not info.superuser:
            info.self_gaps, info.owner_gaps = _creation_gaps(conn, needs.schemas, info)
    return info


def _creation_gaps(conn: psycopg.Connection[Any], schemas: list[dict[str, Any]],
                   info: TargetInfo) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """Privileges a non-superuser pg_restore needs and the target lacks (see TargetInfo). pg_restore
    creates each schema and object as the restoring role, then gives it to its owner: ALTER SCHEMA ...
    OWNER TO needs the new owner to have CREATE on the database, ALTER <object> ... OWNER TO needs it to
    have CREATE on the object's schema; grants on schemas arrive only at the end of the restore, so only
    a schema that already exists in the target, or membership in a new schema's owner, can give that."""
    me = info.current_user
    dbname = dbinfo.ident(info.identity.database)
    existing = {str(r[0]) for r in conn.execute(
        f"SELECT n.nspname FROM pg_namespace n WHERE {dbinfo.USER_SCHEMAS}").fetchall()}
    asks: list[tuple[str, str, str]] = []  # (kind, role, schema or role)
    for entry in schemas:
        name, owner = str(entry["name"]), entry["owner"]
        asks.append(("schema", me, name) if name in existing else ("database", me, ""))
        if name not in existing and owner is not None and owner != me:
            asks.append(("database", str(owner), ""))
        for role in entry["object_owners"]:
            if role == me:
                continue
            if name in existing:
                asks.append(("schema", str(role), name))
            elif owner is not None and role != owner:
                asks.append(("member", str(role), str(owner)))
    asks = [a for a in dict.fromkeys(asks) if a[1] in info.roles and (a[0] != "member" or a[2] in info.roles)]
    if not asks:
        return [], []
    rows = conn.execute("""
        SELECT a.kind, a.role, a.what,
               CASE a.kind WHEN 'schema' THEN has_schema_privilege(r.oid, n.oid, 'CREATE')
                           WHEN 'database' THEN has_database_privilege(r.oid, d.oid, 'CREATE')
                           ELSE pg_has_role(r.oid, o.oid, 'USAGE') END
        FROM unnest(%s::text[], %s::text[], %s::text[]) AS a(kind, role, what)
        JOIN pg_roles r ON r.rolname = a.role
        LEFT JOIN pg_namespace n ON a.kind = 'schema' AND n.nspname = a.what
        LEFT JOIN pg_roles o ON a.kind = 'member' AND o.rolname = a.what
        CROSS JOIN (SELECT oid FROM pg_database WHERE datname = current_database()) d""",
        ([a[0] for a in asks], [a[1] for a in asks], [a[2] for a in asks])).fetchall()
    self_gaps: list[tuple[str, str, str]] = []
    owner_gaps: list[tuple[str, str, str]] = []
    for kind, role, what, ok in rows:
        if ok:
            continue
        who = dbinfo.ident(str(role))
        if kind == "schema":
            gap = (str(role), f"create in schema {dbinfo.ident(str(what))}",
                   f"GRANT CREATE ON SCHEMA {dbinfo.ident(str(what))} TO {who}")
        elif kind == "database":
            gap = (str(role), f"create schemas in database {dbname}", f"GRANT CREATE ON DATABASE {dbname} TO {who}")
        else:
            gap = (str(role), f"create in the schemas of {dbinfo.ident(str(what))}",
                   f"GRANT {dbinfo.ident(str(what))} TO {who}")
        (self_gaps if role == me else owner_gaps).append(gap)
    return self_gaps, owner_gaps


def _session_extras(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Session settings worth adding on this server when we may set them: on a server that writes full
    WAL (wal_level replica/logical), index builds log every page; lz4 compresses those page images.
    On a server built with lz4 (14+), values the load TOASTs are compressed with lz4 instead of pglz
    (default_toast_compression, settable by any role; several times less CPU on wide rows, see
    docs/benchmarks.md); a column whose compression the dump sets explicitly keeps it."""
    row = conn.execute("""
        SELECT current_setting('wal_level'), current_setting('wal_compression'),
               has_parameter_privilege('wal_compression', 'SET'),
               (SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'wal_compression'),
               (SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression')""").fetchone()
    extras: dict[str, str] = {}
    if row and row[0] != "minimal" and row[1] == "off" and row[2] and row[3]:
        extras["wal_compression"] = "lz4"
    if row and row[4]:
        extras["default_toast_compression"] = "lz4"
    return extras


def role_names(roles: list[str]) -> str:
    return ", ".join(dbinfo.ident(r) for r in roles)


def check_target(url: DatabaseUrl, info: TargetInfo, needs: Needs, allow_no_owner: bool,
                  production: dbinfo.DatabaseIdentity | None = None) -> Verdict:
    """Raise TargetRefused when the target cannot take the archive; return what `allow_no_owner`
    (--no-owner, or skip_missing_roles) lets through: missing roles and owner roles the restoring
    role cannot become. Identity first (production, the backup's source), then emptiness, version,
    extensions (present, and creatable by this role), roles and ownership."""
    verdict = Verdict()
    ident = info.identity
    here = ident.database_identity()
    if production is not None and dbinfo.same_database(production, here):
        raise TargetRefused(f"the target {url.display()} is $DATABASE_URL (production): "
                            "restore into a new database and cut over instead")
    if needs.source is not None:
        same = dbinfo.same_database(needs.source, here)
        if same:
            raise TargetRefused(
                f"the target {url.display()} is the backup's source database ({dbinfo.ident(ident.database)} on "
                f"the server with system_identifier {ident.system_identifier}, port {ident.port}): "
                "restore into a new database instead")
        if same is None:
            verdict.warnings.append(
                "could not tell whether the target is the backup's source database (the system_identifier of one "
                "of the servers is not readable); the target is empty, so nothing is overwritten")
    refuse_marked(url, info.mark)
    if info.objects:
        raise TargetNotEmpty(
            f"the target {url.display()} is not empty ({', '.join(info.objects[:5])}"
            f"{', ...' if len(info.objects) > 5 else ''}): restore only into a new, empty database")
    if needs.source_major is not None and ident.major < needs.source_major:
        raise TargetRefused(
            f"the target server runs PostgreSQL {ident.server_version}, older than the backup's source "
            f"(PostgreSQL {needs.source_major}): restore into a server of version {needs.source_major} or newer")
    missing_ext = sorted(needs.extensions - info.available_extensions - info.installed_extensions)
    if missing_ext:
        raise TargetRefused(
            f"the target server lacks extension{'s' if len(missing_ext) > 1 else ''} the backup uses: "
            f"{', '.join(missing_ext)} (install {'them' if len(missing_ext) > 1 else 'it'} on the server first)")
    if not info.superuser:
        to_create = sorted(needs.extensions - info.installed_extensions)
        privileged = [e for e in to_create if info.extension_needs_superuser.get(e)]
        untrusted = [e for e in privileged if not info.extension_trusted.get(e)]
        no_create = [e for e in privileged if info.extension_trusted.get(e) and not info.can_create_in_database]
        if untrusted or no_create:
            user = dbinfo.ident(info.current_user)
            reasons = [f"{', '.join(untrusted)}: only a superuser may create"] if untrusted else []
            if no_create:
                reasons.append(f"{', '.join(no_create)}: needs CREATE on the database, which {user} lacks")
            raise PrivilegeRefused(
                f"the restoring role {user} cannot create extension{'s' if len(untrusted + no_create) > 1 else ''} "
                f"the backup uses ({'; '.join(reasons)}): have a superuser run CREATE EXTENSION "
                f"{', '.join(untrusted + no_create)} in the target database first, or restore as a superuser")
    missing_roles = sorted(needs.roles - info.roles)
    if missing_roles and not allow_no_owner:
        raise TargetRefused(
            f"the target server lacks role{'s' if len(missing_roles) > 1 else ''} {role_names(missing_roles)} that "
            "own or are granted objects in the backup: create them first, or pass --no-owner to restore without "
            "ownership and grants")
    verdict.missing_roles = missing_roles
    if needs.owners is not None and not info.superuser:
        foreign = sorted(r for r in needs.owners if r in info.roles and r not in info.can_become)
        if foreign and not allow_no_owner:
            user, many = dbinfo.ident(info.current_user), len(foreign) > 1
            raise PrivilegeRefused(
                f"the restoring role {user} cannot act as role{'s' if many else ''} {role_names(foreign)} that "
                f"own{'' if many else 's'} objects in the backup: pass --no-owner to restore with {user} owning "
                f"everything, or grant {'them' if many else 'it'} to {user} first "
                f"(GRANT {role_names(foreign)} TO {user})")
        verdict.foreign_owners = foreign
    if needs.system_acls and not info.superuser:
        raise PrivilegeRefused(
            f"the backup changes privileges on system objects ({', '.join(needs.system_acls[:3])}"
            f"{', ...' if len(needs.system_acls) > 3 else ''}), which only a superuser may restore: restore as a "
            f"superuser, or reset those privileges in the source and back it up again")
    if info.self_gaps:
        user = dbinfo.ident(info.current_user)
        raise PrivilegeRefused(
            f"the restoring role {user} may not {' or '.join(what for _, what, _ in info.self_gaps)} of the target, "
            f"which the backup needs: grant it first ({'; '.join(grant for _, _, grant in info.self_gaps)}), "
            "or restore as a superuser")
    if info.owner_gaps and not allow_no_owner:
        user = dbinfo.ident(info.current_user)
        gaps = "; ".join(f"{dbinfo.ident(role)} may not {what}" for role, what, _ in info.owner_gaps)
        raise PrivilegeRefused(
            f"the restoring role {user} cannot give objects of the backup to their owners ({gaps}; a superuser "
            f"could, and pg_restore grants privileges on schemas only at its end): pass --no-owner to restore with "
            f"{user} owning everything, restore as a superuser, or grant them first "
            f"({'; '.join(grant for _, _, grant in info.owner_gaps)})")
    verdict.foreign_owners = sorted({*verdict.foreign_owners, *(role for role, _, _ in info.owner_gaps)})
    return verdict


def foreign_owners(verdict: Verdict, no_owner: bool, info: TargetInfo, warn: Callable[[str], None]) -> bool:
    """With skip_missing_roles, owner roles the restoring role cannot become are restored as with
    --no-owner (said in a warning); returns whether the load runs without ownership."""
    if verdict.foreign_owners and not no_owner:
        warn(f"the restoring role {dbinfo.ident(info.current_user)} cannot act as "
             f"{role_names(verdict.foreign_owners)}; restoring without ownership (--no-owner)")
        return True
    return no_owner


def production_identity(settings: Settings, warn: Callable[[str], None]) -> dbinfo.DatabaseIdentity | None:
    """$DATABASE_URL's database as its server identifies it (None when unset or unreachable: said in a
    warning; the target must still be empty)."""
    if not settings.database_url:
        return None
    prod = DatabaseUrl.parse(settings.database_url, what="DATABASE_URL")
    try:
        return dbinfo.live_identity(prod, application="pgrunbook-restore", connect_timeout=5)
    except (PgrunbookError, psycopg.Error) as exc:
        warn(f"could not reach $DATABASE_URL to make sure the target is not production "
             f"({mask_secrets(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)})")
        return None


def refuse_changed(url: DatabaseUrl) -> None:
    """Just before the mark: the target is still empty and unmarked (no other restore got there meanwhile)."""
    with dbinfo.connect(url, autocommit=True, application="pgrunbook-restore") as conn:
        objects = target_objects(conn)
        refuse_marked(url, database_mark(conn))
    if objects:
        raise TargetNotEmpty(f"the target {url.display()} stopped being empty ({', '.join(objects[:5])})")
