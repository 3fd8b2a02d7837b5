#!/usr/bin/env python3
"""make lint: the state machines of template.yaml (pgrunbook.localcloud.asl_problems: JSON, JSONPath, every
${...} defined and every definition used, Retry/Catch/timeouts, notified failures), then statelint
on each definition with its substitutions filled in (statelint rejects an unfilled "${X}" ARN)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from pgrunbook.localcloud import asl_problems, project_root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--statelint", help="path of the statelint executable (pip: statelint)")
    args = ap.parse_args()
    root = project_root()
    problems, rendered = asl_problems(root)
    if args.statelint:
        with tempfile.TemporaryDirectory() as tmp:
            for uri, text in rendered.items():
                path = Path(tmp) / Path(uri).name
                path.write_text(text)
                res = subprocess.run([args.statelint, str(path)], capture_output=True, text=True, check=False)
                if res.returncode != 0:
                    problems.append(f"{uri}: statelint: {(res.stdout + res.stderr).strip()}")
    for problem in problems:
        print(f"check_asl: {problem}", file=sys.stderr)  # noqa: T201
    if not problems:
        print(f"check_asl: {len(rendered)} state machines OK: {', '.join(sorted(rendered))}")  # noqa: T201
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
