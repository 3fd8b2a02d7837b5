"""`make bench`: pgrunbook's backup against the runbook's own `pg_dump | gzip`, same run, same data.

    .venv/bin/python bench/run.py [--scale full|small] [--reps N] [--no-restore]

Starts the benchmark server (bench/datagen.py generates the database on the first run and
keeps it under bench/.data/), then for each repetition, after a CHECKPOINT and in
alternating order:

- baseline:   `pg_dump "$URL" | gzip > file.sql.gz` (the runbook's command, a shell pipeline)
- pgrunbook:  `pgrunbook backup --to <folder> --json` (the CLI as a user runs it)
- nocount:    the same CLI with the exact row counting replaced by zeros (benchmark-only, to
              measure what counting adds; nothing in the package changes)

then one more pgrunbook run sampled every 20 ms with psutil for the peak RSS of its whole
process tree (python + pg_dump workers). Medians are reported; ratios are baseline/pgrunbook.
Prints a table and one JSON line, also saved to bench/results/. `--scale small` (or
BENCH_SCALE=small) uses a tiny database for a quick check of the benchmark itself.
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

# Runs the real CLI, with the exact counts replaced by zeros (same tables, same manifest shape).
NOCOUNT_SHIM = """
import sys
import pgrunbook.dbinfo as dbinfo
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


def _backup_argv(db: datagen.BenchDb, out_dir: Path) -> list[str]:
    return ["-q", "backup", "--database-url", db.url, "--to", str(out_dir), "--json"]


def run_pgrunbook_backup(db: datagen.BenchDb, out_dir: Path, *, counting: bool = True,
                         sample_rss: bool = False) -> Sample:
    _clean(out_dir)
    env = db.env()
    argv = _pgrunbook_cmd() + _backup_argv(db, out_dir) if counting else \
        [sys.executable, "-c", NOCOUNT_SHIM, *_backup_argv(db, out_dir)]
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
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            checkpoint(db)
            s = runners[name]()
            samples[name].append(s)
            print(f"  {label} rep {rep + 1}/{reps} {name:<10} {s.seconds:7.2f}s {s.bytes / 1e6:9.1f} MB"
                  + (f"  counts {s.extra['counts_seconds']:.2f}s" if s.extra.get("counts_seconds") else ""),
                  flush=True)
    return samples


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


def bench_restore(db: datagen.BenchDb, reps: int, scale: str) -> dict[str, Any] | None:
    """The restore benchmark (bench/restore_bench.py, when present)."""
    path = HERE / "restore_bench.py"
    if not path.exists():
        return None
    import importlib

    module = importlib.import_module("restore_bench")
    runner = getattr(module, "bench_restore", None)
    if runner is None:
        return None
    return runner(db=db, reps=reps, scale=scale, work=WORK)  # type: ignore[no-any-return]


def _row(name: str, value: str, target: str, ok: bool | None) -> str:
    mark = "" if ok is None else ("PASS" if ok else "MISS")
    return f"  {name:<52} {value:>14}   {target:<10} {mark}"


def report(result: dict[str, Any]) -> str:
    lines = [
        f"pgrunbook benchmark ({result['scale']}, {result['cpus']} CPUs, load {result['load_before']} -> "
        f"{result['load_after']}; medians of {result['reps'] if 'backup' in result else '-'} backup / "
        f"{result.get('restore_reps', '-')} restore repetitions)",
        f"  database {result['database_bytes'] / 1e9:.2f} GB",
    ]
    b = result.get("backup")
    if b:
        lines += [
            "",
            "  backup",
            _row("pg_dump | gzip", f"{b['baseline_median_s']:.2f} s", "", None),
            _row(f"pgrunbook backup ({b['format']})", f"{b['pgrunbook_median_s']:.2f} s", "", None),
            _row("pgrunbook backup, no counting", f"{b['nocount_median_s']:.2f} s", "", None),
            _row("time ratio (faster by)", f"{b['time_ratio']:.2f}x", ">= 3.5x",
                 b["time_ratio"] >= TARGETS["time_ratio"]),
            _row("  per-repetition pairs (median)", f"{b['time_ratio_paired']:.2f}x", "", None),
            _row("size ratio", f"{b['size_ratio']:.3f}", "<= 0.85", b["size_ratio"] <= TARGETS["size_ratio"]),
            _row("archive sizes (gzip / pgrunbook)",
                 f"{b['baseline_bytes'] / 1e6:.1f}/{b['pgrunbook_bytes'] / 1e6:.1f} MB", "", None),
            _row("peak RSS (python + pg_dump tree)", f"{b['peak_rss_mb']:.1f} MB", "<= 150 MB",
                 b["peak_rss_mb"] <= TARGETS["peak_rss_mb"]),
            _row("counting overhead", f"{b['counting_overhead_pct']:.1f} %", "<= 10 %",
                 b["counting_overhead_pct"] <= TARGETS["counting_overhead_pct"]),
            _row("  per-repetition pairs (median)", f"{b['counting_overhead_paired_pct']:.1f} %", "", None),
            _row("counts_seconds (in manifest run)", f"{b['counts_seconds_median']:.2f} s", "", None),
        ]
    r = result.get("restore")
    if r:
        lines += ["", "  restore"]
        for row in r.get("table", []):
            lines.append(_row(row["name"], row["value"], row.get("target", ""), row.get("ok")))
    elif "restore_skipped" in result:
        lines += ["", f"  restore: {result['restore_skipped']}"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(datagen.SCALES), default=os.environ.get("BENCH_SCALE", "full"))
    parser.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "0")) or None,
                        help="repetitions (default: 5 full, 2 small)")
    parser.add_argument("--restore-reps", type=int, default=None,
                        help="repetitions of the restore benchmark (default: 3 full, 1 small)")
    parser.add_argument("--no-restore", action="store_true", help="backup only")
    parser.add_argument("--no-backup", action="store_true", help="restore only")
    args = parser.parse_args()
    reps = args.reps or (5 if args.scale == "full" else 2)

    started = datetime.now(UTC)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"bench: preparing the {args.scale} database (generated once, kept in bench/.data/)", flush=True)
    db = datagen.ensure(args.scale)
    try:
        WORK.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {
            "started_at": started.isoformat(timespec="seconds"), "scale": args.scale, "reps": reps,
            "cpus": os.cpu_count(), "host": platform.node(), "load_before": load_before,
            "database_bytes": int(db.psql(f"SELECT pg_database_size('{datagen.DBNAME}')")),
            "pg_dump": subprocess.run([str(db.bin_dir / "pg_dump"), "--version"], capture_output=True,
                                      text=True, check=True).stdout.strip(),
        }
        if not args.no_backup:
            result["backup"] = bench_backup(db, reps)
        if not args.no_restore:
            restore_reps = args.restore_reps or (3 if args.scale == "full" else 1)
            result["restore_reps"] = restore_reps
            restore = bench_restore(db, restore_reps, args.scale)
            if restore is None:
                result["restore_skipped"] = "no bench/restore_bench.py (restore benchmark) yet"
            else:
                result["restore"] = restore
        result["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    finally:
        db.stop()
        shutil.rmtree(WORK, ignore_errors=True)

    if "backup" in result or "restore" in result:
        print()
        print(report(result))
    line = json.dumps(result, sort_keys=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench-{args.scale}-{started:%Y%m%d-%H%M%S}.json"
    out.write_text(line + "\n")
    print()
    print(line)
    print(f"(saved to {out.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
