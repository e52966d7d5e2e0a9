"""benchmarks/gpu.py's smoke run: every section of the GPU benchmark, on the
CPU with the tiny models (``--device cpu --tiny``), so that the script a GPU
session runs has run before, and its report has every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_benchmark_runs_every_section_on_the_cpu(tmp_path):
    report_path = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--tiny",
                             "--json", str(report_path)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    broken = {name: section["error"] for name, section in report.items()
              if isinstance(section, dict) and "error" in section}
    assert not broken, broken
    assert report["default_recipe"]["recorded"]["device"] == "cpu"
    assert set(report["kinds"]) == {"sd1", "sd2", "sdxl", "sdxl-refiner", "sdxl-distilled"}
    for row in report["kinds"].values():  # bf16 against fp32: close, not equal
        assert row["bf16"]["unet"] == "torch.bfloat16" and 0 < row["bf16"]["max_pixel_difference"] < 64
    assert all(row["same_scores"] for row in report["examples"].values())
    assert len(report["full_size"]) == 4
    for row in report["full_size"].values():
        assert row["sdflow"]["seconds"] > 0 and row["diffusers"]["seconds"] > 0
    assert report["first_image"]["first_process_seconds"] > 0
    options = report["options"]  # each run option, on sdflow-tiny
    for name in ("defaults", "channels_last", "lowvram"):
        assert options[name]["its"] > 0
    assert options["defaults"]["same_pixels_in_process"] and options["lowvram"]["max_pixel_difference_to_defaults"] == 0
    assert options["channels_last"]["max_pixel_difference_to_defaults"] <= 1
    assert options["compile"].get("skipped") or options["compile"]["max_pixel_difference_to_defaults"] <= 1
    assert options["diffusers_defaults"]["its"] > 0
    assert options["vae_tiling"]["whole_seconds"] > 0 and options["vae_tiling"]["tiled_seconds"] > 0
    assert options["determinism"]["deterministic_same_pixels"] is True
