"""The sampler table: ComfyUI's names (sdflow's implementation of ComfyUI's
samplers), the ``diffusers:`` names and what diffusers can serve, and the
scheduler that a (family, sampler, schedule) makes."""

from __future__ import annotations

import importlib.util
import inspect
import json
import typing
from pathlib import Path
import subprocess
import sys

import pytest
from sdflow_diffusion.stages.sample import Sample
from sdflow_diffusion.numerics.sampler_table import (
    COMFY_SAMPLERS,
    COMFY_SCHEDULES,
    DIFFUSERS,
    SAMPLER_OPTIONS,
    SAMPLERS,
    SCHEDULES,
    SIGMA_SCHEDULE_CLASSES,
    SPACING_CLASSES,
    scheduler_options,
    supported,
)

HAS_SCIPY = importlib.util.find_spec("scipy") is not None
# diffusers 0.42's schedulers warn thousands of times on numpy 2.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_the_table_names_exactly_the_stage_choices():
    fields = Sample.model_fields
    choices = typing.get_args(fields["sampler"].annotation)
    assert choices == (*COMFY_SAMPLERS, *(DIFFUSERS + name for name in SAMPLERS))
    assert typing.get_args(fields["scheduler"].annotation) == COMFY_SCHEDULES
    assert set(SCHEDULES) <= set(COMFY_SCHEDULES)


def test_comfyuis_names_are_its_own_and_all_implemented():
    from sdflow_diffusion.numerics import samplers

    reference = json.loads((Path(__file__).parent / "data" / "comfyui_sigmas.json").read_text())
    assert set(COMFY_SAMPLERS) <= set(reference["sampler_names"])
    assert COMFY_SCHEDULES == tuple(reference["scheduler_names"])
    assert set(samplers.SAMPLERS) == set(COMFY_SAMPLERS)
    # The options sample exposes are options the implementation takes.
    for name, options in SAMPLER_OPTIONS.items():
        assert set(options) <= set(samplers.SAMPLERS[name].options), name
    discarded = {n for n, info in samplers.SAMPLERS.items() if info.discard_penultimate}
    assert discarded == set(reference["discard_penultimate_sigma_samplers"])


@pytest.mark.parametrize(("sampler", "option"), [("euler", "eta"), ("lms", "s_noise"), ("diffusers:euler", "eta")])
def test_an_option_a_sampler_does_not_have_is_refused_at_check_time(sampler, option):
    with pytest.raises(ValueError, match=f"sampler '{sampler}' has no {option}"):
        Sample(sampler=sampler, **{option: 0.5})


def test_checking_a_pair_imports_no_torch():
    code = ("import sys; from sdflow_diffusion.numerics.sampler_table import supported; "
            "supported('euler', 'karras'); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("sampler", [DIFFUSERS + name for name in SAMPLERS])
def test_every_sampler_runs_on_its_own_schedule(sampler):
    if sampler == "diffusers:lms" and not HAS_SCIPY:
        assert "scipy" in supported(sampler, "normal")
    else:
        assert supported(sampler, "normal") is None


@pytest.mark.parametrize(("sampler", "scheduler", "words"), [
    ("diffusers:euler_ancestral", "karras", "no karras noise schedule"),
    ("diffusers:ddim", "exponential", "no exponential noise schedule"),
    ("diffusers:lcm", "simple", "fixed timestep spacing"),
    ("diffusers:dpmpp_sde", "sgm_uniform", "fixed timestep spacing"),
    ("diffusers:euler", "kl_optimal", "diffusers' schedulers have no 'kl_optimal' schedule"),
    ("eulr", "normal", "unknown sampler"),
    ("euler", "fast", "unknown scheduler"),
])
def test_impossible_pairs_say_why(sampler, scheduler, words):
    assert words in supported(sampler, scheduler)


def test_beta_needs_scipy():
    assert (supported("euler", "beta") is None) == HAS_SCIPY


def _schedule(class_name: str, **options):
    import diffusers
    from sdflow_diffusion.models.families import family_handle

    config = dict(family_handle("sd15").scheduler_config)
    cls = getattr(diffusers, class_name)
    accepted = inspect.signature(cls.__init__).parameters
    scheduler = cls.from_config({k: v for k, v in {**config, **options}.items() if k in accepted})
    scheduler.set_timesteps(6)
    return scheduler


CLASSES = sorted({spec.scheduler_class for spec in SAMPLERS.values()})


@pytest.mark.parametrize("class_name", CLASSES)
def test_the_schedule_classes_match_what_diffusers_does(class_name):
    """Guards the torch-free table against a diffusers upgrade: a class listed
    as taking karras sigmas (or a timestep spacing) changes its schedule with
    it, and a class not listed does not."""
    import torch

    if class_name == "LMSDiscreteScheduler" and not HAS_SCIPY:
        pytest.skip("LMS needs scipy")
    normal = _schedule(class_name)
    karras = _schedule(class_name, use_karras_sigmas=True)
    trailing = _schedule(class_name, timestep_spacing="trailing")
    changes = not torch.equal(karras.timesteps, normal.timesteps)
    assert changes == (class_name in SIGMA_SCHEDULE_CLASSES)
    changes = not torch.equal(trailing.timesteps, normal.timesteps)
    assert changes == (class_name in SPACING_CLASSES)


def test_the_family_config_is_the_base_and_the_names_go_on_top():
    from sdflow_diffusion.models.families import family_handle
    from sdflow_diffusion.numerics.sampling import make_scheduler

    family = family_handle("sd21-v")
    scheduler = make_scheduler(family, "dpmpp_2m", "karras")
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    config = scheduler.config
    assert config.prediction_type == "v_prediction" and config.beta_schedule == "scaled_linear"
    assert config.steps_offset == family.scheduler_config["steps_offset"]
    assert config.use_karras_sigmas and config.algorithm_type == "dpmsolver++" and config.solver_order == 2
    assert make_scheduler(family, "euler", "simple").config.timestep_spacing == "trailing"
    assert scheduler_options("ddim", "normal")[0] == "DDIMScheduler"


def test_an_impossible_pair_is_a_stage_error():
    from sdflow_diffusion.models.families import family_handle
    from sdflow_diffusion.numerics.sampling import make_scheduler

    from sdflow.plugin import StageError

    with pytest.raises(StageError, match="no karras"):
        make_scheduler(family_handle("sd15"), "diffusers:euler_ancestral", "karras")
