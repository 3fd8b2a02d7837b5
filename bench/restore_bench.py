"""Restore benchmark: the runbook's `gunzip -c backup.sql.gz | psql` against `pgrunbook restore`, and the drill.

Called by bench/run.py (`bench_restore(db=..., reps=..., scale=..., work=...)`), or on its own:

    .venv/bin/python bench/restore_bench.py [--scale full|small] [--reps N]

On the benchmark database (bench/datagen.py), not timed: the runbook's `pg_dump | gzip` file and a
`pgrunbook backup` archive. Then per repetition, after a CHECKPOINT and in rotating order:

- baseline:  CREATE DATABASE on the benchmark server (default settings), then the runbook's
             `gunzip -c backup.sql.gz | psql -v ON_ERROR_STOP=1` (bash pipeline), timed;
- existing:  CREATE DATABASE on the same server, then `pgrunbook restore --force` of our archive
             (the CLI as a user runs it: checksum, guards, pg_restore -j, ANALYZE), timed;
- fresh:     a new local-instance provisioned restore-tuned (wal_level=minimal, no autovacuum; its
             start is reported, not in the restore time), then the same `pgrunbook restore`, timed;
             then reset to production settings + ANALYZE (reported).

and once: the whole `pgrunbook drill --provisioner local-instance` (provision -> restore -> reset ->
verify -> teardown). Ratios are baseline / pgrunbook (medians). Targets: existing >= 1.4x, fresh >= 1.7x.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "layers" / "common"))

import datagen  # noqa: E402

from pgrunbook.provision.local_instance import LocalInstanceProvisioner  # noqa: E402

TARGETS = {"existing_ratio": 1.4, "fresh_ratio": 1.7}
VENV_BIN = Path(sys.executable).parent


def _pgrunbook() -> list[str]:
    exe = VENV_BIN / "pgrunbook"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pgrunbook.cli"]


def _env(db: datagen.BenchDb) -> dict[str, str]:
    env = db.env()
    for name in ("DATABASE_URL", "NEW_DATABASE_URL"):
        env.pop(name, None)
    return env


def _fresh_db(db: datagen.BenchDb, name: str) -> str:
    db.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", dbname="postgres")
    db.psql(f"CREATE DATABASE {name}", dbname="postgres")
    return db.server.url(name)


def _drop_db(db: datagen.BenchDb, name: str) -> None:
    db.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", dbname="postgres")


def prepare(db: datagen.BenchDb, work: Path) -> tuple[Path, str, dict[str, Any]]:
    """The runbook's .sql.gz and our archive of the benchmark database (not timed)."""
    work.mkdir(parents=True, exist_ok=True)
    sql_gz = work / "db-backup.sql.gz"
    env = _env(db)
    env.update({"SRC": db.url, "OUT": str(sql_gz), "PATH": f"{db.bin_dir}{os.pathsep}{env.get('PATH', '')}"})
    subprocess.run(["bash", "-c", 'set -euo pipefail; pg_dump "$SRC" | gzip > "$OUT"'], env=env, check=True)
    ours = work / "ours"
    shutil.rmtree(ours, ignore_errors=True)
    out = subprocess.run([*_pgrunbook(), "-q", "backup", "--database-url", db.url, "--to", str(ours), "--json"],
                         env=_env(db), check=True, capture_output=True, text=True).stdout
    backup = json.loads(out)
    return sql_gz, str(backup["archive"]), backup


def run_baseline(db: datagen.BenchDb, sql_gz: Path) -> float:
    """The runbook's restore: gunzip -c "$FILE" | psql "$NEW_DATABASE_URL" (stop on the first error)."""
    url = _fresh_db(db, "bench_restore_base")
    env = _env(db)
    env.update({"FILE": str(sql_gz), "NEW_DATABASE_URL": url,
                "PATH": f"{db.bin_dir}{os.pathsep}{env.get('PATH', '')}"})
    t0 = time.perf_counter()
    subprocess.run(["bash", "-c", 'set -euo pipefail; gunzip -c "$FILE" | psql -X -q -v ON_ERROR_STOP=1 '
                    '"$NEW_DATABASE_URL" > /dev/null'], env=env, check=True)
    seconds = time.perf_counter() - t0
    _drop_db(db, "bench_restore_base")
    return seconds


def _pgrunbook_restore(db: datagen.BenchDb, archive: str, target_url: str, *extra: str) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    proc = subprocess.run([*_pgrunbook(), "-q", "restore", "--file", archive, "--target-url", target_url, "--force",
                           "--json", *extra], env=_env(db), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"pgrunbook restore failed: {proc.stderr[-2000:]}")
    return seconds, json.loads(proc.stdout)


def run_existing(db: datagen.BenchDb, archive: str) -> tuple[float, dict[str, Any]]:
    url = _fresh_db(db, "bench_restore_ours")
    try:
        return _pgrunbook_restore(db, archive, url)
    finally:
        _drop_db(db, "bench_restore_ours")


def run_fresh(db: datagen.BenchDb, archive: str, work: Path) -> tuple[float, dict[str, Any]]:
    provisioner = LocalInstanceProvisioner(work / "instances")
    t0 = time.perf_counter()
    target = provisioner.create(datagen.DBNAME)
    provision_s = time.perf_counter() - t0
    try:
        # as the drill does: the load, then production settings + ANALYZE (reported separately)
        seconds, out = _pgrunbook_restore(db, archive, target.url, "--no-analyze")
        t1 = time.perf_counter()
        provisioner.prepare_for_verify(target)
        out["provision_seconds"] = round(provision_s, 3)
        out["reset_analyze_seconds"] = round(time.perf_counter() - t1, 3)
        return seconds, out
    finally:
        provisioner.destroy(target)


def run_drill(db: datagen.BenchDb, archive: str, work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run([*_pgrunbook(), "-q", "drill", "--backup", archive, "--provisioner", "local-instance",
                           "--work-dir", str(work / "drill"), "--json"], env=_env(db), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise RuntimeError(f"pgrunbook drill failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout)
    return {"seconds": round(seconds, 3), "verified": out["verified"], "timings": out["timings"],
            "seconds_per_gb": out["seconds_per_gb"], "error": out.get("error")}


def breakdown(db: datagen.BenchDb, archive: str, work: Path, jobs: int = 2) -> dict[str, float]:
    """Where a restore's time goes on the existing server: pg_restore run section by section (pre-data:
    tables, types, functions; data: COPY; post-data: indexes, constraints incl. FK validation, triggers)
    with the same session settings; plus ANALYZE. (Sections run apart, so on a wal_level=minimal server the
    COPYs would not skip WAL: this runs on the default server only.)"""
    import tarfile

    from pgrunbook.dburl import DatabaseUrl
    from pgrunbook.restore import RESTORE_SESSION, analyze

    folder = work / "breakdown.d"
    shutil.rmtree(folder, ignore_errors=True)
    if archive.endswith(".tar"):
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
        source = str(folder)
    else:
        source = archive
    url = _fresh_db(db, "bench_restore_parts")
    target = DatabaseUrl.parse(url)
    env = _env(db)
    env["PGOPTIONS"] = " ".join(f"-c {k}={v}" for k, v in RESTORE_SESSION.items())
    parts: dict[str, float] = {}
    try:
        for section in ("pre-data", "data", "post-data"):
            t0 = time.perf_counter()
            subprocess.run([str(db.bin_dir / "pg_restore"), f"--dbname={target.conninfo()}", "--exit-on-error",
                            f"--section={section}", f"--jobs={1 if section == 'pre-data' else jobs}", source],
                           env=env, check=True)
            parts[section] = round(time.perf_counter() - t0, 3)
        parts["analyze"] = round(analyze(target, jobs), 3)
    finally:
        _drop_db(db, "bench_restore_parts")
        shutil.rmtree(folder, ignore_errors=True)
    return parts


def bench_restore(*, db: datagen.BenchDb, reps: int, scale: str, work: Path) -> dict[str, Any]:
    root = work / "restore"
    print("restore: preparing the runbook's .sql.gz and a pgrunbook archive (not timed)", flush=True)
    sql_gz, archive, backup = prepare(db, root)
    samples: dict[str, list[float]] = {"baseline": [], "existing": [], "fresh": []}
    details: dict[str, list[dict[str, Any]]] = {"existing": [], "fresh": []}
    names = list(samples)
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            db.psql("CHECKPOINT", dbname="postgres")
            if name == "baseline":
                seconds = run_baseline(db, sql_gz)
            elif name == "existing":
                seconds, out = run_existing(db, archive)
                details[name].append(out)
            else:
                seconds, out = run_fresh(db, archive, root)
                details[name].append(out)
            samples[name].append(seconds)
            print(f"  restore rep {rep + 1}/{reps} {name:<9} {seconds:7.2f}s", flush=True)
    parts = None
    if os.environ.get("BENCH_RESTORE_BREAKDOWN"):
        db.psql("CHECKPOINT", dbname="postgres")
        parts = breakdown(db, archive, root)
        print(f"  breakdown (existing server): {parts}", flush=True)
    db.psql("CHECKPOINT", dbname="postgres")
    drill = run_drill(db, archive, root)
    print(f"  drill {drill['seconds']:.2f}s verified={drill['verified']}", flush=True)
    shutil.rmtree(root, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in samples.items()}
    # `existing` runs the CLI as a user does, with its ANALYZE; the runbook's restore leaves no statistics,
    # so the ratio compares the restore without it (wall time minus analyze_seconds); both are printed.
    existing_load = statistics.median([s - float(d["analyze_seconds"])
                                       for s, d in zip(samples["existing"], details["existing"], strict=True)])
    existing_ratio = med["baseline"] / existing_load
    existing_ratio_all = med["baseline"] / med["existing"]
    fresh_ratio = med["baseline"] / med["fresh"]
    fresh_all = statistics.median([s + float(d["reset_analyze_seconds"])
                                   for s, d in zip(samples["fresh"], details["fresh"], strict=True)])
    last_fresh = details["fresh"][-1]
    last_existing = details["existing"][-1]
    table = [
        {"name": "gunzip -c x.sql.gz | psql (runbook)", "value": f"{med['baseline']:.2f} s"},
        {"name": f"pgrunbook restore, existing server ({backup['format']})", "value": f"{med['existing']:.2f} s"},
        {"name": "  of which pg_restore / ANALYZE",
         "value": f"{last_existing['restore_seconds']:.2f}/{last_existing['analyze_seconds']:.2f} s"},
        {"name": "ratio, new database on existing server", "value": f"{existing_ratio:.2f}x",
         "target": ">= 1.4x", "ok": existing_ratio >= TARGETS["existing_ratio"]},
        {"name": "  the same including ANALYZE", "value": f"{existing_ratio_all:.2f}x"},
        {"name": "pgrunbook restore, fresh local-instance", "value": f"{med['fresh']:.2f} s"},
        {"name": "  provision / reset+ANALYZE (not in ratio)",
         "value": f"{last_fresh['provision_seconds']:.2f}/{last_fresh['reset_analyze_seconds']:.2f} s"},
        {"name": "ratio, fresh restore-tuned target", "value": f"{fresh_ratio:.2f}x",
         "target": ">= 1.7x", "ok": fresh_ratio >= TARGETS["fresh_ratio"]},
        {"name": "  the same including reset + ANALYZE", "value": f"{med['baseline'] / fresh_all:.2f}x"},
        {"name": "drill (local-instance, end to end)", "value": f"{drill['seconds']:.2f} s",
         "target": "verified", "ok": bool(drill["verified"])},
        {"name": "drill seconds per GB", "value": f"{drill['seconds_per_gb']} s/GB"},
    ]
    return {
        "scale": scale, "archive_format": backup["format"], "archive_bytes": backup["bytes"],
        "sql_gz_bytes": sql_gz.stat().st_size if sql_gz.exists() else None,
        "baseline_seconds": [round(s, 3) for s in samples["baseline"]],
        "existing_seconds": [round(s, 3) for s in samples["existing"]],
        "fresh_seconds": [round(s, 3) for s in samples["fresh"]],
        "baseline_median_s": round(med["baseline"], 3), "existing_median_s": round(med["existing"], 3),
        "fresh_median_s": round(med["fresh"], 3),
        "existing_ratio": round(existing_ratio, 2), "fresh_ratio": round(fresh_ratio, 2),
        "existing_ratio_with_analyze": round(existing_ratio_all, 2),
        "fresh_ratio_with_reset_analyze": round(med["baseline"] / fresh_all, 2),
        "existing_last": last_existing, "fresh_last": last_fresh, "drill": drill, "breakdown": parts,
        "table": table,
    }


def _attach_or_start(scale: str) -> tuple[datagen.BenchDb, bool]:
    """The benchmark server: attach to it when already running (never stop someone else's), else start it."""
    from pgrunbook.pgserver import LocalServer

    data_dir = datagen.DATA_ROOT / scale / "pgdata"
    marker = datagen.DATA_ROOT / scale / "ready.json"
    pidfile = data_dir / "postmaster.pid"
    if pidfile.exists() and marker.exists():
        try:
            port = int(pidfile.read_text().splitlines()[3])
            server = LocalServer(data_dir=data_dir, port=port, password=json.loads(marker.read_text())["password"])
            db = datagen.BenchDb(server=server, scale=datagen.SCALES[scale])
            db.psql("SELECT 1")
            print(f"restore bench: attached to the running benchmark server on port {port}", flush=True)
            return db, False
        except (OSError, ValueError, IndexError, RuntimeError):
            pass
    return datagen.ensure(scale), True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(datagen.SCALES), default=os.environ.get("BENCH_SCALE", "full"))
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default: 3 full, 1 small)")
    parser.add_argument("--breakdown", action="store_true", help="also time pg_restore section by section")
    args = parser.parse_args()
    if args.breakdown:
        os.environ["BENCH_RESTORE_BREAKDOWN"] = "1"
    reps = args.reps or (3 if args.scale == "full" else 1)
    db, started = _attach_or_start(args.scale)
    work = HERE / ".data" / "restore-work"
    try:
        result = bench_restore(db=db, reps=reps, scale=args.scale, work=work)
    finally:
        if started:
            db.stop()
        shutil.rmtree(work, ignore_errors=True)
    print()
    for row in result["table"]:
        mark = "" if row.get("ok") is None else ("PASS" if row["ok"] else "MISS")
        print(f"  {row['name']:<46} {row['value']:>12}   {row.get('target', ''):<10} {mark}")
    print(json.dumps({k: v for k, v in result.items() if k != "table"}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
