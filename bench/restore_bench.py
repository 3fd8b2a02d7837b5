"""Restore benchmark: the runbook's `gunzip -c backup.sql.gz | psql` against `pgrunbook restore`, and the drill.

Called by bench/run.py (`bench_restore(db=..., reps=..., scale=..., work=...)`), or on its own:

    .venv/bin/python bench/restore_bench.py [--scale small|medium|large] [--mix events|md5|wide] [--reps N]
                                            [--no-fresh] [--breakdown] [--tune [VARIANT ...]]

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
The first `existing` copy is also checked with `pgrunbook verify` against the manifest (timed).

`--tune` instead alternates the runbook, `pgrunbook restore` and `pg_restore` variants (VARIANTS: job
counts and session settings on top of the package's) and traces one `--verbose` run per variant: each
item's time, the WAL written and the checkpoints (docs/benchmarks.md, where a restore's time goes).
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


def run_existing(db: datagen.BenchDb, archive: str, *, verify: bool = False) -> tuple[float, dict[str, Any]]:
    """`pgrunbook restore` into a new database on the benchmark server; with `verify`, then
    `pgrunbook verify` of that copy against the archive's manifest (timed apart: `verify_seconds`)."""
    url = _fresh_db(db, "bench_restore_ours")
    try:
        seconds, out = _pgrunbook_restore(db, archive, url)
        if verify:
            t0 = time.perf_counter()
            proc = subprocess.run([*_pgrunbook(), "-q", "verify", "--database-url", url, "--manifest", archive,
                                   "--json"], env=_env(db), capture_output=True, text=True)
            out["verify_seconds"] = round(time.perf_counter() - t0, 3)
            out["verify_exit"] = proc.returncode
            if proc.returncode != 0:
                raise RuntimeError(f"pgrunbook verify failed: {(proc.stdout + proc.stderr)[-2000:]}")
        return seconds, out
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


def bench_restore(*, db: datagen.BenchDb, reps: int, scale: str, work: Path, fresh: bool = True) -> dict[str, Any]:
    root = work / "restore"
    print("restore: preparing the runbook's .sql.gz and a pgrunbook archive (not timed)", flush=True)
    sql_gz, archive, backup = prepare(db, root)
    sql_gz_bytes = sql_gz.stat().st_size
    samples: dict[str, list[float]] = {"baseline": [], "existing": [], "fresh": []}
    if not fresh:
        del samples["fresh"]
    details: dict[str, list[dict[str, Any]]] = {"existing": [], "fresh": []}
    names = list(samples)
    for rep, name in datagen.rotating(names, reps, db):
        if name == "baseline":
            seconds = run_baseline(db, sql_gz)
        elif name == "existing":
            seconds, out = run_existing(db, archive, verify=not details[name])
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
    drill = None
    if fresh:
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
    last_existing = details["existing"][-1]
    verify_s = details["existing"][0].get("verify_seconds")
    table = [
        {"name": "gunzip -c x.sql.gz | psql (runbook)", "value": f"{med['baseline']:.2f} s"},
        {"name": f"pgrunbook restore, existing server ({backup['format']})", "value": f"{med['existing']:.2f} s"},
        {"name": "  of which pg_restore / ANALYZE",
         "value": f"{last_existing['restore_seconds']:.2f}/{last_existing['analyze_seconds']:.2f} s"},
        {"name": "ratio, new database on existing server", "value": f"{existing_ratio:.2f}x",
         "target": ">= 1.4x", "ok": existing_ratio >= TARGETS["existing_ratio"]},
        {"name": "  per-repetition pairs (median)", "value": f"{_paired(samples, details):.2f}x"},
        {"name": "  the same including ANALYZE", "value": f"{existing_ratio_all:.2f}x"},
        {"name": "pgrunbook verify of the restored copy", "value": f"{verify_s:.2f} s"},
    ]
    result: dict[str, Any] = {
        "scale": scale, "archive_format": backup["format"], "archive_bytes": backup["bytes"],
        "sql_gz_bytes": sql_gz_bytes,
        "baseline_seconds": [round(s, 3) for s in samples["baseline"]],
        "existing_seconds": [round(s, 3) for s in samples["existing"]],
        "baseline_median_s": round(med["baseline"], 3), "existing_median_s": round(med["existing"], 3),
        "existing_ratio": round(existing_ratio, 2), "existing_ratio_paired": round(_paired(samples, details), 2),
        "existing_ratio_with_analyze": round(existing_ratio_all, 2), "verify_seconds": verify_s,
        "existing_last": last_existing, "breakdown": parts, "table": table,
    }
    if fresh and drill is not None:
        fresh_ratio = med["baseline"] / med["fresh"]
        fresh_all = statistics.median([s + float(d["reset_analyze_seconds"])
                                       for s, d in zip(samples["fresh"], details["fresh"], strict=True)])
        last_fresh = details["fresh"][-1]
        table += [
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
        result.update({
            "fresh_seconds": [round(s, 3) for s in samples["fresh"]], "fresh_median_s": round(med["fresh"], 3),
            "fresh_ratio": round(fresh_ratio, 2),
            "fresh_ratio_with_reset_analyze": round(med["baseline"] / fresh_all, 2),
            "fresh_last": last_fresh, "drill": drill,
        })
    return result


def _paired(samples: dict[str, list[float]], details: dict[str, list[dict[str, Any]]]) -> float:
    """Median of each repetition's own baseline / (existing without ANALYZE) pair."""
    return statistics.median([b / (e - float(d["analyze_seconds"])) for b, e, d in
                              zip(samples["baseline"], samples["existing"], details["existing"], strict=True)])


# --------------------------------------------------------------------------- tuning (`--tune`)
# Variants of the pg_restore run itself, on top of the package's own session settings (RESTORE_SESSION and,
# as restore.guards adds them on this superuser-run, lz4-built server: wal_compression and
# default_toast_compression lz4); each is a (jobs, session) pair.
PACKAGE_EXTRAS = {"wal_compression": "lz4", "default_toast_compression": "lz4"}
VARIANTS: dict[str, tuple[int, dict[str, str]]] = {
    "j2": (2, {}),
    "j2-pmw0": (2, {"max_parallel_maintenance_workers": "0"}),
    "j3": (3, {}),
    "j4": (4, {}),
    "j2-pglz": (2, {"default_toast_compression": "pglz"}),
    "j2-nowalc": (2, {"wal_compression": "off"}),
    "j2-mwm128": (2, {"maintenance_work_mem": "128MB"}),
    "j2-mwm1g": (2, {"maintenance_work_mem": "1GB"}),
}


def _extract(archive: str, folder: Path) -> str:
    import tarfile

    if not archive.endswith(".tar"):
        return archive
    shutil.rmtree(folder, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return str(folder)


def _server_stats(db: datagen.BenchDb) -> tuple[int, int]:
    """(WAL position in bytes, checkpoints so far: timed + requested) of the benchmark server."""
    out = db.psql("SELECT pg_current_wal_lsn() - '0/0', num_timed + num_requested FROM pg_stat_checkpointer",
                  dbname="postgres")
    wal, ckpt = out.split("|")
    return int(float(wal)), int(ckpt)


def run_variant(db: datagen.BenchDb, source: str, jobs: int, session: dict[str, str],
                trace: bool = False) -> dict[str, Any]:
    """pg_restore -j `jobs` of an extracted archive into a new database with RESTORE_SESSION + `session`;
    with `trace`, --verbose and each stderr line's time (per-item durations from launching/finished)."""
    import re

    from pgrunbook.dburl import DatabaseUrl
    from pgrunbook.restore import RESTORE_SESSION

    url = _fresh_db(db, "bench_restore_var")
    env = _env(db)
    settings = {**RESTORE_SESSION, **PACKAGE_EXTRAS, **session}
    env["PGOPTIONS"] = " ".join(f"-c {k}={v}" for k, v in settings.items())
    argv = [str(db.bin_dir / "pg_restore"), f"--dbname={DatabaseUrl.parse(url).conninfo()}", "--exit-on-error",
            f"--jobs={jobs}", *(["--verbose"] if trace else []), source]
    wal0, ck0 = _server_stats(db)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[tuple[float, str]] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append((time.perf_counter() - t0, line.rstrip()))
    rc = proc.wait()
    seconds = time.perf_counter() - t0
    wal1, ck1 = _server_stats(db)
    _drop_db(db, "bench_restore_var")
    if rc != 0:
        raise RuntimeError(f"pg_restore failed: {lines[-5:]}")
    out: dict[str, Any] = {"seconds": round(seconds, 3), "wal_mb": round((wal1 - wal0) / 1e6), "checkpoints": ck1 - ck0}
    if trace:
        started: dict[str, float] = {}
        items: list[tuple[float, str]] = []
        first_parallel = None
        for at, text in lines:
            m = re.search(r"(launching|finished) item (\d+) (.+)$", text)
            if not m:
                continue
            if m.group(1) == "launching":
                started[m.group(2)] = at
                first_parallel = at if first_parallel is None else first_parallel
            elif m.group(2) in started:
                items.append((at - started.pop(m.group(2)), m.group(3)))
        kinds: dict[str, float] = {}
        for dur, what in items:
            kind = re.sub(r" (public|pg_catalog) .*$", "", what)
            kinds[kind] = round(kinds.get(kind, 0.0) + dur, 2)
        out["serial_pre_data_s"] = round(first_parallel or 0.0, 2)
        out["item_seconds_by_kind"] = kinds
        out["slowest_items"] = [(round(d, 2), w) for d, w in sorted(items, reverse=True)[:8]]
    return out


def tune(db: datagen.BenchDb, reps: int, variants: list[str], work: Path) -> dict[str, Any]:
    """Alternate the runbook's restore and pg_restore variants (each after a CHECKPOINT), then one traced
    run per variant: the evidence for the settings in pgtools.PgRestore / restore.RESTORE_SESSION."""
    root = work / "tune"
    sql_gz, archive, _backup = prepare(db, root)
    source = _extract(archive, root / "extracted")
    names = ["baseline", "pgrunbook", *variants]
    times: dict[str, list[float]] = {n: [] for n in names}
    extra: dict[str, list[dict[str, Any]]] = {n: [] for n in variants}
    for rep, name in datagen.rotating(names, reps, db):
        if name == "baseline":
            seconds = run_baseline(db, sql_gz)
        elif name == "pgrunbook":
            total, out = run_existing(db, archive)
            seconds = total - float(out["analyze_seconds"])
        else:
            jobs, session = VARIANTS[name]
            res = run_variant(db, source, jobs, session)
            extra[name].append(res)
            seconds = res["seconds"]
        times[name].append(seconds)
        print(f"  tune rep {rep + 1}/{reps} {name:<10} {seconds:7.2f}s  load {os.getloadavg()[0]:.2f}"
              + (f"  wal {extra[name][-1]['wal_mb']} MB ckpt {extra[name][-1]['checkpoints']}"
                 if name in extra else ""), flush=True)
    traces = {}
    for name in variants:
        db.psql("CHECKPOINT", dbname="postgres")
        jobs, session = VARIANTS[name]
        traces[name] = run_variant(db, source, jobs, session, trace=True)
        print(f"  trace {name}: {json.dumps(traces[name])}", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    med = {n: statistics.median(v) for n, v in times.items()}
    paired = {n: round(statistics.median([b / x for b, x in zip(times["baseline"], times[n], strict=True)]), 2)
              for n in names if n != "baseline"}
    return {"seconds": {n: [round(x, 2) for x in v] for n, v in times.items()},
            "median": {n: round(v, 2) for n, v in med.items()}, "ratio_paired": paired, "traces": traces}


def _attach_or_start(scale: str, mix: str = "events") -> tuple[datagen.BenchDb, bool]:
    """The benchmark server: attach to it when already running (never stop someone else's), else start it."""
    from pgrunbook.pgserver import LocalServer

    spec = datagen.scale_for(scale, mix)
    data_dir = datagen.DATA_ROOT / spec.name / "pgdata"
    marker = datagen.DATA_ROOT / spec.name / "ready.json"
    pidfile = data_dir / "postmaster.pid"
    if pidfile.exists() and marker.exists():
        try:
            port = int(pidfile.read_text().splitlines()[3])
            server = LocalServer(data_dir=data_dir, port=port, password=json.loads(marker.read_text())["password"])
            db = datagen.BenchDb(server=server, scale=spec)
            db.psql("SELECT 1")
            print(f"restore bench: attached to the running benchmark server on port {port}", flush=True)
            return db, False
        except (OSError, ValueError, IndexError, RuntimeError):
            pass
    return datagen.ensure(scale, mix=mix), True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=datagen.SCALE_CHOICES, default=os.environ.get("BENCH_SCALE") or "medium")
    parser.add_argument("--mix", choices=datagen.MIXES, default=os.environ.get("BENCH_MIX") or "events")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default: 3 medium, 1 otherwise)")
    parser.add_argument("--breakdown", action="store_true", help="also time pg_restore section by section")
    parser.add_argument("--no-fresh", action="store_true", help="skip the fresh local-instance runs and the drill")
    parser.add_argument("--tune", nargs="*", metavar="VARIANT", default=None,
                        help=f"alternate pg_restore variants against the runbook instead ({', '.join(VARIANTS)})")
    args = parser.parse_args()
    if args.breakdown:
        os.environ["BENCH_RESTORE_BREAKDOWN"] = "1"
    reps = args.reps or (3 if datagen.ALIASES.get(args.scale, args.scale) == "medium" else 1)
    db, started = _attach_or_start(args.scale, args.mix)
    work = HERE / ".data" / f"restore-work-{os.getpid()}"
    try:
        if args.tune is not None:
            unknown = [v for v in args.tune if v not in VARIANTS]
            if unknown:
                parser.error(f"unknown variants: {', '.join(unknown)}")
            out = tune(db, reps, args.tune or list(VARIANTS), work)
            print(json.dumps({"scale": args.scale, "mix": args.mix, "load": os.getloadavg(), **out}, sort_keys=True))
            return 0
        result = bench_restore(db=db, reps=reps, scale=args.scale, work=work, fresh=not args.no_fresh)
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
