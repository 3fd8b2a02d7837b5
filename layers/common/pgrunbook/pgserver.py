"""A real PostgreSQL server on this machine, from the packaged binaries.

Used by `make demo`, the test suite and the `local-instance` provisioner (the local stand-in
for a new RDS instance). It listens on 127.0.0.1 with password (SCRAM) authentication, so
it behaves like a remote server: wrong passwords fail, URLs carry a host and a port.
PostgreSQL refuses to run as root; as root the server runs as an unprivileged user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ToolError
from .pgtools import server_binaries

SERVER_USER = "pgrunbook"

# What CloudNativePG's import bootstrap and AWS's bulk-load advice do for a fresh target:
# no WAL beyond crash safety, no autovacuum during the load, big maintenance memory.
RESTORE_TUNED = {
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "archive_mode": "off",
    "synchronous_commit": "off",
    "autovacuum": "off",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "maintenance_work_mem": "512MB",
}
PRODUCTION = {
    "wal_level": "replica",
    "max_wal_senders": "10",
    "synchronous_commit": "on",
    "autovacuum": "on",
    "max_wal_size": "1GB",
    "checkpoint_timeout": "5min",
    "maintenance_work_mem": "64MB",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(SERVER_USER)
    return entry.pw_uid, entry.pw_gid


def _make_readable(path: Path) -> None:
    """Let the unprivileged server user traverse to the binaries (they live under a root-owned venv)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            with contextlib.suppress(PermissionError):
                parent.chmod(mode | 0o005)


@dataclass
class LocalServer:
    """One local PostgreSQL server (a data directory and a postmaster)."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    superuser: str = "postgres"
    settings: Mapping[str, str] = field(default_factory=dict)
    bin_dir: Path = field(default_factory=server_binaries)

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def url(self, dbname: str = "postgres", *, user: str | None = None, password: str | None = None) -> str:
        return (f"postgresql://{user or self.superuser}:{password or self.password}"
                f"@127.0.0.1:{self.port}/{dbname}")

    def _run(self, args: list[str], *, timeout: float = 120) -> None:
        owner = _server_user()

        def demote() -> None:
            if owner is not None:
                os.setgid(owner[1])
                os.setuid(owner[0])

        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, preexec_fn=demote,
                              stdin=subprocess.DEVNULL, cwd="/")
        if proc.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise ToolError(f"{Path(args[0]).name} failed: {(proc.stderr or proc.stdout).strip()} {log}".strip())

    def init(self) -> LocalServer:
        owner = _server_user()
        _make_readable(self.bin_dir)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        pwfile = self.data_dir.parent / f".{self.data_dir.name}.pw"
        pwfile.write_text(self.password + "\n")
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if owner is not None:
            _make_readable(self.data_dir.parent)
            os.chown(self.data_dir, *owner)
            os.chown(pwfile, *owner)
            self.log_file.touch()
            os.chown(self.log_file, *owner)
        try:
            self._run([str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.superuser,
                       "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8",
                       "--no-instructions"])
        finally:
            pwfile.unlink(missing_ok=True)
        return self

    def configure(self, settings: Mapping[str, str]) -> None:
        """Replace the auto-config include with `settings` (applied at the next start)."""
        self.settings = dict(settings)
        lines = [f"{k} = '{v}'" for k, v in self.settings.items()]
        (self.data_dir / "postgresql.auto.conf").write_text("\n".join(lines) + "\n")

    def start(self) -> LocalServer:
        if self.settings:
            self.configure(self.settings)
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
                   "-t", "60", "-o", f"-p {self.port} -h 127.0.0.1 -k {self.data_dir}", "start"])
        return self

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])

    def restart(self, settings: Mapping[str, str] | None = None) -> None:
        self.stop()
        if settings is not None:
            self.configure(settings)
        self.start()

    def destroy(self) -> None:
        with contextlib.suppress(ToolError):
            self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)

    @classmethod
    @contextlib.contextmanager
    def running(cls, data_dir: Path, **kwargs: object) -> Iterator[LocalServer]:
        server = cls(data_dir=data_dir, **kwargs)  # type: ignore[arg-type]
        server.init().start()
        try:
            yield server
        finally:
            server.destroy()
