"""The cleanup guardian can be started ahead of the first registration (processes.start_guardian), and a path
registered afterwards is still removed when the process that registered it is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.fixtures.processes import wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_a_guardian_started_early_still_cleans_up_after_a_kill(tmp_path: Path) -> None:
    # Given a process that starts the guardian first, then registers a folder and is killed with SIGKILL
    folder = tmp_path / "staging"
    ready = tmp_path / "ready"
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(ROOT / "layers" / "common")!r})
        from pgrunbook import processes
        processes.start_guardian()
        assert processes._GUARDIAN._proc is not None  # running before anything is registered
        Path({str(folder)!r}).mkdir()
        processes.guard_path(Path({str(folder)!r}))
        Path({str(ready)!r}).touch()
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_until(ready.exists, "the child to register its folder", timeout=30)
        assert folder.is_dir()
        # When it is killed
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        # Then the guardian removes the folder
        wait_until(lambda: not folder.exists(), "the guardian to remove the folder", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
