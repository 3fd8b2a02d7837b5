"""Benchmark data: three sizes (about 0.1, 1.25 and 5 GB) of three data mixes, each in its own local server.

    .venv/bin/python bench/datagen.py [--scale small|medium|large] [--mix events|md5|wide|all] [--force]

Sizes (`--scale`, or BENCH_SCALE): `small` (~0.1 GB, a quick check of the benchmark itself), `medium`
(~1.25 GB, the benchmark database of docs/architecture.md; `full` is its old name and still works) and
`large` (~5 GB). Each size has the same proportions of the same data mix. Mixes (`--mix`, or BENCH_MIX):

- `events`: `pgbench -i -s N` plus an `events` table (numbers, short text, a small jsonb, timestamps),
  a primary key and a composite index: the original benchmark database;
- `md5`:    `pgbench -i -s N` plus a `docs` table of md5 text, a jsonb object and a repeated-word text
  column, a primary key and a composite index (the second mix of issue 14);
- `wide`:   wide, TOAST-heavy rows (several kB each): compressible text, incompressible hex, a
  jsonb document of a few kB, a primary key and one index.

Each (mix, size) is a PostgreSQL data directory under `bench/.data/<name>/` (git-ignored; name: the
size for `events` — `small`, `full` for medium, `large` — else `<mix>-<size>`), generated once and
reused: a `ready.json` next to it records the password and what was generated (it is regenerated when
the recipe changes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "layers" / "common"))

from pgrunbook.pgserver import LocalServer  # noqa: E402

DATA_ROOT = HERE / ".data"
DBNAME = "benchdb"
FORMAT_VERSION = 2  # bump when the generated data of every mix changes (the recipe is also compared)

MIXES = ("events", "md5", "wide")
SIZES = ("small", "medium", "large")
ALIASES = {"full": "medium"}
SCALE_CHOICES = (*SIZES, *ALIASES)
MIX_CHOICES = (*MIXES, "all")


@dataclass(frozen=True)
class Scale:
    """One generated database: a mix at a size. `rows` is the mix's own table (events, docs or wide)."""

    mix: str
    size: str
    pgbench_scale: int
    rows: int

    @property
    def name(self) -> str:
        """Its directory under bench/.data (the events mix keeps the historical names small/full)."""
        if self.mix == "events":
            return "full" if self.size == "medium" else self.size
        return f"{self.mix}-{self.size}"

    @property
    def events(self) -> int:  # the historical name of `rows`
        return self.rows

    def recipe(self) -> dict[str, object]:
        if self.mix == "events":  # the keys ready.json had before mixes existed: the 1.25 GB data is kept
            return {"pgbench_scale": self.pgbench_scale, "events": self.rows}
        return {"mix": self.mix, "pgbench_scale": self.pgbench_scale, "rows": self.rows}


# (pgbench scale, rows of the mix's own table) per size; medium is the reference, small ~1/12, large 4x.
_RECIPES = {
    "events": {"small": (4, 160_000), "medium": (50, 2_000_000), "large": (200, 8_000_000)},
    "md5": {"small": (4, 160_000), "medium": (50, 2_000_000), "large": (200, 8_000_000)},
    "wide": {"small": (0, 18_000), "medium": (0, 230_000), "large": (0, 920_000)},
}


def scale_for(scale: str, mix: str = "events") -> Scale:
    size = ALIASES.get(scale, scale)
    if size not in SIZES or mix not in MIXES:
        raise ValueError(f"unknown scale/mix: {scale}/{mix}")
    pgbench_scale, rows = _RECIPES[mix][size]
    return Scale(mix=mix, size=size, pgbench_scale=pgbench_scale, rows=rows)


def mixes_for(mix: str) -> list[str]:
    return list(MIXES) if mix == "all" else [mix]


# the events mix as before (`SCALES[name]` is kept for callers that know the old names)
SCALES = {name: scale_for(name) for name in SCALE_CHOICES}

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
EVENTS_INDEX = "CREATE INDEX events_account_created_idx ON events (account_id, created_at)"

# The second mix: md5 text, a jsonb object and a repeated-word text column.
MD5_DDL = """
CREATE TABLE docs (
    id       bigint PRIMARY KEY,
    grp      integer NOT NULL,
    hash     text NOT NULL,
    attrs    jsonb NOT NULL,
    words    text NOT NULL
)
"""
MD5_FILL = """
INSERT INTO docs (id, grp, hash, attrs, words)
SELECT g, g % 1000, md5(g::text || random()::text),
       jsonb_build_object('id', g, 'tag', md5(g::text), 'n', (random() * 1000)::int, 'ok', g % 2 = 0),
       repeat((ARRAY['alpha ','beta ','gamma ','delta ','epsilon '])[1 + g % 5], 1 + g % 12)
FROM generate_series(%(start)s, %(stop)s) AS g
"""
MD5_INDEX = "CREATE INDEX docs_grp_hash_idx ON docs (grp, hash)"

# Wide rows: ~3 kB of compressible prose (TOASTed, pglz-compressed), 2 kB of random hex (not
# compressible), a ~1.5 kB jsonb document.
WIDE_DDL = """
CREATE TABLE wide (
    id       bigint PRIMARY KEY,
    owner    integer NOT NULL,
    title    text NOT NULL,
    body     text NOT NULL,
    blob     text NOT NULL,
    doc      jsonb NOT NULL,
    created  timestamptz NOT NULL
)
"""
WIDE_FILL = """
INSERT INTO wide (id, owner, title, body, blob, doc, created)
SELECT g, (random() * 9999)::int, 'document ' || g,
       repeat('The quick brown fox ' || (g % 97) || ' jumps over the lazy dog. ', 40 + g % 40),
       (SELECT string_agg(md5(g::text || ':' || i || random()::text), '') FROM generate_series(1, 64) AS i),
       (SELECT jsonb_object_agg('field_' || i, jsonb_build_object('v', (g * i) % 1000, 'label', 'value ' || i,
                                                                  'h', substr(md5((g + i)::text), 1, 8)))
        FROM generate_series(1, 20) AS i),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute'
FROM generate_series(%(start)s, %(stop)s) AS g
"""
WIDE_INDEX = "CREATE INDEX wide_owner_created_idx ON wide (owner, created)"

_MIX_SQL = {
    "events": (EVENTS_DDL, EVENTS_FILL, EVENTS_INDEX, 500_000),
    "md5": (MD5_DDL, MD5_FILL, MD5_INDEX, 500_000),
    "wide": (WIDE_DDL, WIDE_FILL, WIDE_INDEX, 20_000),
}


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


def rotating(names: list[str], reps: int, db: BenchDb) -> Iterator[tuple[int, str]]:
    """(repetition, name) for every name once per repetition, the order rotating from one repetition to the
    next, each after a CHECKPOINT on `db`: what every alternating measurement of the benchmark runs on."""
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            db.psql("CHECKPOINT", dbname="postgres")
            yield rep, name


def _paths(scale: Scale) -> tuple[Path, Path]:
    root = DATA_ROOT / scale.name
    return root / "pgdata", root / "ready.json"


def _generate(db: BenchDb) -> None:
    scale = db.scale
    ddl, fill, index, step = _MIX_SQL[scale.mix]
    t0 = time.monotonic()
    db.psql(f"CREATE DATABASE {DBNAME}", dbname="postgres")
    if scale.pgbench_scale:
        print(f"datagen: {scale.name}: pgbench -i -s {scale.pgbench_scale} ...", flush=True)
        subprocess.run([str(db.bin_dir / "pgbench"), "-i", "-q", "-s", str(scale.pgbench_scale),
                        "-h", "127.0.0.1", "-p", str(db.server.port), "-U", db.server.superuser, DBNAME],
                       env=db.env(), check=True, stdout=subprocess.DEVNULL)
    print(f"datagen: {scale.name}: {scale.mix} table ({scale.rows} rows) ...", flush=True)
    db.psql(ddl)
    for start in range(1, scale.rows + 1, step):
        stop = min(start + step - 1, scale.rows)
        db.psql(fill.replace("%(start)s", str(start)).replace("%(stop)s", str(stop)))
    db.psql(index)
    db.psql("VACUUM (ANALYZE, FREEZE)")
    db.psql("CHECKPOINT")
    size = db.psql(f"SELECT pg_database_size('{DBNAME}')")
    print(f"datagen: {scale.name}: done in {time.monotonic() - t0:.0f}s, database {int(size) / 1e9:.2f} GB",
          flush=True)


def _is_current(scale: Scale, info: dict[str, object] | None) -> bool:
    if info is None or info.get("format") != FORMAT_VERSION:
        return False
    return all(info.get(k) == v for k, v in scale.recipe().items())


def ensure(scale_name: str = "medium", *, mix: str = "events", force: bool = False) -> BenchDb:
    """Start the benchmark server of a mix and size (generating its data first if needed). The caller stops it."""
    scale = scale_for(scale_name, mix)
    data_dir, marker = _paths(scale)
    info = json.loads(marker.read_text()) if marker.exists() else None
    if force or not _is_current(scale, info) or not data_dir.exists():
        if data_dir.exists():
            stale = LocalServer(data_dir=data_dir)
            stale.destroy()
        marker.unlink(missing_ok=True)
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        server = LocalServer(data_dir=data_dir)
        server.init().start()
        db = BenchDb(server=server, scale=scale)
        try:
            _generate(db)
        except BaseException:
            server.destroy()
            raise
        marker.write_text(json.dumps({"format": FORMAT_VERSION, "password": server.password, **scale.recipe()}))
        return db
    assert info is not None
    server = LocalServer(data_dir=data_dir, password=str(info["password"]))
    pidfile = data_dir / "postmaster.pid"
    if pidfile.exists():  # left over from an interrupted run: stop it (its port is unknown)
        try:
            server.stop()
        except Exception:
            pidfile.unlink(missing_ok=True)
    server.start()
    return BenchDb(server=server, scale=scale)


def remove(scale_name: str, mix: str = "events") -> None:
    data_dir, marker = _paths(scale_for(scale_name, mix))
    LocalServer(data_dir=data_dir).destroy()
    marker.unlink(missing_ok=True)
    shutil.rmtree(data_dir.parent, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=SCALE_CHOICES, default=os.environ.get("BENCH_SCALE", "medium"))
    parser.add_argument("--mix", choices=MIX_CHOICES, default=os.environ.get("BENCH_MIX", "events"))
    parser.add_argument("--force", action="store_true", help="regenerate even if the data is there")
    parser.add_argument("--remove", action="store_true", help="delete the generated data")
    args = parser.parse_args()
    for mix in mixes_for(args.mix):
        if args.remove:
            remove(args.scale, mix)
            continue
        db = ensure(args.scale, mix=mix, force=args.force)
        try:
            print(db.psql("SELECT relname, n_live_tup FROM pg_stat_user_tables ORDER BY 1"))
            print(f"{db.scale.name}: {int(db.psql(f'SELECT pg_database_size({DBNAME!r})')) / 1e9:.2f} GB")
        finally:
            db.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
