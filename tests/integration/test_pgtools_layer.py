"""The PgToolsLayer (layers/pgtools): built as `sam build` does (make build-PgToolsLayer), then its
pg_dump/pg_restore/psql run with nothing but the layer and glibc (a chroot as root), and its
pg_dump dumps a real database (zstd) from there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import project_root

LAYER = project_root() / "layers" / "pgtools"


@pytest.fixture(scope="module")
def built_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    build = tmp_path_factory.mktemp("pgtools")
    res = subprocess.run(["make", "-s", "-C", str(LAYER), "build-PgToolsLayer", f"PYTHON={sys.executable}",
                          f"BUILD={build}", f"ARTIFACTS_DIR={build / 'layer'}"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "isolated pg_dump --version -> pg_dump (PostgreSQL) 18." in res.stdout
    return build / "layer"


@pytest.mark.slow
def test_layer_holds_the_tools_and_their_libraries_rpathed(built_layer: Path) -> None:
    assert sorted(p.name for p in (built_layer / "bin").iterdir()) == ["pg_dump", "pg_restore", "psql"]
    libs = {p.name for p in (built_layer / "lib").iterdir()}
    assert {"libpq.so.5", "libzstd.so.1", "liblz4.so.1", "libssl.so.3", "libcrypto.so.3"} <= libs
    assert not libs & {"libc.so.6", "libm.so.6", "libresolv.so.2"}  # glibc comes from the runtime
    assert b"$ORIGIN/../lib" in (built_layer / "bin" / "pg_dump").read_bytes()  # its RUNPATH
    assert b"$ORIGIN" in (built_layer / "lib" / "libpq.so.5").read_bytes()


@pytest.mark.slow
def test_isolated_pg_dump_dumps_a_real_database_and_zip_size(built_layer: Path, fresh_db: str,
                                                             tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(LAYER / "check_layer.py"), str(built_layer), "--dump-url", fresh_db,
                          "--zip", str(tmp_path / "layer.zip")], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "isolated pg_dump -Fc -Z zstd wrote" in res.stdout
    size_mb = (tmp_path / "layer.zip").stat().st_size / 1e6
    assert size_mb < 15, f"the layer zip grew to {size_mb:.1f} MB"
