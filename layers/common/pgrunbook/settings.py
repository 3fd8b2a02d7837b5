"""Settings: one frozen dataclass, built once from the environment, failing loudly.

Nothing reads os.environ at import time; call `Settings.from_env()` where the work starts
(the CLI's main, a handler's first line) and pass the result down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import UsageError

KINDS = ("scheduled", "manual", "pre-migration", "cutover")  # cutover: the final backup of a frozen source
COMPRESSIONS = ("zstd", "gzip", "none")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    """Everything configurable by environment. Required values raise on first use."""

    database_url: str | None = None
    new_database_url: str | None = None
    backup_dest: str = "./backups"
    kms_key_id: str | None = None
    pg_bin: str | None = None
    compress_level: int = 1
    dump_jobs: int = 0  # 0 = choose by CPU count
    multipart_chunk_mb: int = 16
    min_free_space_factor: float = 1.5
    lock_wait_timeout: int = 120  # seconds a backup waits for a table lock (0: forever)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            new_database_url=env.get("NEW_DATABASE_URL") or None,
            backup_dest=env.get("PGRUNBOOK_BACKUP_DEST") or env.get("BACKUP_DEST") or "./backups",
            kms_key_id=env.get("PGRUNBOOK_KMS_KEY_ID") or env.get("BACKUP_KMS_KEY_ID") or None,
            pg_bin=env.get("PGRUNBOOK_PG_BIN") or None,
            compress_level=_int(env, "PGRUNBOOK_COMPRESS_LEVEL", 1),
            dump_jobs=_int(env, "PGRUNBOOK_DUMP_JOBS", 0),
            multipart_chunk_mb=_int(env, "PGRUNBOOK_MULTIPART_CHUNK_MB", 16),
            lock_wait_timeout=_int(env, "PGRUNBOOK_LOCK_WAIT_TIMEOUT", 120),
        )

    def require(self, name: str) -> str:
        value = getattr(self, name)
        if not value:
            raise UsageError(f"setting {name} is required but not set")
        return str(value)
