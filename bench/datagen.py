"""Benchmark data: a ~1.2 GB database (`pgbench -i -s 50` plus a 2-million-row `events` table).

The database lives in a local PostgreSQL server whose data directory is under
`bench/.data/<scale>/` (git-ignored). It is generated once and reused by later runs: a
`ready.json` next to the data directory records the password and what was generated.

    .venv/bin/python bench/datagen.py [--scale full|small] [--force]

`full` is the benchmark database of docs/architecture.md (Benchmark reference); `small` (pgbench scale 2, 100k events)
is for a quick check of the benchmark itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "layers" / "common"))

from pgrunbook.pgserver import LocalServer  # noqa: E402

DATA_ROOT = HERE / ".data"
DBNAME = "benchdb"
FORMAT_VERSION = 2  # bump when the generated data changes


@dataclass(frozen=True)
class Scale:
    name: str
    pgbench_scale: int
    events: int


SCALES = {
    "full": Scale("full", pgbench_scale=50, events=2_000_000),
    "small": Scale("small", pgbench_scale=2, events=100_000),
}

EVENTS_DDL = """
CREATE TABLE events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  integer NOT NULL,
    kind        text NOT NULL,
    source      text NOT NULL,
    amount      numeric(14, 2),
    payload     jsonb NOT NULL,
    note        text,
    created_at  timestamptz NOT NULL,
    updated_at  timestamp
)
"""

# Mixed data, tuned so that the dump compresses like the reference measurements of
# docs/architecture.md (zstd:1 about 0.8 of gzip -6): random parts (accounts, amounts,
# microsecond timestamps, hex session ids) next to repetitive ones (kinds, sources, json
# keys, sequential text).
EVENTS_FILL = """
INSERT INTO events (account_id, kind, source, amount, payload, note, created_at, updated_at)
SELECT 1 + (random() * 499999)::int,
       (ARRAY['login','logout','purchase','refund','page_view','signup','password_reset',
              'api_call','export','invite'])[1 + (g % 10)],
       (ARRAY['web','ios','android','api','batch'])[1 + (g % 5)],
       round((random() * 1000)::numeric, 2),
       jsonb_build_object('user', g % 1000, 'session', substr(md5(g::text), 1, 24), 'v', g % 7),
       CASE WHEN g % 4 = 0 THEN NULL ELSE 'event ' || g END,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '15 seconds' + random() * interval '15 seconds',
       CASE WHEN g % 10 = 0 THEN timestamp '2024-01-01 00:00:00' + g * interval '16 seconds' END
FROM generate_series(%(start)s, %(stop)s) AS g
"""


@dataclass
class BenchDb:
    server: LocalServer
    scale: Scale

    @property
    def url(self) -> str:
        return self.server.url(DBNAME)

    @property
    def bin_dir(self) -> Path:
        return self.server.bin_dir

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PGPASSWORD"] = self.server.password
        env.pop("DATABASE_URL", None)
        return env

    def psql(self, sql: str, dbname: str = DBNAME) -> str:
        out = subprocess.run([str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                              "-h", "127.0.0.1", "-p", str(self.server.port), "-U", self.server.superuser,
                              "-d", dbname, "-c", sql],
                             env=self.env(), capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def stop(self) -> None:
        self.server.stop()


def _paths(scale: Scale) -> tuple[Path, Path]:
    root = DATA_ROOT / scale.name
    return root / "pgdata", root / "ready.json"


def _generate(db: BenchDb) -> None:
    scale = db.scale
    t0 = time.monotonic()
    db.psql(f"CREATE DATABASE {DBNAME}", dbname="postgres")
    print(f"datagen: pgbench -i -s {scale.pgbench_scale} ...", flush=True)
    subprocess.run([str(db.bin_dir / "pgbench"), "-i", "-q", "-s", str(scale.pgbench_scale),
                    "-h", "127.0.0.1", "-p", str(db.server.port), "-U", db.server.superuser, DBNAME],
                   env=db.env(), check=True, stdout=subprocess.DEVNULL)
    print(f"datagen: events ({scale.events} rows) ...", flush=True)
    db.psql(EVENTS_DDL)
    step = 500_000
    for start in range(1, scale.events + 1, step):
        stop = min(start + step - 1, scale.events)
        db.psql(EVENTS_FILL.replace("%(start)s", str(start)).replace("%(stop)s", str(stop)))
    db.psql("CREATE INDEX events_account_created_idx ON events (account_id, created_at)")
    db.psql("VACUUM (ANALYZE, FREEZE)")
    db.psql("CHECKPOINT")
    size = db.psql(f"SELECT pg_database_size('{DBNAME}')")
    print(f"datagen: done in {time.monotonic() - t0:.0f}s, database {int(size) / 1e9:.2f} GB", flush=True)


def ensure(scale_name: str = "full", *, force: bool = False) -> BenchDb:
    """Start the benchmark server (generating its data first if needed). The caller stops it."""
    scale = SCALES[scale_name]
    data_dir, marker = _paths(scale)
    info = json.loads(marker.read_text()) if marker.exists() else None
    if force or info is None or info.get("format") != FORMAT_VERSION or not data_dir.exists():
        if data_dir.exists():
            stale = LocalServer(data_dir=data_dir)
            stale.destroy()
        marker.unlink(missing_ok=True)
        server = LocalServer(data_dir=data_dir)
        server.init().start()
        db = BenchDb(server=server, scale=scale)
        try:
            _generate(db)
        except BaseException:
            server.destroy()
            raise
        marker.write_text(json.dumps({"format": FORMAT_VERSION, "password": server.password,
                                      "pgbench_scale": scale.pgbench_scale, "events": scale.events}))
        return db
    server = LocalServer(data_dir=data_dir, password=info["password"])
    pidfile = data_dir / "postmaster.pid"
    if pidfile.exists():  # left over from an interrupted run: stop it (its port is unknown)
        try:
            server.stop()
        except Exception:
            pidfile.unlink(missing_ok=True)
    server.start()
    return BenchDb(server=server, scale=scale)


def remove(scale_name: str) -> None:
    data_dir, marker = _paths(SCALES[scale_name])
    LocalServer(data_dir=data_dir).destroy()
    marker.unlink(missing_ok=True)
    shutil.rmtree(data_dir.parent, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default=os.environ.get("BENCH_SCALE", "full"))
    parser.add_argument("--force", action="store_true", help="regenerate even if the data is there")
    parser.add_argument("--remove", action="store_true", help="delete the generated data")
    args = parser.parse_args()
    if args.remove:
        remove(args.scale)
        return 0
    db = ensure(args.scale, force=args.force)
    try:
        print(db.psql("SELECT relname, n_live_tup FROM pg_stat_user_tables ORDER BY 1"))
        print(f"size: {int(db.psql(f'SELECT pg_database_size({DBNAME!r})')) / 1e9:.2f} GB")
    finally:
        db.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
