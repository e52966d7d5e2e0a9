"""ComfyUI's noise schedules, to the bit: sdflow's own code against numbers from a ComfyUI run.

tests/data/comfyui_sigmas.json holds what ComfyUI's KSampler computed (see
tests/data/README.md) for SD 1.5, SD 2.x-v, SDXL and zero-terminal-SNR
models: each schedule at 1, 2, 4 and 20 steps, the dpm_2 variant that drops
the second-to-last sigma, denoise 0.5 and 0.75, and the U-Net timestep of
each sigma.  Every value must be equal in float32, NaN included (ComfyUI's
kl_optimal at one step divides 0 by 0).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from sdflow_diffusion.models.families import family_handle
from sdflow_diffusion.numerics.schedules import SCHEDULES, NoiseTable, schedule

DATA = Path(__file__).parent / "data" / "comfyui_sigmas.json"
# ComfyUI's model -> the family whose scheduler config sdflow reads it from,
# and whether the model was trained with zero terminal SNR.
MODELS = {
    "sd15": ("sd15", False),
    "sd2_v": ("sd21-v", False),
    "sdxl": ("sdxl-base", False),
    "sd15_zsnr": ("sd15", True),
    "sdxl_v_zsnr": ("sdxl-base", True),
}


@lru_cache(maxsize=1)
def reference() -> dict:
    return json.loads(DATA.read_text(encoding="utf-8"))


def table_of(model: str) -> NoiseTable:
    family, zero_snr = MODELS[model]
    config = dict(family_handle(family).scheduler_config)
    config["rescale_betas_zero_snr"] = zero_snr
    return NoiseTable.from_scheduler_config(config)


def floats(values: list) -> torch.Tensor:
    return torch.tensor([math.nan if v == "NaN" else v for v in values], dtype=torch.float32)


def assert_same(mine: torch.Tensor, expected: torch.Tensor) -> None:
    assert mine.dtype == torch.float32
    assert mine.shape == expected.shape, (mine, expected)
    assert torch.equal(mine.isnan(), expected.isnan()), (mine, expected)
    assert torch.equal(mine.nan_to_num(), expected.nan_to_num()), (mine - expected).abs().max()


def cases(section: str):
    for model in MODELS:
        for name, by_steps in reference()["models"][model][section].items():
            for steps in by_steps:
                yield pytest.param(model, name, int(steps), id=f"{model}-{name}-{steps}")


def test_the_reference_names_every_schedule_sdflow_has():
    assert list(SCHEDULES) == reference()["scheduler_names"]


@pytest.mark.parametrize("model", MODELS)
def test_the_noise_table_is_comfyuis(model):
    expected = reference()["models"][model]
    table = table_of(model)
    assert_same(table.sigmas, floats(expected["sigmas"]))
    assert float(table.sigma_min) == expected["sigma_min"]
    assert float(table.sigma_max) == expected["sigma_max"]


@pytest.mark.parametrize("model, name, steps", list(cases("schedules")))
def test_each_schedule_is_comfyuis(model, name, steps):
    expected = reference()["models"][model]["schedules"][name][str(steps)]
    assert_same(schedule(table_of(model), name, steps), floats(expected))


@pytest.mark.parametrize("model, name, steps", list(cases("schedules_dpm_2")))
def test_samplers_that_drop_the_penultimate_sigma_get_comfyuis(model, name, steps):
    expected = reference()["models"][model]["schedules_dpm_2"][name][str(steps)]
    assert_same(schedule(table_of(model), name, steps, discard_penultimate=True), floats(expected))


@pytest.mark.parametrize("model, name, steps", list(cases("denoise")))
def test_denoise_takes_the_tail_of_a_longer_schedule(model, name, steps):
    for denoise, expected in reference()["models"][model]["denoise"][name][str(steps)].items():
        sigmas = schedule(table_of(model), name, steps, float(denoise))
        assert_same(sigmas, floats(expected))
        assert len(sigmas) == steps + 1


@pytest.mark.parametrize("model, name, steps", list(cases("timesteps")))
def test_the_unet_is_given_comfyuis_timestep_for_each_sigma(model, name, steps):
    data = reference()["models"][model]
    table = table_of(model)
    sigmas = floats(data["schedules"][name][str(steps)]).tolist()
    mine = [int(table.timestep(torch.tensor(s))) if s > 0 and math.isfinite(s) else None for s in sigmas]
    assert mine == data["timesteps"][name][str(steps)]


def test_four_normal_steps_start_at_the_top_of_the_table():
    """The issue's example: ComfyUI samples SD 1.5 at 999, 666, 333, 0."""
    table = table_of("sd15")
    sigmas = schedule(table, "normal", 4)
    assert [int(table.timestep(s)) for s in sigmas[:-1]] == [999, 666, 333, 0]
    assert sigmas[0] == pytest.approx(14.6146, abs=1e-4)


def test_denoise_zero_samples_nothing():
    assert schedule(table_of("sd15"), "normal", 20, 0.0).numel() == 0
