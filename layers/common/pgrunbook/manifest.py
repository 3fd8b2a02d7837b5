"""The backup manifest: what an archive holds, written beside it as `<archive>.manifest.json`.

Schema: `schemas/manifest-v2.json` (documented in docs/manifest.md); version 1 manifests
(`schemas/manifest-v1.json`) stay readable. The manifest is written last, so its presence marks a
finished backup; restore and verify read it.

Invariants:
- Version 2 keeps names as data: tables and sequences are objects with separate `schema` and
  `name` (tables also their OID), so no two tables share a key, whatever their names hold.
- Readers never look inside `data` for tables or sequences: they use the views below, which
  key both versions by `key(schema, name)` (`dbinfo.display_name` for version 2, the old
  "schema.name" text for version 1), so one comparison works for either version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema

from .dbinfo import TableRef, display_name, legacy_name
from .errors import ManifestInvalid

MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)
_PRISMA_TABLE = "_prisma_migrations"


@cache
def _validator(version: int = MANIFEST_VERSION) -> Any:
    text = resources.files("pgrunbook").joinpath(f"schemas/manifest-v{version}.json").read_text()
    return fastjsonschema.compile(json.loads(text))


def contents(counts: dict[TableRef, int], sequences: dict[tuple[str, str], int | None]) -> dict[str, Any]:
    """The `tables`, `totals` and `sequences` sections of a version 2 manifest, from the catalog reads."""
    tables = [{"schema": t.schema, "name": t.name, "oid": t.oid, "rows": rows}
              for t, rows in sorted(counts.items(), key=lambda item: (item[0].schema, item[0].name))]
    seqs = [{"schema": schema, "name": name, "last_value": value}
            for (schema, name), value in sorted(sequences.items())]
    return {"tables": tables, "totals": {"tables": len(tables), "rows": sum(counts.values())}, "sequences": seqs}


@dataclass(frozen=True)
class Manifest:
    data: dict[str, Any]

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str = "manifest") -> Manifest:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ManifestInvalid(f"{where} is not valid JSON: {exc}") from None
        return cls.validated(data, where=where)

    @classmethod
    def validated(cls, data: dict[str, Any], *, where: str = "manifest") -> Manifest:
        version = data.get("manifest_version") if isinstance(data, dict) else None
        if version not in READABLE_VERSIONS:
            raise ManifestInvalid(f"{where} has manifest_version {version!r}: this pgrunbook reads versions "
                                 f"{', '.join(map(str, READABLE_VERSIONS))}")
        try:
            _validator(version)(data)
        except fastjsonschema.JsonSchemaException as exc:
            raise ManifestInvalid(f"{where} does not match the manifest schema: {exc}") from None
        if version >= 2:
            for section in ("tables", "sequences"):
                keys = [(e["schema"], e["name"]) for e in data[section]]
                if len(set(keys)) != len(keys):
                    raise ManifestInvalid(f"{where} lists a {section[:-1]} twice")
            oids = [e["oid"] for e in data["tables"]]
            if len(set(oids)) != len(oids):
                raise ManifestInvalid(f"{where} lists a table OID twice")
        return cls(data)

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=False) + "\n"

    # convenient views -------------------------------------------------------------
    @property
    def version(self) -> int:
        return int(self.data["manifest_version"])

    def key(self, schema: str, name: str) -> str:
        """How this manifest's views key a table or sequence (see the module doc)."""
        return display_name(schema, name) if self.version >= 2 else legacy_name(schema, name)

    @property
    def kind(self) -> str:
        return str(self.data["kind"])

    @property
    def archive_name(self) -> str:
        return str(self.data["archive"]["name"])

    @property
    def archive_format(self) -> str:
        return str(self.data["archive"]["format"])

    @property
    def sha256(self) -> str:
        return str(self.data["archive"]["sha256"])

    @property
    def bytes(self) -> int:
        return int(self.data["archive"]["bytes"])

    @property
    def tables(self) -> dict[str, int]:
        """key -> exact row count."""
        if self.version >= 2:
            return {self.key(t["schema"], t["name"]): int(t["rows"]) for t in self.data["tables"]}
        return {str(k): int(v) for k, v in self.data["tables"].items()}

    @property
    def table_oids(self) -> dict[int, str] | None:
        """Source OID -> key of every table (None for version 1, which did not record OIDs)."""
        if self.version < 2:
            return None
        return {int(t["oid"]): self.key(t["schema"], t["name"]) for t in self.data["tables"]}

    @property
    def sequences(self) -> dict[str, int | None]:
        """key -> last_value (None: never used)."""
        if self.version >= 2:
            return {self.key(s["schema"], s["name"]): s["last_value"] for s in self.data["sequences"]}
        return dict(self.data["sequences"])

    @property
    def roles(self) -> list[str]:
        """Roles that own or are granted objects in the archive."""
        return [str(r) for r in self.data["source"].get("roles") or []]

    @property
    def owners(self) -> list[str] | None:
        """Roles that own objects in the archive (None for version 1, which recorded only `roles`)."""
        owners = self.data["source"].get("owners")
        return None if owners is None else [str(r) for r in owners]

    @property
    def schemas(self) -> list[dict[str, Any]] | None:
        """Schemas holding objects: name, owner (None: the public schema's default), object_owners
        (None when the manifest did not record them)."""
        schemas = self.data["source"].get("schemas")
        return None if schemas is None else [dict(s) for s in schemas]

    @property
    def finished_at(self) -> str:
        return str(self.data["finished_at"])

    @property
    def source(self) -> dict[str, Any]:
        return dict(self.data["source"])

    @property
    def prisma_schema(self) -> str | None:
        prisma = self.data.get("prisma")
        if prisma is None:
            return None
        if "schema" in prisma:
            return str(prisma["schema"])
        return str(prisma["table"]).removesuffix("." + _PRISMA_TABLE)  # version 1: "schema._prisma_migrations"

    @property
    def prisma_migrations(self) -> list[dict[str, Any]] | None:
        prisma = self.data.get("prisma")
        return None if prisma is None else list(prisma["migrations"])


def sha256_line(digest: str, name: str) -> str:
    """One line in `sha256sum` format (two spaces: text mode), as `sha256sum -c` reads it."""
    return f"{digest}  {name}\n"


def parse_sha256_file(text: str, *, where: str = ".sha256 file") -> str:
    first = text.strip().split()
    if not first or len(first[0]) != 64 or any(c not in "0123456789abcdefABCDEF" for c in first[0]):
        raise ManifestInvalid(f"{where} holds no sha256 digest")
    return first[0].lower()
