"""Listing benchmark: `pgrunbook list` over many backups in one S3 prefix, against a local S3 (moto server).

    .venv/bin/python bench/list_bench.py [--counts 1200,10000] [--reps 3]

For each N it starts a moto server on 127.0.0.1 in this process, seeds N backups of 20 databases straight
into its bucket (archive placeholder, .sha256, a valid manifest: tests/fixtures/backups.py) and times, as
separate processes the way an operator runs them:

- listing:  the ListObjectsV2 pages alone (what any correct listing must at least read: 3 N objects);
- old way:  the manifests read one by one (archive.iter_manifests, what `list` did before the index);
            only for N <= 2,000 (it grows linearly: about 5 ms a manifest);
- cold:     `pgrunbook list --from s3://...` with no index yet (manifests read 10 at a time; it also
            writes each database's index, best effort);
- warm:     `pgrunbook list --from s3://...` and `list --json` once the indexes exist (the steady state:
            every backup records itself in its database's index).

Prints one line per measurement (seconds; for `list` also the CPU seconds of the command and of the moto
server, which tell a busy machine from a slow listing) and a closing summary. Nothing leaves this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUCKET, PREFIX = "pgrunbook-list-bench", "fleet"
ENV_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}


CPU: dict[str, float] = {}  # CPU seconds of the last run: the command, and the moto server (this process)


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    start, child, server = time.perf_counter(), _cpu_children(), time.process_time()
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    CPU.update(client=_cpu_children() - child, server=time.process_time() - server)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds, done.stdout


def _cpu() -> str:
    return f"cpu: command {CPU['client']:.2f} s, moto server {CPU['server']:.2f} s"


def _python(code: str, env: dict[str, str]) -> tuple[float, str]:
    return _run([sys.executable, "-c", code], env)


def bench_count(n: int, reps: int) -> dict[str, float]:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the moto server logs every request
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    from pgrunbook.pgserver import free_port
    from tests.fixtures.backups import seed_backups

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        env = {**os.environ, **ENV_AWS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        env.pop("AWS_PROFILE", None)
        import boto3

        os.environ.update(ENV_AWS)
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(Bucket=BUCKET)
        backend = s3_backends["123456789012"]["global"]

        def put(key: str, data: bytes) -> None:
            backend.put_object(BUCKET, f"{PREFIX}/{key}", data)

        t = time.perf_counter()
        seed_backups(put, n)
        print(f"N={n:>6}: seeded {3 * n} objects in {time.perf_counter() - t:.1f} s", flush=True)
        dest = f"s3://{BUCKET}/{PREFIX}"
        cli = str(Path(sys.executable).parent / "pgrunbook")
        out: dict[str, float] = {}
        setup = f"from pgrunbook.store import open_store; s = open_store({dest!r})"
        out["listing"], printed = _python(f"{setup}; print(len(s.list()))", env)
        assert int(printed) >= 3 * n, printed
        print(f"N={n:>6}: ListObjectsV2 alone        {out['listing']:6.2f} s ({printed.strip()} objects)", flush=True)
        if n <= 2000:
            out["old"], printed = _python(f"{setup}; from pgrunbook.archive import iter_manifests; "
                                          f"print(sum(1 for _ in iter_manifests(s)))", env)
            assert int(printed) == n, printed
            print(f"N={n:>6}: old way (one by one)       {out['old']:6.2f} s", flush=True)
        out["cold"], _ = _run([cli, "list", "--from", dest], env)
        print(f"N={n:>6}: list, no index (cold)      {out['cold']:6.2f} s  ({_cpu()})", flush=True)
        warm, warm_json = [], []
        for _ in range(reps):
            seconds, _ = _run([cli, "list", "--from", dest], env)
            warm.append(seconds)
            seconds, printed = _run([cli, "list", "--from", dest, "--json"], env)
            warm_json.append(seconds)
        data = json.loads(printed)
        backups = data["backups"] if isinstance(data, dict) else data
        assert len(backups) == n, len(backups)
        out["warm"], out["warm_json"] = statistics.median(warm), statistics.median(warm_json)
        print(f"N={n:>6}: list, indexed (warm)       {out['warm']:6.2f} s  (runs: "
              f"{', '.join(f'{s:.2f}' for s in warm)}; last {_cpu()})", flush=True)
        print(f"N={n:>6}: list --json, indexed       {out['warm_json']:6.2f} s  (runs: "
              f"{', '.join(f'{s:.2f}' for s in warm_json)})", flush=True)
        return out
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1200,10000", help="backup counts to seed (comma-separated)")
    parser.add_argument("--reps", type=int, default=3, help="warm runs per count (the median is reported)")
    args = parser.parse_args()
    results = {int(c): bench_count(int(c), args.reps) for c in args.counts.split(",")}
    print("\nsummary (seconds):  N  listing-alone  old-way  cold  warm  warm --json")
    for n, r in results.items():
        old = f"{r['old']:.2f}" if "old" in r else "-"
        print(f"  {n:>6}  {r['listing']:.2f}  {old}  {r['cold']:.2f}  {r['warm']:.2f}  {r['warm_json']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
