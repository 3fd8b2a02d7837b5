#!/usr/bin/env python3
# ruff: noqa: T201, S108  (a build script: it prints its progress; /tmp is the chroot's HOME)
"""Prove the PgToolsLayer is self-contained: run its pg_dump/pg_restore/psql `--version` with
nothing but the layer and glibc available, optionally dump a real database through it (TLS,
zstd), and report the zipped size.

As root (CI, these machines) the tools run in a chroot that holds only the layer (at /opt, as on
Lambda) and the glibc libraries: no other library exists there, so a missing one fails loudly.
Otherwise it falls back to the dynamic loader with the cache inhibited and checks with ldd that
every non-glibc library resolves inside the layer.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

TOOLS = ("pg_dump", "pg_restore", "psql")
GLIBC = {"libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libresolv.so.2",
         "libutil.so.1", "ld-linux-x86-64.so.2"}
LOADER = "/lib64/ld-linux-x86-64.so.2"


def glibc_files() -> list[Path]:
    out = subprocess.run(["ldd", "/bin/true"], capture_output=True, text=True, check=True).stdout
    libdir = Path(re.search(r"libc\.so\.6 => (\S+)", out).group(1)).parent  # type: ignore[union-attr]
    return [libdir / name for name in GLIBC if (libdir / name).exists()]


def make_root(layer: Path, root: Path) -> None:
    shutil.copytree(layer, root / "opt", symlinks=True)
    for sub in ("lib64", "lib/x86_64-linux-gnu", "tmp", "etc", "proc"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(LOADER).resolve(), root / "lib64" / "ld-linux-x86-64.so.2")
    (root / "lib64" / "ld-linux-x86-64.so.2").chmod(0o755)
    for lib in glibc_files():
        shutil.copyfile(lib.resolve(), root / "lib" / "x86_64-linux-gnu" / lib.name)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/tmp:/bin/false\n")


def run_isolated(layer: Path, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """argv[0] is a tool name; runs /opt/bin/<tool> with only the layer + glibc."""
    base_env = {"PATH": "/opt/bin", "HOME": "/tmp", "LANG": "C", **(env or {})}
    chroot = shutil.which("chroot", path="/usr/sbin:/sbin:/usr/bin:/bin")
    unshare = shutil.which("unshare", path="/usr/bin:/bin")
    mount = shutil.which("mount", path="/usr/bin:/bin")
    if os.geteuid() == 0 and chroot and unshare and mount:
        with tempfile.TemporaryDirectory(prefix="pgtools-root-") as tmp:
            make_root(layer, Path(tmp))
            # the loader resolves $ORIGIN through /proc/self/exe: bind /proc, in a private mount namespace
            script = f'{mount} --bind /proc "$1/proc" && exec {chroot} "$@"'
            res = subprocess.run([unshare, "--mount", "--fork", "--", "/bin/sh", "-c", script, "sh", tmp,
                                  f"/opt/bin/{argv[0]}", *argv[1:]], capture_output=True, env=base_env, check=False)
            if b"mount:" not in res.stderr and b"unshare:" not in res.stderr:
                return res
            print("check_layer: no mount namespace here; falling back to the loader check", file=sys.stderr)
    # not root: the loader without its cache, the layer's folder only; then ldd must agree
    ldd = subprocess.run(["ldd", str(layer / "bin" / argv[0])], capture_output=True, text=True,
                         env={"PATH": os.environ.get("PATH", "")}, check=True).stdout
    outside = [line.strip() for line in ldd.splitlines()
               if "=>" in line and line.split()[0] not in GLIBC and str(layer) not in line]
    if outside:
        raise SystemExit("check_layer: resolved outside the layer: " + "; ".join(outside))
    return subprocess.run([LOADER, "--inhibit-cache", str(layer / "bin" / argv[0]), *argv[1:]],
                          capture_output=True, env=base_env, check=False)


def zip_layer(layer: Path, target: Path) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in sorted(layer.rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo(path.relative_to(layer).as_posix(), date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
    return target.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("layer", type=Path)
    ap.add_argument("--zip", type=Path, help="also write the layer zip here and print its size")
    ap.add_argument("--dump-url", help="dump this database (custom format, zstd) through the isolated pg_dump")
    args = ap.parse_args()
    layer = args.layer.resolve()
    for tool in TOOLS:
        res = run_isolated(layer, [tool, "--version"])
        text = (res.stdout + res.stderr).decode(errors="replace").strip()
        if res.returncode != 0 or not re.search(r"\(PostgreSQL\) 18\.", text):
            print(f"check_layer: {tool} --version FAILED (exit {res.returncode}): {text}", file=sys.stderr)
            return 1
        print(f"check_layer: isolated {tool} --version -> {text}")
    if args.dump_url:
        res = run_isolated(layer, ["pg_dump", "--format=custom", "--compress=zstd:1", "--schema-only",
                                   f"--dbname={args.dump_url}"])
        if res.returncode != 0 or not res.stdout.startswith(b"PGDMP"):
            print(f"check_layer: isolated pg_dump of a database FAILED: {res.stderr.decode(errors='replace')}",
                  file=sys.stderr)
            return 1
        print(f"check_layer: isolated pg_dump -Fc -Z zstd wrote {len(res.stdout)} bytes")
    size = sum(p.stat().st_size for p in layer.rglob("*") if p.is_file())
    print(f"check_layer: unzipped size {size / 1e6:.1f} MB")
    if args.zip:
        zipped = zip_layer(layer, args.zip.resolve())
        print(f"check_layer: zipped size {zipped / 1e6:.1f} MB ({args.zip})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
