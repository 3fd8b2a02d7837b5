"""Guarded restore into a fresh database: prove the archive, prove the target, then load it in parallel.

Order of work (nothing reaches the target before every guard passed):

1. `--force` given.
2. The target: reachable, neither `$DATABASE_URL`'s database nor the backup's source (one check,
   `catalog.same_database`: what the servers say about themselves, never host spellings), without a
   pgrunbook restore mark (an earlier restore failed, was interrupted or killed: TargetMarked, drop
   and recreate the database), EMPTY (no table, view, sequence, function, type or large object in a
   non-system schema), server major >= the source's, every extension the archive uses available (all
   missing ones reported at once) and creatable by the restoring role, every role the archive's
   objects belong to present (or `--no-owner`), and - unless `--no-owner` or a superuser restores -
   every owner role one that the restoring role can become and that may create in its objects'
   schemas (pg_restore gives each object to its owner as it goes, and grants schema privileges only
   at its end).
3. The archive: fetched once into a work folder (S3 streamed, hashed while downloading; a
   local file is hashed in place; a `.dump.tar` is extracted while hashing), its sha256 equal to
   `<archive>.sha256` and to the manifest, its table of contents read by `pg_restore --list`
   (by fields: every manifest table has its TABLE DATA entry, found by OID; its extensions and
   grants on system objects checked against the restoring role like those of step 2) (plain SQL:
   the gzip stream and the 'dump complete' trailer read to the end).
4. The target is marked `pgrunbook: restore in progress` (COMMENT ON DATABASE), the archive
   is loaded (`pg_restore -j N --exit-on-error` with restore-tuned session settings, or
   `psql -v ON_ERROR_STOP=1 --single-transaction` for the runbook's .sql/.sql.gz), and ANALYZE
   runs. On success the mark is removed; on failure it becomes `pgrunbook: restore FAILED: ...`
   (and stays `in progress` if the process was killed): `verify` fails on either mark.

Interruption: pg_restore/psql are spawned through pgtools, so on any exception (SIGTERM/SIGINT
arrive as `Interrupted`) they and their workers are stopped before the mark becomes
`... FAILED (...): interrupted by SIGTERM`; the work folder is removed on the way out, and by
pgtools' guardian process should pgrunbook be killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

import psycopg
from psycopg import sql

from . import catalog
from .archive import (
    CHUNK,
    PLAIN_HEADER,
    PLAIN_TRAILER,
    ArchiveRef,
    HashingReader,
    TocEntry,
    missing_table_data,
    parse_toc,
    table_data_count,
    toc_extensions,
    toc_owners,
    toc_system_acls,
)
from .dburl import DatabaseUrl, mask_secrets
from .errors import (
    ChecksumMismatch,
    Interrupted,
    PgrunbookError,
    PrivilegeRefused,
    StoreError,
    TargetRefused,
    UsageError,
)
from .manifest import MANIFEST_SUFFIX, SHA256_SUFFIX, Manifest
from .pgtools import StderrTail, Tool, ToolProcess, find_tool, guard_path, run_captured, spawn, tool_env
from .settings import Settings
from .store import LocalStore

log = logging.getLogger(__name__)

MARK_IN_PROGRESS = "pgrunbook: restore in progress"
MARK_FAILED = "pgrunbook: restore FAILED"

# Session settings for every restore connection (PGOPTIONS): the load is re-runnable from the
# archive, so a lost commit on a crash costs nothing; index builds get a large memory budget.
RESTORE_SESSION = {
    "synchronous_commit": "off",
    "maintenance_work_mem": "512MB",
    "work_mem": "64MB",
    "jit": "off",
}


class RestoreFailed(PgrunbookError):
    """pg_restore/psql failed part-way: the target is marked failed and must not be used."""


@dataclass(frozen=True)
class RestoreOptions:
    file: str  # archive path or s3:// URI (.dump, .dump.tar, .sql, .sql.gz; or its .manifest.json)
    target_url: str | None = None  # default $NEW_DATABASE_URL
    force: bool = False
    jobs: int | None = None  # parallel pg_restore jobs (default: CPU count)
    no_owner: bool = False
    skip_missing_roles: bool = False  # like no_owner, but only when the target lacks roles (drills)
    analyze: bool = True
    work_dir: str | None = None  # where S3 archives are downloaded / tars extracted (default: $TMPDIR)
    session_settings: Mapping[str, str] | None = None  # overrides RESTORE_SESSION


@dataclass
class RestoreResult:
    archive: str
    target: str
    format: str
    bytes: int = 0
    sha256: str = ""
    jobs: int = 1
    download_seconds: float = 0.0
    restore_seconds: float = 0.0
    analyze_seconds: float = 0.0
    seconds: float = 0.0
    tables: int = 0
    missing_roles: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    manifest: Manifest | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"archive": self.archive, "target": self.target, "format": self.format, "bytes": self.bytes,
                "sha256": self.sha256, "jobs": self.jobs, "download_seconds": round(self.download_seconds, 3),
                "restore_seconds": round(self.restore_seconds, 3), "analyze_seconds": round(self.analyze_seconds, 3),
                "seconds": round(self.seconds, 3), "tables": self.tables, "missing_roles": self.missing_roles,
                "warnings": self.warnings,
                "manifest": None if self.manifest is None else self.archive + MANIFEST_SUFFIX}


# --------------------------------------------------------------------------- target checks
_NON_EMPTY_SQL = f"""
WITH ext AS (SELECT classid, objid FROM pg_depend WHERE deptype = 'e')
SELECT kind, name FROM (
    SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
                          WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' ELSE 'foreign table' END,
           quote_ident(n.nspname) || '.' || quote_ident(c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {catalog.USER_SCHEMAS}
      AND NOT EXISTS (SELECT 1 FROM ext WHERE classid = 'pg_class'::regclass AND objid = c.oid)
    UNION ALL
    SELECT 'function', quote_ident(n.nspname) || '.' || quote_ident(p.proname)
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE {catalog.USER_SCHEMAS}
      AND NOT EXISTS (SELECT 1 FROM ext WHERE classid = 'pg_proc'::regclass AND objid = p.oid)
    UNION ALL
    SELECT 'type', quote_ident(n.nspname) || '.' || quote_ident(t.typname)
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE {catalog.USER_SCHEMAS} AND t.typcategory <> 'A'
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


def database_mark(conn: psycopg.Connection[Any]) -> str | None:
    """The database comment when it is a pgrunbook restore mark (in progress / FAILED), else None."""
    row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                       "WHERE datname = current_database()").fetchone()
    comment = row[0] if row else None
    if comment and str(comment).startswith((MARK_IN_PROGRESS, MARK_FAILED)):
        return str(comment)
    return None


class TargetMarked(TargetRefused):
    """The target carries the mark of an earlier restore that failed, was interrupted or killed: it may
    hold part of an archive, so nothing is restored into it until it is dropped and recreated."""


def refuse_marked(url: DatabaseUrl, mark: str | None) -> None:
    """Raise TargetMarked when `mark` (database_mark of the target) is a pgrunbook restore mark."""
    if mark is None:
        return
    db = catalog.ident(url.dbname)
    what = ("an earlier restore into it did not finish" if mark.startswith(MARK_FAILED) else
            "an earlier restore into it was killed, or is still running")
    raise TargetMarked(f"the target {url.display()} is marked {mark[:300]!r}: {what}, so it may hold part of an "
                       f"archive; drop and recreate it (DROP DATABASE {db}; CREATE DATABASE {db}), then restore again")


def _set_mark(url: DatabaseUrl, text: str | None, *, only_if_ours: bool = False) -> None:
    try:
        with catalog.connect(url, autocommit=True, application="pgrunbook-restore") as conn:
            conn.execute("SET default_transaction_read_only = off")
            if only_if_ours and database_mark(conn) is None:
                return
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(url.dbname), sql.Literal(text)))
    except (psycopg.Error, PgrunbookError) as exc:
        log.warning("could not mark the target database", extra={"target": url.display(),
                                                                  "reason": mask_secrets(str(exc).strip())})


@dataclass
class _Needs:
    """What the archive needs from the target server."""

    source_major: int | None = None
    extensions: set[str] = field(default_factory=set)
    roles: set[str] = field(default_factory=set)
    owners: set[str] | None = None  # roles owning objects (None: not known yet, e.g. a version 1 manifest)
    schemas: list[dict[str, Any]] = field(default_factory=list)  # name, owner, object_owners (manifest v2)
    system_acls: list[str] = field(default_factory=list)  # grants on pg_catalog objects (superuser only)
    source: catalog.DatabaseIdentity | None = None  # the backup's source database


def _needs_of(manifest: Manifest | None) -> _Needs:
    needs = _Needs()
    if manifest is None:
        return needs
    src = manifest.source
    needs.source_major = int(src["server_version_num"]) // 10000
    needs.extensions = set(src.get("extensions") or {})
    needs.roles = set(manifest.roles)
    owners = manifest.owners
    needs.owners = None if owners is None else set(owners)
    needs.schemas = manifest.schemas or []
    needs.source = catalog.DatabaseIdentity.recorded(src)
    return needs


@dataclass
class _TargetInfo:
    identity: catalog.ServerIdentity
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
class _Verdict:
    """What _check_target allowed with --no-owner (or skip_missing_roles) and what it could not decide."""

    missing_roles: list[str] = field(default_factory=list)
    foreign_owners: list[str] = field(default_factory=list)  # owner roles the restoring role cannot become
    warnings: list[str] = field(default_factory=list)


def _inspect_target(url: DatabaseUrl, needs: _Needs | None = None) -> _TargetInfo:
    with catalog.connect(url, autocommit=True, application="pgrunbook-restore") as conn:
        identity = catalog.server_identity(conn)
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
        info = _TargetInfo(identity=identity, available_extensions=available, installed_extensions=installed,
                           roles=roles, current_user=str(me[0]) if me else "", session_extras=extra, objects=objects,
                           mark=mark,
                           superuser=bool(me and me[1]), can_become=become, can_create_in_database=bool(me and me[2]),
                           extension_needs_superuser={str(n): bool(s) for n, s, _ in ext_rows},
                           extension_trusted={str(n): bool(t) for n, _, t in ext_rows})
        if needs is not None and needs.schemas and not info.superuser:
            info.self_gaps, info.owner_gaps = _creation_gaps(conn, needs.schemas, info)
    return info


def _creation_gaps(conn: psycopg.Connection[Any], schemas: list[dict[str, Any]],
                   info: _TargetInfo) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """Privileges a non-superuser pg_restore needs and the target lacks (see _TargetInfo). pg_restore
    creates each schema and object as the restoring role, then gives it to its owner: ALTER SCHEMA ...
    OWNER TO needs the new owner to have CREATE on the database, ALTER <object> ... OWNER TO needs it to
    have CREATE on the object's schema; grants on schemas arrive only at the end of the restore, so only
    a schema that already exists in the target, or membership in a new schema's owner, can give that."""
    me = info.current_user
    dbname = catalog.ident(info.identity.database)
    existing = {str(r[0]) for r in conn.execute(
        f"SELECT n.nspname FROM pg_namespace n WHERE {catalog.USER_SCHEMAS}").fetchall()}
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
        who = catalog.ident(str(role))
        if kind == "schema":
            gap = (str(role), f"create in schema {catalog.ident(str(what))}",
                   f"GRANT CREATE ON SCHEMA {catalog.ident(str(what))} TO {who}")
        elif kind == "database":
            gap = (str(role), f"create schemas in database {dbname}", f"GRANT CREATE ON DATABASE {dbname} TO {who}")
        else:
            gap = (str(role), f"create in the schemas of {catalog.ident(str(what))}",
                   f"GRANT {catalog.ident(str(what))} TO {who}")
        (self_gaps if role == me else owner_gaps).append(gap)
    return self_gaps, owner_gaps


def _session_extras(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Session settings worth adding on this server when we may set them: on a server that writes full
    WAL (wal_level replica/logical), index builds log every page; lz4 compresses those page images."""
    row = conn.execute("""
        SELECT current_setting('wal_level'), current_setting('wal_compression'),
               has_parameter_privilege('wal_compression', 'SET'),
               (SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'wal_compression')""").fetchone()
    if row and row[0] != "minimal" and row[1] == "off" and row[2] and row[3]:
        return {"wal_compression": "lz4"}
    return {}


def _names(roles: list[str]) -> str:
    return ", ".join(catalog.ident(r) for r in roles)


def _check_target(url: DatabaseUrl, info: _TargetInfo, needs: _Needs, allow_no_owner: bool,
                  production: catalog.DatabaseIdentity | None = None) -> _Verdict:
    """Raise TargetRefused when the target cannot take the archive; return what `allow_no_owner`
    (--no-owner, or skip_missing_roles) lets through: missing roles and owner roles the restoring
    role cannot become. Identity first (production, the backup's source), then emptiness, version,
    extensions (present, and creatable by this role), roles and ownership."""
    verdict = _Verdict()
    ident = info.identity
    here = ident.database_identity()
    if production is not None and catalog.same_database(production, here):
        raise TargetRefused(f"the target {url.display()} is $DATABASE_URL (production): "
                            "restore into a new database and cut over instead")
    if needs.source is not None:
        same = catalog.same_database(needs.source, here)
        if same:
            raise TargetRefused(
                f"the target {url.display()} is the backup's source database ({catalog.ident(ident.database)} on "
                f"the server with system_identifier {ident.system_identifier}, port {ident.port}): "
                "restore into a new database instead")
        if same is None:
            verdict.warnings.append(
                "could not tell whether the target is the backup's source database (the system_identifier of one "
                "of the servers is not readable); the target is empty, so nothing is overwritten")
    refuse_marked(url, info.mark)
    if info.objects:
        raise TargetRefused(
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
            user = catalog.ident(info.current_user)
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
            f"the target server lacks role{'s' if len(missing_roles) > 1 else ''} {_names(missing_roles)} that "
            "own or are granted objects in the backup: create them first, or pass --no-owner to restore without "
            "ownership and grants")
    verdict.missing_roles = missing_roles
    if needs.owners is not None and not info.superuser:
        foreign = sorted(r for r in needs.owners if r in info.roles and r not in info.can_become)
        if foreign and not allow_no_owner:
            user, many = catalog.ident(info.current_user), len(foreign) > 1
            raise PrivilegeRefused(
                f"the restoring role {user} cannot act as role{'s' if many else ''} {_names(foreign)} that "
                f"own{'' if many else 's'} objects in the backup: pass --no-owner to restore with {user} owning "
                f"everything, or grant {'them' if many else 'it'} to {user} first "
                f"(GRANT {_names(foreign)} TO {user})")
        verdict.foreign_owners = foreign
    if needs.system_acls and not info.superuser:
        raise PrivilegeRefused(
            f"the backup changes privileges on system objects ({', '.join(needs.system_acls[:3])}"
            f"{', ...' if len(needs.system_acls) > 3 else ''}), which only a superuser may restore: restore as a "
            f"superuser, or reset those privileges in the source and back it up again")
    if info.self_gaps:
        user = catalog.ident(info.current_user)
        raise PrivilegeRefused(
            f"the restoring role {user} may not {' or '.join(what for _, what, _ in info.self_gaps)} of the target, "
            f"which the backup needs: grant it first ({'; '.join(grant for _, _, grant in info.self_gaps)}), "
            "or restore as a superuser")
    if info.owner_gaps and not allow_no_owner:
        user = catalog.ident(info.current_user)
        gaps = "; ".join(f"{catalog.ident(role)} may not {what}" for role, what, _ in info.owner_gaps)
        raise PrivilegeRefused(
            f"the restoring role {user} cannot give objects of the backup to their owners ({gaps}; a superuser "
            f"could, and pg_restore grants privileges on schemas only at its end): pass --no-owner to restore with "
            f"{user} owning everything, restore as a superuser, or grant them first "
            f"({'; '.join(grant for _, _, grant in info.owner_gaps)})")
    verdict.foreign_owners = sorted({*verdict.foreign_owners, *(role for role, _, _ in info.owner_gaps)})
    return verdict


def _foreign_owners(verdict: _Verdict, no_owner: bool, info: _TargetInfo, result: RestoreResult) -> bool:
    """With skip_missing_roles, owner roles the restoring role cannot become are restored as with
    --no-owner (said in a warning); returns whether the load runs without ownership."""
    if verdict.foreign_owners and not no_owner:
        msg = (f"the restoring role {catalog.ident(info.current_user)} cannot act as "
               f"{_names(verdict.foreign_owners)}; restoring without ownership (--no-owner)")
        log.warning(msg)
        result.warnings.append(msg)
        return True
    return no_owner


def _production_identity(settings: Settings, result: RestoreResult) -> catalog.DatabaseIdentity | None:
    """$DATABASE_URL's database as its server identifies it (None when unset or unreachable: said in a
    warning; the target must still be empty)."""
    if not settings.database_url:
        return None
    prod = DatabaseUrl.parse(settings.database_url, what="DATABASE_URL")
    try:
        return catalog.live_identity(prod, application="pgrunbook-restore", connect_timeout=5)
    except (PgrunbookError, psycopg.Error) as exc:
        msg = (f"could not reach $DATABASE_URL to make sure the target is not production "
               f"({mask_secrets(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)})")
        log.warning(msg)
        result.warnings.append(msg)
        return None


# --------------------------------------------------------------------------- fetching the archive
@dataclass
class _Fetched:
    path: Path  # file (custom, plain) or extracted directory (directory-tar)
    sha256: str
    bytes: int
    toc: list[str] = field(default_factory=list)
    plain_major: int | None = None
    plain_extensions: set[str] = field(default_factory=set)


def _copy_hashing(stream: IO[bytes], dest: Path | None) -> HashingReader:
    reader = HashingReader(stream)
    if dest is None:
        reader.drain()
        return reader
    with open(dest, "wb") as out:
        while chunk := reader.read(CHUNK):
            out.write(chunk)
    return reader


class _UnreadableTar(PgrunbookError):
    """A `.dump.tar` that does not extract; `sha256` of all its bytes tells whether it is the archive that was
    written (a damaged one is a ChecksumMismatch, said as such)."""

    def __init__(self, message: str, sha256: str) -> None:
        super().__init__(message)
        self.sha256 = sha256


def _extract_tar(stream: IO[bytes], dest: Path) -> HashingReader:
    """Extract a pg_dump directory packed as a flat tar, hashing every byte of the tar."""
    reader = HashingReader(stream)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                name = PurePosixPath(member.name)
                if not member.isfile() or len(name.parts) != 1 or name.name in ("", ".", ".."):
                    raise PgrunbookError(f"the archive holds an unexpected entry {member.name!r}")
                data = tar.extractfile(member)
                assert data is not None
                with open(dest / name.name, "wb") as out:
                    while chunk := data.read(CHUNK):
                        out.write(chunk)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        reader.drain()
        raise _UnreadableTar(f"the archive does not read as a tar: {exc}", reader.hexdigest()) from None
    reader.drain()
    return reader


_DUMPED_FROM = re.compile(rb"-- Dumped from database version (\d+)")
_CREATE_EXT = re.compile(rb"^CREATE EXTENSION (?:IF NOT EXISTS )?\"?([A-Za-z0-9_-]+)\"?", re.M)


def _scan_plain(path: Path, gz: bool) -> tuple[int | None, set[str]]:
    """Read a plain SQL dump to its end: (source major, extensions); raise when truncated/corrupt."""
    inflater = zlib.decompressobj(31) if gz else None
    head, tail, carry = b"", b"", b""
    exts: set[str] = set()
    with open(path, "rb") as fh:
        try:
            while chunk := fh.read(CHUNK):
                text = inflater.decompress(chunk) if inflater else chunk
                if len(head) < 4096:
                    head += text[:4096]
                block = carry + text
                if b"CREATE EXTENSION" in block:
                    exts.update(m.decode() for m in _CREATE_EXT.findall(block))
                carry = block[-200:]
                tail = (tail + text)[-400:]
            if inflater is not None:
                tail = (tail + inflater.flush())[-400:]
                if not inflater.eof:
                    raise PgrunbookError("the archive does not read: the gzip stream is truncated")
        except zlib.error as exc:
            raise PgrunbookError(f"the archive does not read: the gzip stream is corrupt ({exc})") from None
    if PLAIN_HEADER not in head:
        raise PgrunbookError("the archive does not read: not a pg_dump SQL script (no header)")
    if PLAIN_TRAILER not in tail:
        raise PgrunbookError("the archive does not read: the SQL script is truncated (no 'dump complete' trailer)")
    match = _DUMPED_FROM.search(head)
    exts.discard("plpgsql")
    return (int(match[1]) if match else None), exts


def _toc_of(pg_restore: Tool, path: Path) -> list[TocEntry]:
    proc = run_captured([str(pg_restore.path), "--list", str(path)], env=tool_env())
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        detail = next((ln for ln in stderr.splitlines() if "error" in ln.lower()), stderr.strip())
        raise PgrunbookError(f"the archive does not read: {detail.removeprefix('pg_restore: error: ')}")
    return parse_toc(proc.stdout.decode("utf-8", "replace"))


def _fetch(ref: ArchiveRef, fmt: str, work: Path) -> _Fetched:
    local = isinstance(ref.store, LocalStore)
    size = ref.store.size(ref.key)
    if not local or fmt == "directory-tar":
        free = shutil.disk_usage(work).free
        if free < size * 1.05 + 64 * 1024 * 1024:
            raise PgrunbookError(f"not enough free space in {work} for the {size} byte archive "
                                 "(set PGRUNBOOK_WORK_DIR or --work-dir to a larger disk)")
    with contextlib.closing(ref.open()) as stream:
        if fmt == "directory-tar":
            path = work / "archive.d"
            reader = _extract_tar(stream, path)
        elif local:
            assert isinstance(ref.store, LocalStore)
            path = ref.store.path(ref.key)
            reader = _copy_hashing(stream, None)
        else:
            path = work / ref.name
            reader = _copy_hashing(stream, path)
    return _Fetched(path=path, sha256=reader.hexdigest(), bytes=reader.bytes)


# --------------------------------------------------------------------------- loading
def _pgoptions(overrides: Mapping[str, str] | None) -> str:
    merged = {**RESTORE_SESSION, **(overrides or {})}
    ours = " ".join(f"-c {k}={v}" for k, v in merged.items())
    existing = os.environ.get("PGOPTIONS", "").strip()
    return f"{existing} {ours}".strip()


_TOC_ENTRY = re.compile(r"from TOC entry \d+; \d+ \d+ (.+)$")


def _pg_restore_failure(stderr: str) -> str:
    """'<what failed>: <first error>' from pg_restore's stderr."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    error = next((ln for ln in lines if "error:" in ln), lines[-1] if lines else "no output")
    error = re.sub(r"^pg_restore:\s*error:\s*", "", error)
    error = re.sub(r"^could not execute query:\s*", "", error)
    obj = next((m[1] for ln in lines if (m := _TOC_ENTRY.search(ln))), None)
    if obj:
        parts = obj.rsplit(" ", 1)  # drop the owner
        obj = parts[0] if len(parts) == 2 else obj
        return f"failed at {obj}: {error}"
    return error


def _psql_failure(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    error = next((ln for ln in lines if "ERROR:" in ln or "FATAL:" in ln), lines[-1] if lines else "no output")
    error = re.sub(r"^psql:[^:]*:\d+:\s*", "", error)
    context = next((ln for ln in lines if ln.startswith(("CONTEXT:", "STATEMENT:"))), None)
    where = re.search(r"psql:[^:]*:(\d+):", next((ln for ln in lines if "ERROR:" in ln), ""))
    parts = [error]
    if context:
        parts.append(context[:200])
    if where:
        parts.append(f"at line {where[1]} of the script")
    return " ".join(parts)



def _run_pg_restore(tool: Tool, url: DatabaseUrl, path: Path, jobs: int, no_owner: bool, no_acl: bool,
                    session: Mapping[str, str] | None, server_major: int) -> None:
    """pg_restore -j N into the target; on any exception (an interrupt too) pg_restore and its workers are
    stopped before it goes on, so nothing loads into the target afterwards."""
    args = [str(tool.path), f"--dbname={url.conninfo()}", "--no-password", "--exit-on-error", f"--jobs={jobs}"]
    if no_owner:
        args.append("--no-owner")
    if no_acl:
        args.append("--no-acl")
    args.append(str(path))
    env = tool_env({**url.tool_env(), "PGOPTIONS": _pgoptions(session)}, server_major=server_major)
    proc = spawn(args, env=env, stdout=subprocess.DEVNULL)
    try:
        assert proc.stderr is not None
        errors = StderrTail(proc.stderr)
        rc = proc.wait()
    except BaseException:
        proc.stop()
        raise
    if rc != 0:
        raise RestoreFailed(f"pg_restore failed: {mask_secrets(_pg_restore_failure(errors.text))}")


_OWNER_LINE = re.compile(rb"^(ALTER [A-Z ]+ .* OWNER TO .*;|SET SESSION AUTHORIZATION .*;)\s*$")
_ACL_LINE = re.compile(rb"^(GRANT|REVOKE) .*;\s*$")
_COPY_START = re.compile(rb"^COPY .* FROM stdin;\s*$")


class _PlainFilter:
    """Drops ownership (and grant) statements of a pg_dump script outside COPY data (--no-owner)."""

    def __init__(self, no_acl: bool) -> None:
        self.no_acl = no_acl
        self.in_copy = False
        self.carry = b""

    def feed(self, data: bytes) -> bytes:
        data = self.carry + data
        cut = data.rfind(b"\n") + 1
        self.carry = data[cut:]
        return self._lines(data[:cut])

    def flush(self) -> bytes:
        rest, self.carry = self.carry, b""
        return self._lines(rest)

    def _lines(self, data: bytes) -> bytes:
        out = []
        for line in data.splitlines(keepends=True):
            if self.in_copy:
                if line.rstrip(b"\r\n") == b"\\.":
                    self.in_copy = False
                out.append(line)
            elif _COPY_START.match(line):
                self.in_copy = True
                out.append(line)
            elif _OWNER_LINE.match(line) or (self.no_acl and _ACL_LINE.match(line)):
                continue
            else:
                out.append(line)
        return b"".join(out)


def _run_psql(tool: Tool, url: DatabaseUrl, path: Path, gz: bool, no_owner: bool, no_acl: bool,
              session: Mapping[str, str] | None, server_major: int) -> None:
    """psql --single-transaction fed the script; on any exception (an interrupt too) psql is stopped
    (its transaction rolls back) before it goes on."""
    args = [str(tool.path), "-X", "-q", "-b", "-v", "ON_ERROR_STOP=1", "--single-transaction", "--no-password",
            f"--dbname={url.conninfo()}", "-f", "-"]
    env = tool_env({**url.tool_env(), "PGOPTIONS": _pgoptions(session)}, server_major=server_major)
    proc = spawn(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        _feed_psql(proc, path, gz, no_owner, no_acl)
    except BaseException:
        proc.stop()
        raise


def _feed_psql(proc: ToolProcess, path: Path, gz: bool, no_owner: bool, no_acl: bool) -> None:
    assert proc.stdin is not None and proc.stderr is not None
    errors = StderrTail(proc.stderr)
    inflater = zlib.decompressobj(31) if gz else None
    filt = _PlainFilter(no_acl) if no_owner else None
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                data = inflater.decompress(chunk) if inflater else chunk
                if filt:
                    data = filt.feed(data)
                proc.stdin.write(data)
            tail = inflater.flush() if inflater else b""
            if filt:
                tail = filt.feed(tail) + filt.flush()
            proc.stdin.write(tail)
    except (BrokenPipeError, OSError):
        pass  # psql stopped on an error: its exit status says why
    with contextlib.suppress(BrokenPipeError, OSError):
        proc.stdin.close()
    rc = proc.wait()
    if rc != 0:
        raise RestoreFailed(f"psql failed (the whole restore was rolled back): "
                            f"{mask_secrets(_psql_failure(errors.text))}")


def analyze(url: DatabaseUrl, jobs: int | None = None) -> float:
    """ANALYZE every user table (a restore has no statistics), largest first, over `jobs` connections
    (default: CPU count), as `vacuumdb --analyze-only --jobs` does; returns seconds."""
    t0 = time.monotonic()
    with catalog.connect(url, autocommit=True, application="pgrunbook-analyze") as conn:
        rows = conn.execute(f"""
            SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'm', 'p') AND {catalog.USER_SCHEMAS}
            ORDER BY pg_total_relation_size(c.oid) DESC""").fetchall()
    tables = [(str(a), str(b)) for a, b in rows]
    workers = max(1, min(jobs or os.cpu_count() or 1, len(tables)))
    lock = threading.Lock()
    errors: list[BaseException] = []
    conns: list[psycopg.Connection[Any]] = []

    def work() -> None:
        try:
            with catalog.connect(url, autocommit=True, application="pgrunbook-analyze") as conn:
                with lock:
                    conns.append(conn)
                conn.execute("SET maintenance_work_mem = '256MB'")
                while True:
                    with lock:
                        if not tables or errors:
                            return
                        schema, name = tables.pop(0)
                    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, name)))
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=work, name=f"analyze-{i}", daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException as stop:  # interrupted: no further table, and cancel the ANALYZEs running
        with lock:
            errors.append(stop)
            running = list(conns)
        for conn in running:
            with contextlib.suppress(psycopg.Error, OSError):
                conn.cancel_safe(timeout=5)
        for t in threads:
            t.join(timeout=10)
        raise
    if errors:
        exc = errors[0]
        raise exc if isinstance(exc, PgrunbookError) else PgrunbookError(
            f"ANALYZE failed: {mask_secrets(str(exc).strip())}")
    return time.monotonic() - t0


# --------------------------------------------------------------------------- the restore
@contextlib.contextmanager
def _work_dir(base: str | None) -> Iterator[Path]:
    root = Path(base or os.environ.get("PGRUNBOOK_WORK_DIR") or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="pgrunbook-restore-", dir=root))
    guard = guard_path(path)  # removed by the guardian should pgrunbook be killed
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        guard.release()


def resolve_target(target_url: str | None, settings: Settings) -> DatabaseUrl:
    return DatabaseUrl.parse(target_url or settings.new_database_url,
                             what="target database URL (--target-url or NEW_DATABASE_URL)")


def run_restore(opts: RestoreOptions, settings: Settings | None = None) -> RestoreResult:
    """Restore an archive into an empty database, or raise before touching it (see module doc)."""
    settings = settings or Settings.from_env()
    t0 = time.monotonic()
    ref = ArchiveRef.from_uri(opts.file)
    target = resolve_target(opts.target_url, settings)
    if not opts.force:
        raise UsageError(f"restore would load {ref.uri} into {target.display()}: pass --force to confirm "
                         "the target (it must be a new, empty database)")
    if opts.jobs is not None and opts.jobs < 1:
        raise UsageError("--jobs must be at least 1")

    if not ref.store.exists(ref.key):
        raise StoreError(f"{ref.uri} not found")
    manifest = ref.manifest()
    fmt = manifest.archive_format if manifest else ref.format
    runbook_file = fmt == "plain" and manifest is None
    expected = ref.expected_sha256()
    result = RestoreResult(archive=ref.uri, target=target.display(), format=fmt, manifest=manifest)
    if expected is None:
        if runbook_file:
            msg = f"{ref.name}{SHA256_SUFFIX} is missing: the archive's integrity cannot be checked"
            log.warning(msg)
            result.warnings.append(msg)
        else:
            raise ChecksumMismatch(f"{ref.uri}{SHA256_SUFFIX} is missing: a pgrunbook backup always has one, so "
                                   "this backup is incomplete or was tampered with; refusing to restore it")
    if manifest is None and fmt != "plain":
        raise PgrunbookError(f"{ref.uri}{MANIFEST_SUFFIX} is missing: the backup did not finish; "
                             "refusing to restore it")

    production = _production_identity(settings, result)
    needs = _needs_of(manifest)
    info = _inspect_target(target, needs)
    allow_no_owner = opts.no_owner or opts.skip_missing_roles
    verdict = _check_target(target, info, needs, allow_no_owner, production)
    missing_roles = verdict.missing_roles
    no_owner = opts.no_owner or bool(missing_roles)
    result.missing_roles = missing_roles
    for msg in verdict.warnings:
        log.warning(msg)
        result.warnings.append(msg)
    if missing_roles:
        msg = (f"roles missing on the target: {_names(missing_roles)}; restoring without ownership and "
               "without grants (--no-owner)")
        log.warning(msg)
        result.warnings.append(msg)
    no_owner = _foreign_owners(verdict, no_owner, info, result)
    no_acl = bool(missing_roles)
    if runbook_file and opts.no_owner:
        no_acl = True  # a runbook file does not say which roles its grants need
        msg = "--no-owner on a runbook file: ownership and grants are both skipped"
        log.warning(msg)
        result.warnings.append(msg)
    pg_tool = find_tool("psql" if fmt == "plain" else "pg_restore",
                        min_major=max(info.identity.major, needs.source_major or 0), pg_bin=settings.pg_bin)

    with _work_dir(opts.work_dir) as work:
        # 1. the archive: fetched once, hashed on the way, proven readable
        td = time.monotonic()
        log.info("fetching the archive", extra={"archive": ref.uri})
        try:
            fetched = _fetch(ref, fmt, work)
        except _UnreadableTar as exc:  # damaged bytes break the tar before the hash is compared: compare it here
            if expected is None or exc.sha256 == expected:
                raise
            fetched = _Fetched(path=work, sha256=exc.sha256, bytes=0)
        result.sha256, result.bytes = fetched.sha256, fetched.bytes
        if expected is not None and fetched.sha256 != expected:
            raise ChecksumMismatch(f"{ref.name} hashes to {fetched.sha256} but {ref.name}{SHA256_SUFFIX} says "
                                   f"{expected}: the archive is damaged or incomplete; refusing to restore it")
        if manifest is not None and (manifest.sha256 != fetched.sha256 or manifest.bytes != fetched.bytes):
            raise ChecksumMismatch(
                f"the manifest describes a different archive ({manifest.bytes} bytes, sha256 {manifest.sha256}) "
                f"than {ref.name} ({fetched.bytes} bytes, sha256 {fetched.sha256}): manifest and archive come from "
                "different backups; refusing to restore")
        if fmt == "plain":
            major, exts = _scan_plain(fetched.path, gz=ref.name.endswith(".gz"))
            extra = _Needs(source_major=major, extensions=exts)
        else:
            toc = _toc_of(pg_tool, fetched.path)
            if manifest is not None:
                missing = missing_table_data(manifest, toc)
                if missing:
                    raise PgrunbookError(f"the archive lacks data for tables in its manifest: {', '.join(missing[:5])}")
            result.tables = table_data_count(toc)
            # a version 1 manifest recorded no owners: read them from the archive's entries
            owners = toc_owners(toc, manifest.roles) if manifest is not None and manifest.owners is None else None
            extra = _Needs(extensions=toc_extensions(toc), owners=owners, system_acls=toc_system_acls(toc))
        no_owner = _foreign_owners(_check_target(target, info, extra, allow_no_owner), no_owner, info, result)
        result.download_seconds = time.monotonic() - td

        # 2. still empty and unmarked (no other restore got there meanwhile)? then mark and load
        with catalog.connect(target, autocommit=True, application="pgrunbook-restore") as conn:
            objects = target_objects(conn)
            refuse_marked(target, database_mark(conn))
        if objects:
            raise PgrunbookError(f"the target {target.display()} stopped being empty ({', '.join(objects[:5])})")
        jobs = opts.jobs or os.cpu_count() or 1
        session = {**info.session_extras, **(opts.session_settings or {})}
        result.jobs = 1 if fmt == "plain" else jobs
        major = info.identity.major
        try:
            started = datetime.now(UTC).isoformat(timespec="seconds")
            _set_mark(target, f"{MARK_IN_PROGRESS} (from {ref.uri}, started {started})")
            tr = time.monotonic()
            log.info("restoring", extra={"archive": ref.uri, "target": target.display(), "format": fmt,
                                         "jobs": result.jobs})
            if fmt == "plain":
                _run_psql(pg_tool, target, fetched.path, ref.name.endswith(".gz"), no_owner, no_acl, session, major)
            else:
                _run_pg_restore(pg_tool, target, fetched.path, jobs, no_owner, no_acl, session, major)
            result.restore_seconds = time.monotonic() - tr
            if opts.analyze:
                result.analyze_seconds = analyze(target, jobs)
        except BaseException as exc:
            # the tools are stopped by now (_run_pg_restore, _run_psql): the mark is the last word
            if isinstance(exc, Interrupted):
                reason = f"interrupted by {exc.signal_name}"
            else:
                reason = str(exc) if isinstance(exc, PgrunbookError) else f"{type(exc).__name__}: {exc}"
            _set_mark(target, f"{MARK_FAILED} ({datetime.now(UTC).isoformat(timespec='seconds')}, "
                              f"from {ref.uri}): {mask_secrets(reason)[:900]}")
            if isinstance(exc, Interrupted):
                db = catalog.ident(target.dbname)
                exc.detail = (f"the restore into {target.display()} was stopped and the target is marked FAILED "
                              f"(interrupted); drop and recreate it (DROP DATABASE {db}; CREATE DATABASE {db}) "
                              "before restoring again")
            raise
        _set_mark(target, None, only_if_ours=True)
    result.seconds = time.monotonic() - t0
    log.info("restore finished", extra={"target": target.display(), "seconds": round(result.seconds, 2)})
    return result
