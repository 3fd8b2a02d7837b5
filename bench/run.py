"""`make bench`: pgrunbook's backup and restore against the runbook's own commands, same run, same data.

    .venv/bin/python bench/run.py [--scale small|medium|large] [--mix events|md5|wide|all] [--reps N]
                                  [--restore-reps N] [--no-restore] [--no-backup] [--no-s3] [--no-fresh]
    make bench [SCALE=small|medium|large] [MIX=events|md5|wide|all] [REPS=N]

Sizes and mixes are bench/datagen.py's (`full` = `medium`, the default; each database is generated
once and kept under bench/.data/). For each mix, on that mix's server, after a CHECKPOINT and in
alternating order per repetition:

- baseline:   `pg_dump "$URL" | gzip > file.sql.gz` (the runbook's command, a shell pipeline)
- pgrunbook:  `pgrunbook backup --to <folder> --json` (the CLI as a user runs it)
- nocount:    the same CLI with the exact row counting replaced by zeros (benchmark-only, to
              measure what counting adds; nothing in the package changes)

then pgrunbook runs sampled every 20 ms with psutil for the peak RSS of its own process tree
(python + pg_dump workers): to a folder, and to S3 on a local moto server (a separate process,
not counted). Then the restore benchmark (bench/restore_bench.py: `gunzip | psql` against
`pgrunbook restore` into a new database on the same server, the verify of that copy against the
manifest, a fresh restore-tuned instance and the drill). Medians are reported; ratios are
baseline/pgrunbook; s/GB is per GB of `pg_database_size`. Prints a table per mix and one JSON line
for the whole run (with its wall time), also saved to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "layers" / "common"))

import datagen  # noqa: E402

RESULTS = HERE / "results"
WORK = HERE / ".data" / "work"
VENV_BIN = Path(sys.executable).parent
TARGETS = {"time_ratio": 3.5, "size_ratio": 0.85, "peak_rss_mb": 150.0, "counting_overhead_pct": 10.0}

# Runs the real CLI, with the exact counts replaced by zeros (same tables, same manifest shape): the
# snapshot method (count(*)) is chosen and its count(*) replaced, so neither method runs.
NOCOUNT_SHIM = """
import os
import sys
import pgrunbook.dbinfo as dbinfo
os.environ["PGRUNBOOK_COUNT_METHOD"] = "snapshot"
def _zero_counts(conn, tables, *args, **kwargs):
    return {t: 0 for t in tables}
dbinfo.exact_counts = _zero_counts
from pgrunbook.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Sample:
    seconds: float
    bytes: int
    extra: dict[str, Any] = field(default_factory=dict)


def _pgrunbook_cmd() -> list[str]:
    exe = VENV_BIN / "pgrunbook"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pgrunbook.cli"]


def checkpoint(db: datagen.BenchDb) -> None:
    db.psql("CHECKPOINT", dbname="postgres")


def _clean(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


def run_baseline_backup(db: datagen.BenchDb, out_dir: Path) -> Sample:
    """The runbook: pg_dump "$DATABASE_URL" | gzip > "$OUT" (bash pipeline, gzip -6)."""
    _clean(out_dir)
    out = out_dir / "db-backup.sql.gz"
    env = db.env()
    env["DATABASE_URL"] = db.url
    env["OUT"] = str(out)
    env["PATH"] = f"{db.bin_dir}{os.pathsep}{env.get('PATH', '')}"
    t0 = time.perf_counter()
    subprocess.run(["bash", "-c", 'set -euo pipefail; pg_dump "$DATABASE_URL" | gzip > "$OUT"'],
                   env=env, check=True)
    seconds = time.perf_counter() - t0
    return Sample(seconds=seconds, bytes=out.stat().st_size)


def _backup_argv(db: datagen.BenchDb, dest: str) -> list[str]:
    return ["-q", "backup", "--database-url", db.url, "--to", dest, "--json"]


def run_pgrunbook_backup(db: datagen.BenchDb, out_dir: Path, *, counting: bool = True,
                         sample_rss: bool = False, env: dict[str, str] | None = None,
                         dest: str | None = None) -> Sample:
    """`pgrunbook backup` to `out_dir` (emptied first) or to `dest` (an S3 URI, with `env`)."""
    if dest is None:
        _clean(out_dir)
        dest = str(out_dir)
    env = env or db.env()
    argv = _pgrunbook_cmd() + _backup_argv(db, dest) if counting else \
        [sys.executable, "-c", NOCOUNT_SHIM, *_backup_argv(db, dest)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = [0]
    stop = threading.Event()
    sampler = None
    if sample_rss:
        sampler = threading.Thread(target=_sample_tree_rss, args=(proc.pid, peak, stop), daemon=True)
        sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    stop.set()
    if sampler:
        sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"pgrunbook backup failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    result = json.loads(out)
    extra = {"counts_seconds": result.get("counts_seconds"), "format": result.get("format"),
             "inner_seconds": result.get("seconds"), "rows": result.get("rows")}
    if sample_rss:
        extra["peak_rss_bytes"] = peak[0]
    return Sample(seconds=seconds, bytes=int(result["bytes"]), extra=extra)


def _sample_tree_rss(pid: int, peak: list[int], stop: threading.Event, every: float = 0.02) -> None:
    """Peak of the summed RSS of a process and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        peak[0] = max(peak[0], total)
        stop.wait(every)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def alternate(reps: int, runners: dict[str, Callable[[], Sample]], db: datagen.BenchDb,
              label: str) -> dict[str, list[Sample]]:
    """Run every runner once per repetition, rotating the order, each after a CHECKPOINT."""
    names = list(runners)
    samples: dict[str, list[Sample]] = {n: [] for n in names}
    for rep, name in datagen.rotating(names, reps, db):
        s = runners[name]()
        samples[name].append(s)
        print(f"  {label} rep {rep + 1}/{reps} {name:<10} {s.seconds:7.2f}s {s.bytes / 1e6:9.1f} MB"
              + (f"  counts {s.extra['counts_seconds']:.2f}s" if s.extra.get("counts_seconds") else ""),
              flush=True)
    return samples


def _moto_server() -> tuple[subprocess.Popen[bytes], str]:
    """A moto S3 server in its own process (its memory and CPU are not pgrunbook's)."""
    from pgrunbook.pgserver import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "import sys\nfrom moto.server import ThreadedMotoServer\n"
                             f"s = ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False)\n"
                             "s.start()\nsys.stdin.read()\ns.stop()"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            return proc, endpoint
        except urllib.error.HTTPError:  # it answers
            return proc, endpoint
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the moto server did not start") from None
            time.sleep(0.1)


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


def bench_s3_rss(db: datagen.BenchDb, runs: int = 1) -> dict[str, Any]:
    """Peak RSS of `pgrunbook backup --to s3://...` against a local moto server, and its time."""
    import boto3

    proc, endpoint = _moto_server()
    try:
        env = {**db.env(), **S3_ENV, "AWS_ENDPOINT_URL": endpoint}
        env.pop("AWS_PROFILE", None)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="bench")  # noqa: S106 - moto
        samples = []
        for i in range(runs):
            checkpoint(db)
            samples.append(run_pgrunbook_backup(db, WORK / "s3-unused", sample_rss=True, env=env,
                                                dest=f"s3://bench/run{i}"))
        peak = max(int(s.extra["peak_rss_bytes"]) for s in samples)
        return {"peak_rss_mb": round(peak / 1e6, 1), "seconds": [round(s.seconds, 3) for s in samples],
                "bytes": samples[-1].bytes, "format": samples[-1].extra.get("format")}
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench_backup(db: datagen.BenchDb, reps: int) -> dict[str, Any]:
    base_dir, ours_dir, nocount_dir = WORK / "baseline", WORK / "pgrunbook", WORK / "nocount"
    # warm up once (page cache, the tools' first start), not measured
    checkpoint(db)
    run_pgrunbook_backup(db, ours_dir)
    samples = alternate(reps, {
        "baseline": lambda: run_baseline_backup(db, base_dir),
        "pgrunbook": lambda: run_pgrunbook_backup(db, ours_dir),
        "nocount": lambda: run_pgrunbook_backup(db, nocount_dir, counting=False),
    }, db, "backup")
    checkpoint(db)
    rss_runs = [run_pgrunbook_backup(db, ours_dir, sample_rss=True) for _ in range(2)]
    for d in (base_dir, ours_dir, nocount_dir):
        shutil.rmtree(d, ignore_errors=True)

    base_t = median([s.seconds for s in samples["baseline"]])
    ours_t = median([s.seconds for s in samples["pgrunbook"]])
    noc_t = median([s.seconds for s in samples["nocount"]])
    base_b = samples["baseline"][-1].bytes
    ours_b = samples["pgrunbook"][-1].bytes
    peak = max(int(s.extra["peak_rss_bytes"]) for s in rss_runs)
    counts_s = median([float(s.extra["counts_seconds"] or 0) for s in samples["pgrunbook"]])
    return {
        "baseline_seconds": [round(s.seconds, 3) for s in samples["baseline"]],
        "pgrunbook_seconds": [round(s.seconds, 3) for s in samples["pgrunbook"]],
        "nocount_seconds": [round(s.seconds, 3) for s in samples["nocount"]],
        "baseline_median_s": round(base_t, 3),
        "pgrunbook_median_s": round(ours_t, 3),
        "nocount_median_s": round(noc_t, 3),
        "baseline_bytes": base_b,
        "pgrunbook_bytes": ours_b,
        "format": samples["pgrunbook"][-1].extra.get("format"),
        "counts_seconds_median": round(counts_s, 3),
        "time_ratio": round(base_t / ours_t, 2),
        "size_ratio": round(ours_b / base_b, 3),
        "peak_rss_mb": round(peak / 1e6, 1),
        "counting_overhead_pct": round(100 * (ours_t - noc_t) / noc_t, 1),
        # the same from each repetition's own pair of runs (they ran back to back), which is
        # steadier than the ratio of medians when other work comes and goes on the machine
        "time_ratio_paired": round(median([b.seconds / o.seconds for b, o in
                                           zip(samples["baseline"], samples["pgrunbook"], strict=True)]), 2),
        "counting_overhead_paired_pct": round(100 * median([o.seconds / n.seconds - 1 for o, n in
                                                            zip(samples["pgrunbook"], samples["nocount"],
                                                                strict=True)]), 1),
    }


def bench_restore(db: datagen.BenchDb, reps: int, scale: str, *, fresh: bool = True) -> dict[str, Any]:
    """The restore benchmark (bench/restore_bench.py)."""
    import restore_bench

    return restore_bench.bench_restore(db=db, reps=reps, scale=scale, work=WORK, fresh=fresh)


def _row(name: str, value: str, target: str, ok: bool | None) -> str:
    mark = "" if ok is None else ("PASS" if ok else "MISS")
    return f"  {name:<52} {value:>14}   {target:<10} {mark}"


def report_mix(mix: str, part: dict[str, Any]) -> str:
    gb = part["database_bytes"] / 1e9
    lines = [f"  {part['name']}: mix {mix}, database {gb:.2f} GB"]
    b = part.get("backup")
    if b:
        lines += [
            "",
            "  backup",
            _row("pg_dump | gzip", f"{b['baseline_median_s']:.2f} s", "", None),
            _row(f"pgrunbook backup ({b['format']})", f"{b['pgrunbook_median_s']:.2f} s", "", None),
            _row("  s/GB (pg_dump | gzip / pgrunbook)",
                 f"{b['baseline_median_s'] / gb:.2f}/{b['pgrunbook_median_s'] / gb:.2f}", "", None),
            _row("pgrunbook backup, no counting", f"{b['nocount_median_s']:.2f} s", "", None),
            _row("time ratio (faster by)", f"{b['time_ratio']:.2f}x", ">= 3.5x",
                 b["time_ratio"] >= TARGETS["time_ratio"]),
            _row("  per-repetition pairs (median)", f"{b['time_ratio_paired']:.2f}x", "", None),
            _row("size ratio", f"{b['size_ratio']:.3f}", "<= 0.85", b["size_ratio"] <= TARGETS["size_ratio"]),
            _row("archive sizes (gzip / pgrunbook)",
                 f"{b['baseline_bytes'] / 1e6:.1f}/{b['pgrunbook_bytes'] / 1e6:.1f} MB", "", None),
            _row("peak RSS, folder (python + pg_dump tree)", f"{b['peak_rss_mb']:.1f} MB", "<= 150 MB",
                 b["peak_rss_mb"] <= TARGETS["peak_rss_mb"]),
            _row("counting overhead", f"{b['counting_overhead_pct']:.1f} %", "<= 10 %",
                 b["counting_overhead_pct"] <= TARGETS["counting_overhead_pct"]),
            _row("  per-repetition pairs (median)", f"{b['counting_overhead_paired_pct']:.1f} %", "", None),
            _row("counts_seconds (in manifest run)", f"{b['counts_seconds_median']:.2f} s", "", None),
        ]
    s3 = part.get("s3")
    if s3:
        lines.append(_row("peak RSS, S3 on moto (python + pg_dump tree)", f"{s3['peak_rss_mb']:.1f} MB",
                          "<= 150 MB", s3["peak_rss_mb"] <= TARGETS["peak_rss_mb"]))
    r = part.get("restore")
    if r:
        lines += ["", "  restore"]
        for row in r.get("table", []):
            lines.append(_row(row["name"], row["value"], row.get("target", ""), row.get("ok")))
    return "\n".join(lines)


def report(result: dict[str, Any]) -> str:
    lines = [
        f"pgrunbook benchmark ({result['scale']}, {result['cpus']} CPUs, load {result['load_before']} -> "
        f"{result['load_after']}; medians of {result['reps']} backup / {result.get('restore_reps', '-')} "
        f"restore repetitions; {result['elapsed_seconds'] / 60:.1f} min)",
    ]
    for mix, part in result["runs"].items():
        lines += ["", report_mix(mix, part)]
    return "\n".join(lines)


DEFAULT_REPS = {"small": (2, 1), "medium": (5, 3), "large": (2, 2)}  # (backup, restore) repetitions


def bench_mix(args: argparse.Namespace, mix: str, reps: int, restore_reps: int) -> dict[str, Any]:
    print(f"bench: preparing the {args.scale} {mix} database (generated once, kept in bench/.data/)", flush=True)
    db = datagen.ensure(args.scale, mix=mix)
    try:
        WORK.mkdir(parents=True, exist_ok=True)
        part: dict[str, Any] = {"name": db.scale.name,
                                "database_bytes": int(db.psql(f"SELECT pg_database_size('{datagen.DBNAME}')"))}
        gb = part["database_bytes"] / 1e9
        if not args.no_backup:
            b = part["backup"] = bench_backup(db, reps)
            b["baseline_s_per_gb"] = round(b["baseline_median_s"] / gb, 2)
            b["pgrunbook_s_per_gb"] = round(b["pgrunbook_median_s"] / gb, 2)
            if not args.no_s3:
                part["s3"] = bench_s3_rss(db)
        if not args.no_restore:
            r = part["restore"] = bench_restore(db, restore_reps, args.scale, fresh=not args.no_fresh)
            r["baseline_s_per_gb"] = round(r["baseline_median_s"] / gb, 2)
            r["existing_s_per_gb"] = round(r["existing_median_s"] / gb, 2)
        return part
    finally:
        db.stop()
        shutil.rmtree(WORK, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=datagen.SCALE_CHOICES, default=os.environ.get("BENCH_SCALE") or "medium",
                        help="small ~0.1 GB, medium ~1.25 GB (default; `full` is its old name), large ~5 GB")
    parser.add_argument("--mix", choices=datagen.MIX_CHOICES, default=os.environ.get("BENCH_MIX") or "events",
                        help="data mix (bench/datagen.py; default events)")
    parser.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS") or "0") or None,
                        help="backup repetitions (default: 5 medium, 2 small and large)")
    parser.add_argument("--restore-reps", type=int, default=None,
                        help="restore repetitions (default: 3 medium, 2 large, 1 small)")
    parser.add_argument("--no-restore", action="store_true", help="backup only")
    parser.add_argument("--no-backup", action="store_true", help="restore only")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 (moto) RSS run")
    parser.add_argument("--no-fresh", action="store_true",
                        help="restore: skip the fresh local-instance runs and the drill")
    args = parser.parse_args()
    args.scale = datagen.ALIASES.get(args.scale, args.scale)
    reps = args.reps or DEFAULT_REPS[args.scale][0]
    restore_reps = args.restore_reps or DEFAULT_REPS[args.scale][1]

    started = datetime.now(UTC)
    t0 = time.monotonic()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    result: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"), "scale": args.scale, "mix": args.mix, "reps": reps,
        "cpus": os.cpu_count(), "host": platform.node(), "load_before": load_before, "runs": {},
    }
    if not args.no_restore:
        result["restore_reps"] = restore_reps
    for mix in datagen.mixes_for(args.mix):
        result["runs"][mix] = bench_mix(args, mix, reps, restore_reps)
    result["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    result["elapsed_seconds"] = round(time.monotonic() - t0, 1)
    result["pg_dump"] = subprocess.run([str(_server_bin() / "pg_dump"), "--version"], capture_output=True,
                                       text=True, check=True).stdout.strip()

    print()
    print(report(result))
    line = json.dumps(result, sort_keys=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench-{args.scale}-{args.mix}-{started:%Y%m%d-%H%M%S}.json"
    out.write_text(line + "\n")
    print()
    print(line)
    print(f"(saved to {out.relative_to(ROOT)}; the run took {result['elapsed_seconds'] / 60:.1f} min)")
    return 0


def _server_bin() -> Path:
    from pgrunbook.pgtools import server_binaries

    return server_binaries()


if __name__ == "__main__":
    sys.exit(main())
