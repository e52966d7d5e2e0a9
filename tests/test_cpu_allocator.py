"""A run on the CPU keeps the memory torch frees for its next tensors
(run_options.keep_freed_memory) instead of taking fresh pages from the
system for each: measured as page faults, in a fresh process that runs the
default recipe through the command line's own code and then allocates and
frees one 64 MiB tensor a few times, as a sampling step does with its
activations."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from cli import ROOT

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc only")

RUN_THEN_ALLOCATE = """
import json, resource, sys
import torch
from sdflow.cli import main

status = main(["run", "examples/txt2img.sdflow", "--output", sys.argv[1], "--device", "cpu", "--set", "steps=1"])
for _ in range(3):  # the heap settles
    tensor = torch.ones(16 * 1024 * 1024)  # 64 MiB, touched
    del tensor
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    tensor = torch.ones(16 * 1024 * 1024)
    del tensor
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"status": status, "faults": faults}))
"""


def _run(tmp_path, **env) -> dict:
    base = {key: value for key, value in os.environ.items()
            if not key.startswith("MALLOC_") and key != "GLIBC_TUNABLES"}
    result = subprocess.run([sys.executable, "-c", RUN_THEN_ALLOCATE, str(tmp_path / "out")], cwd=ROOT,
                            env={**base, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == 0, result.stderr[-2000:]
    return report


def test_a_cpu_run_reuses_freed_memory_unless_the_user_tuned_malloc(tmp_path):
    tuned = _run(tmp_path / "tuned")
    # a 64 MiB tensor is 16,384 pages: glibc's defaults map and fault them again each time
    assert tuned["faults"] < 8_000, tuned
    theirs = _run(tmp_path / "theirs", MALLOC_MMAP_MAX_="65536")  # glibc's default, set by the user
    assert theirs["faults"] > 4 * 16_000, theirs

