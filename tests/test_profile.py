"""``sdflow run --profile``: each stage's wall time and memory, as a table on
stderr and, with ``--json``, in each ``stage_done`` event."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sdflow.cli import main
from sdflow.execute import Executor
from sdflow.registry import default_registry
from sdflow.testing import run_recipe

ROOT = Path(__file__).resolve().parent.parent
TXT2IMG = ROOT / "examples" / "txt2img.sdflow"
STAGES = ["ckpt", "positive", "negative", "latent", "denoised", "image", "save_image#1"]
TYPES = ["load_checkpoint", "clip_text_encode", "clip_text_encode", "empty_latent", "sample", "vae_decode",
         "save_image"]
FIELDS = {"rss_mib", "peak_rss_mib", "peak_rss_growth_mib", "cuda_peak_mib"}


def sdflow_main(*argv: str) -> tuple[int, str, str]:
    """``sdflow ARGV`` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module", autouse=True)
def warm_process(tmp_path_factory):
    """One run before the tests: a fresh process pays for importing torch
    and diffusers in its first load_checkpoint (seconds, more than the rest
    of the run), which would hide what the stages themselves cost."""
    code, _out, err = sdflow_main("run", str(TXT2IMG), "--output", str(tmp_path_factory.mktemp("warm")))
    assert code == 0, err


def table_rows(stderr: str) -> tuple[list[str], list[list[str]], list[str]]:
    """The table's head, its stage rows (cells split on runs of spaces) and its total row."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    rule = next(i for i in range(start, len(lines)) if set(lines[i]) <= {"-", " "})
    return lines[start].split(), [line.split() for line in lines[start + 1:rule]], lines[rule + 1].split()


def test_profile_prints_a_row_per_stage_in_run_order_and_a_total(tmp_path):
    # 60 steps: loading the tiny model (building its modules) costs about
    # as much as its default 20 steps of sampling.
    code, out, err = sdflow_main("run", str(TXT2IMG), "--output", str(tmp_path), "--profile", "--set", "steps=60")
    assert code == 0, err
    assert out == f"{tmp_path / 'txt2img_00001_.png'}\n"
    head, rows, total = table_rows(err)
    assert head[:8] == ["stage", "type", "seconds", "RSS", "MiB", "peak", "MiB", "+peak"]
    assert [row[:3] for row in rows] == [[key, type, "ran"] for key, type in zip(STAGES, TYPES)]
    seconds = {row[0]: float(row[3]) for row in rows}
    assert all(s >= 0 for s in seconds.values()), seconds  # in ms: empty_latent may show 0.000
    assert max(seconds, key=seconds.get) == "denoised", seconds
    rss, peak, growth = (float(row[4]) for row in rows), (float(row[5]) for row in rows), [row[6] for row in rows]
    assert all(mib > 10 for mib in [*rss, *peak]), rows
    assert all(float(row[5]) >= float(row[4]) for row in rows), rows  # the peak is never below the current
    assert all(g.startswith("+") and float(g) >= 0 for g in growth), rows
    assert total[0] == "total" and float(total[1]) >= sum(seconds.values())
    assert float(total[4].lstrip("+")) == pytest.approx(sum(float(g) for g in growth), abs=0.5)
    assert max(len(line) for line in err.splitlines()) <= 100


def test_json_profile_puts_the_figures_in_each_stage_done_event(tmp_path):
    code, out, err = sdflow_main("run", str(TXT2IMG), "--output", str(tmp_path), "--json", "--profile")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    done = [e for e in events if e["event"] == "stage_done"]
    assert [(e["stage"], e["type"], e["cached"]) for e in done] == [(k, t, False) for k, t in zip(STAGES, TYPES)]
    for event in done:
        assert FIELDS <= set(event), event
        assert event["rss_mib"] > 10 and event["peak_rss_mib"] > 10, event
        assert event["peak_rss_growth_mib"] >= 0, event
        assert event["cuda_peak_mib"] is None or event["cuda_peak_mib"] >= 0, event
    assert events[-1]["event"] == "run_done"
    assert len(table_rows(err)[1]) == len(STAGES)  # the table still comes, on stderr


def test_without_profile_the_events_are_as_they_were(tmp_path):
    code, out, _err = sdflow_main("run", str(TXT2IMG), "--output", str(tmp_path), "--json")
    assert code == 0
    done = [e for e in map(json.loads, out.splitlines()) if e["event"] == "stage_done"]
    assert len(done) == len(STAGES)
    assert all(not FIELDS & set(event) for event in done)


def test_a_second_run_in_the_process_shows_the_kept_model_reused(tmp_path):
    executor = Executor(profile=True)
    text = TXT2IMG.read_text(encoding="utf-8")
    first = run_recipe(text, default_registry(), tmp_path, executor=executor)
    second = run_recipe(text, default_registry(), tmp_path, executor=executor)
    assert [(row.key, row.cached) for row in first.profile] == [(key, False) for key in STAGES]
    assert all(row.seconds > 0 for row in first.profile)
    assert [(row.key, row.cached) for row in second.profile] == [(key, key == "ckpt") for key in STAGES]
    reused = second.profile[0]
    assert (reused.seconds, reused.peak_rss_growth_mib) == (0.0, 0.0)
    assert reused.rss_mib > 10


# a recipe with no torch stage stays torch-free ------------------------------------------

COUNTING = textwrap.dedent("""\
    from pathlib import Path

    from pydantic import BaseModel
    from sdflow import hookimpl

    class Value(BaseModel):
        value: int

    class Name(BaseModel):
        name: str

    def number(ctx, params):
        return {"out": params.value}

    def write(ctx, params, x):
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        path = ctx.output_dir / params.name
        path.write_text(str(x))
        ctx.file_written(path)
        return {}

    @hookimpl
    def sdflow_port_types(registry):
        registry.add_port_type("COUNT", "an integer")

    @hookimpl
    def sdflow_stage_types(registry):
        registry.add_stage("number", params=Value, outputs={"out": "COUNT"}, run=number)
        registry.add_stage("write_count", params=Name, inputs={"x": "COUNT"}, output=True, run=write)
""")

RUN_AND_LIST_HEAVY = """\
import sys
from sdflow.cli import main

code = main(sys.argv[1:])
print(code, sorted({m.split(".")[0] for m in sys.modules} & {"torch", "diffusers", "transformers"}))
"""


def test_profiling_a_recipe_without_torch_stages_never_imports_torch(tmp_path):
    site = tmp_path / "site"
    dist_info = site / "sdflow_counting-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (site / "sdflow_counting.py").write_text(COUNTING)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: sdflow_counting\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[sdflow]\ncounting = sdflow_counting\n")
    recipe = tmp_path / "count.sdflow"
    recipe.write_text('sdflow 1\n\nseven = number(value=7)\nwrite_count(x=seven, name="seven.txt")\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", RUN_AND_LIST_HEAVY, "run", str(recipe), "--output",
                             str(tmp_path / "out"), "--profile"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines()[-1] == "0 []", result.stderr
    assert (tmp_path / "out" / "seven.txt").read_text() == "7"
    head, rows, total = table_rows(result.stderr)
    assert [row[:3] for row in rows] == [["seven", "number", "ran"], ["write_count#1", "write_count", "ran"]]
    assert "CUDA" not in head


def test_a_sweep_prints_each_points_table_with_what_it_reused(tmp_path):
    """One table a point, after it, titled with the point: the first runs
    every stage; the second reuses the loaded model, the encoded prompts and
    the empty latent (the seed changes only the sampling and what follows)."""
    code, out, err = sdflow_main("run", str(TXT2IMG), "--output", str(tmp_path), "--profile", "--sweep", "seed=1,2")
    assert code == 0, err
    assert len(out.splitlines()) == 3  # two images and the contact sheet
    titles = [line for line in err.splitlines() if line.startswith("sweep point ")]
    assert titles == ["sweep point 1 (seed=1):", "sweep point 2 (seed=2):"]
    first, second = err.split("sweep point 2 (seed=2):")
    _head, rows, _total = table_rows(first)
    assert [row[:3] for row in rows] == [[key, type, "ran"] for key, type in zip(STAGES, TYPES)]
    _head, rows, _total = table_rows(second)
    reused = {row[0] for row in rows if row[2] != "ran"}
    assert reused == {"ckpt", "positive", "negative", "latent"}, rows
