"""The backup manifest: what an archive holds, written beside it as `<archive>.manifest.json`.

Schema: `schemas/manifest-v1.json` (documented in docs/manifest.md). The manifest is
written last, so its presence marks a finished backup; restore and verify read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema

from .errors import PgrunbookError

MANIFEST_SUFFIX = ".manifest.json"
SHA256_SUFFIX = ".sha256"
MANIFEST_VERSION = 1


@cache
def _validator() -> Any:
    schema = json.loads(resources.files("pgrunbook").joinpath("schemas/manifest-v1.json").read_text())
    return fastjsonschema.compile(schema)


@dataclass(frozen=True)
class Manifest:
    data: dict[str, Any]

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str = "manifest") -> Manifest:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PgrunbookError(f"{where} is not valid JSON: {exc}") from None
        return cls.validated(data, where=where)

    @classmethod
    def validated(cls, data: dict[str, Any], *, where: str = "manifest") -> Manifest:
        try:
            _validator()(data)
        except fastjsonschema.JsonSchemaException as exc:
            raise PgrunbookError(f"{where} does not match the manifest schema: {exc}") from None
        return cls(data)

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=False) + "\n"

    # convenient views -------------------------------------------------------------
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
        return dict(self.data["tables"])

    @property
    def sequences(self) -> dict[str, int | None]:
        return dict(self.data["sequences"])

    @property
    def finished_at(self) -> str:
        return str(self.data["finished_at"])

    @property
    def source(self) -> dict[str, Any]:
        return dict(self.data["source"])

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
        raise PgrunbookError(f"{where} holds no sha256 digest")
    return first[0].lower()
