"""Lock files: `sdflow lock` pins the models, stage versions and versions a
recipe's run depends on; `run --locked` and `check --locked` refuse a model
that changed and warn about versions that did.  Real recipes, real model
files in a models folder, through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli import sdflow_cli
from sdflow_diffusion.testing import tiny_checkpoint

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "txt2img.sdflow"


@pytest.fixture
def setup(tmp_path):
    """A recipe on a tiny SD 1.x checkpoint in a models folder, and that folder."""
    models = tmp_path / "store"  # not the recipe folder's models/, which is looked in anyway
    tiny_checkpoint(models / "checkpoints", "sd1", seed=0)
    recipe = tmp_path / "tiny.sdflow"
    recipe.write_text(EXAMPLE.read_text().replace('"sdflow-tiny.safetensors"', '"tiny-sd1.safetensors"')
                      .replace("param size = 64", "param size = 32").replace("param steps = 20", "param steps = 2"))
    return tmp_path, recipe, models


def lock(tmp_path, recipe, models, *more):
    return sdflow_cli("lock", recipe.name, "--models-dir", str(models), *more, cwd=tmp_path)


def test_lock_pins_the_model_and_the_stage_versions(setup):
    tmp_path, recipe, models = setup
    result = lock(tmp_path, recipe, models)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "tiny.sdflow.lock"
    assert result.stdout == f"{path.name}\n" and path.stat().st_mode & 0o777 == 0o644
    data = json.loads(path.read_text())
    checkpoint = models / "checkpoints" / "tiny-sd1.safetensors"
    import hashlib

    assert data["models"] == {"ckpt": {"tiny-sd1.safetensors": {
        "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(), "bytes": checkpoint.stat().st_size,
        "path": str(checkpoint)}}}
    assert data["stages"]["denoised"] == {"type": "diffusion.sample", "plugin": "diffusion", "version": "0.2.0"}
    assert data["run"] == {"diffusion": {"device": "cpu", "dtype": "fp32"}}
    assert {"sdflow", "python", "torch", "diffusers", "transformers", "plugin diffusion"} <= set(data["versions"])
    assert path.read_text() == json.dumps(data, indent=2, sort_keys=True) + "\n"  # stable, one value a line
    assert lock(tmp_path, recipe, models).returncode == 0 and json.loads(path.read_text()) == data  # again: same


def test_locked_runs_and_checks_pass_while_nothing_changed(setup):
    tmp_path, recipe, models = setup
    assert lock(tmp_path, recipe, models).returncode == 0
    check = sdflow_cli("check", "--locked", recipe.name, "--models-dir", str(models), cwd=tmp_path)
    assert check.returncode == 0 and check.stderr == "tiny.sdflow: ok\n", check.stderr
    run = sdflow_cli("run", "--locked", recipe.name, "--models-dir", str(models), "--output", "out", cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.endswith(".png\n"), run.stderr


def test_a_changed_model_is_refused_naming_the_file_and_both_hashes(setup):
    tmp_path, recipe, models = setup
    assert lock(tmp_path, recipe, models).returncode == 0
    locked = json.loads((tmp_path / "tiny.sdflow.lock").read_text())["models"]["ckpt"]["tiny-sd1.safetensors"]
    replaced = tiny_checkpoint(tmp_path / "other", "sd1", seed=1)
    shutil.copyfile(replaced, models / "checkpoints" / "tiny-sd1.safetensors")
    for command in (("check", "--locked"), ("run", "--locked", "--output", "out")):
        result = sdflow_cli(*command, recipe.name, "--models-dir", str(models), cwd=tmp_path)
        assert result.returncode == 1
        assert "E612 tiny-sd1.safetensors differs from the lock" in result.stderr
        assert locked["sha256"] in result.stderr and "tiny.sdflow:" in result.stderr  # at the stage's line
        import hashlib

        assert hashlib.sha256(replaced.read_bytes()).hexdigest() in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()  # nothing ran


def test_other_versions_are_warnings_and_the_run_goes_on(setup):
    tmp_path, recipe, models = setup
    assert lock(tmp_path, recipe, models).returncode == 0
    path = tmp_path / "tiny.sdflow.lock"
    data = json.loads(path.read_text())
    data["versions"]["torch"] = "1.0.0"
    data["stages"]["denoised"]["version"] = "0.1.0"
    path.write_text(json.dumps(data))
    result = sdflow_cli("run", "--locked", recipe.name, "--models-dir", str(models), "--output", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "W610 version torch:" in result.stderr and "1.0.0 in tiny.sdflow.lock" in result.stderr
    assert "W610 stage denoised: diffusion.sample 0.2.0 here, diffusion.sample 0.1.0 in tiny.sdflow.lock" \
        in result.stderr


def test_a_changed_recipe_a_missing_lock_and_a_malformed_one_are_errors(setup):
    tmp_path, recipe, models = setup
    missing = sdflow_cli("check", "--locked", recipe.name, "--models-dir", str(models), cwd=tmp_path)
    assert missing.returncode == 1 and "E610 --locked, but there is no lock file tiny.sdflow.lock" in missing.stderr
    assert lock(tmp_path, recipe, models).returncode == 0
    recipe.write_text(recipe.read_text().replace("param seed = 42", "param seed = 43"))
    changed = sdflow_cli("check", "--locked", recipe.name, "--models-dir", str(models), cwd=tmp_path)
    assert changed.returncode == 1 and "E611 the recipe changed since tiny.sdflow.lock was written" in changed.stderr
    for text in ("{not json", "[]", '{"sdflow_lock": 1}', "\xff\xfe"):
        (tmp_path / "tiny.sdflow.lock").write_text(text, encoding="latin-1")
        result = sdflow_cli("check", "--locked", recipe.name, "--models-dir", str(models), cwd=tmp_path)
        assert result.returncode == 1 and "E610" in result.stderr and "Traceback" not in result.stderr, text


def test_locking_a_recipe_whose_model_is_missing_is_an_error_at_the_stage(setup):
    tmp_path, recipe, models = setup
    result = sdflow_cli("lock", recipe.name, cwd=tmp_path)  # no --models-dir: tiny-sd1 is not found
    assert result.returncode == 1 and "tiny.sdflow:" in result.stderr and "not found" in result.stderr
    assert not (tmp_path / "tiny.sdflow.lock").exists()


def test_a_locked_sweep_checks_every_points_models(setup):
    tmp_path, recipe, models = setup
    assert lock(tmp_path, recipe, models).returncode == 0
    tiny_checkpoint(models / "checkpoints", "sd2")  # another model the sweep's second point names
    result = sdflow_cli("run", "--locked", recipe.name, "--models-dir", str(models), "--output", "out",
                        "--sweep", "checkpoint=tiny-sd1.safetensors,tiny-sd2.safetensors", cwd=tmp_path)
    assert result.returncode == 1
    assert "E612 ckpt reads tiny-sd2.safetensors" in result.stderr and "which tiny.sdflow.lock does not list" \
        in result.stderr and not (tmp_path / "out").exists()
    # Locked with the sweep, the lock pins both points' models, and the locked run goes ahead.
    sweep = ("--sweep", "checkpoint=tiny-sd1.safetensors,tiny-sd2.safetensors")
    assert lock(tmp_path, recipe, models, *sweep).returncode == 0
    result = sdflow_cli("run", "--locked", recipe.name, "--models-dir", str(models), "--output", "out", *sweep,
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_sweep_over_models_locks_every_points_model(setup):
    """A recipe whose sweep runs two checkpoints: the lock pins both, a
    locked check of the sweep passes, and once the second checkpoint
    changes a locked run is an error naming it, before anything runs."""
    tmp_path, recipe, models = setup

    def second(seed: int) -> None:
        made = tiny_checkpoint(tmp_path / f"made{seed}", "sd1", seed=seed)
        shutil.move(made, models / "checkpoints" / "other-sd1.safetensors")

    second(1)
    recipe.write_text(recipe.read_text().replace(
        "param steps", 'sweep checkpoint = ["tiny-sd1.safetensors", "other-sd1.safetensors"]\nparam steps', 1))
    assert lock(tmp_path, recipe, models).returncode == 0
    data = json.loads((tmp_path / "tiny.sdflow.lock").read_text())
    assert sorted(data["models"]["ckpt"]) == ["other-sd1.safetensors", "tiny-sd1.safetensors"]
    check = sdflow_cli("check", "--locked", recipe.name, "--models-dir", str(models), cwd=tmp_path)
    assert (check.returncode, check.stderr) == (0, "tiny.sdflow: ok (a sweep of 2 points)\n")
    second(2)
    run = sdflow_cli("run", "--locked", recipe.name, "--models-dir", str(models), "--output", "out", cwd=tmp_path)
    assert run.returncode == 1 and "E612 other-sd1.safetensors differs from the lock" in run.stderr
    assert not (tmp_path / "out").exists()
