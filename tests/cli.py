"""Run the ``sdflow`` command as a user does: a fresh process, offline, no colour."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sdflow_cli(*args: str, cwd: Path = ROOT, pythonpath: Path | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", **(env or {})}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "sdflow.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)
