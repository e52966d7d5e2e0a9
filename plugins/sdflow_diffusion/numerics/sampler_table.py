"""The sampler and schedule names ``sample`` takes, and which engine serves each.

Two engines:

* ComfyUI's names (``euler``, ``dpmpp_2m_sde``, ... and ``normal``,
  ``karras``, ...) are ComfyUI's samplers and schedules with its numbers:
  sdflow's own implementation (:mod:`~sdflow_diffusion.numerics.samplers`,
  :mod:`~sdflow_diffusion.numerics.schedules`), equal to ComfyUI's output
  on the CPU in float32 (tests/test_samplers.py, tests/test_schedules.py).
* ``diffusers:<name>`` (``diffusers:euler``) is a diffusers scheduler class
  that serves the method (the table below), over the family's own timestep
  spacing: the numbers of diffusers' StableDiffusionPipeline, bit for bit
  (tests/test_parity.py), not ComfyUI's.  Its schedules are the subset
  diffusers has; where diffusers only has a nearby method, ``note`` says so.

Torch-free on purpose: ``sdflow check`` asks :func:`supported` whether a
(sampler, schedule) pair can run before anything heavy is imported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamplerSpec:
    """A diffusers scheduler class (by name) and the options that make it the sampler."""

    scheduler_class: str
    options: dict[str, Any] = field(default_factory=dict)
    note: str = ""


SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec("EulerDiscreteScheduler"),
    "euler_ancestral": SamplerSpec("EulerAncestralDiscreteScheduler"),
    "heun": SamplerSpec("HeunDiscreteScheduler"),
    "dpm_2": SamplerSpec("KDPM2DiscreteScheduler"),
    "dpm_2_ancestral": SamplerSpec("KDPM2AncestralDiscreteScheduler"),
    "lms": SamplerSpec("LMSDiscreteScheduler"),
    "dpmpp_2m": SamplerSpec("DPMSolverMultistepScheduler",
                            {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": SamplerSpec("DPMSolverMultistepScheduler",
                                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    # ComfyUI's dpmpp_sde draws its noise from a Brownian tree (torchsde);
    # diffusers' singlestep SDE solver is the nearest method without it.
    "dpmpp_sde": SamplerSpec("DPMSolverSinglestepScheduler",
                             {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                              "lower_order_final": True},  # what diffusers forces when ending at 0
                             note="nearest: a single-step DPM-Solver++ SDE, not ComfyUI's Brownian-tree noise"),
    "ddim": SamplerSpec("DDIMScheduler"),
    "ddpm": SamplerSpec("DDPMScheduler"),
    # ComfyUI's uni_pc is the bh1 variant of order 3, but diffusers' bh1 ends
    # in NaN when the last sigma is 0 (0.42), so its default bh2, order 2.
    "uni_pc": SamplerSpec("UniPCMultistepScheduler", {"solver_type": "bh2", "solver_order": 2},
                          note="nearest: ComfyUI's uni_pc is the bh1 variant, this is bh2 (uni_pc_bh2)"),
    "lcm": SamplerSpec("LCMScheduler"),
}

# ComfyUI's names, in its order (tests check them against ComfyUI's own
# lists and against the implementations).
COMFY_SAMPLERS = (
    "euler", "euler_ancestral", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "lms",
    "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm",
    "ipndm", "deis", "ddim", "uni_pc", "uni_pc_bh2",
)
COMFY_SCHEDULES = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal")
# The options of ComfyUI's samplers that ``sample`` exposes (its custom
# sampler nodes' eta and s_noise), by sampler.
_ETA = ("eta", "s_noise")
SAMPLER_OPTIONS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("euler", "heun", "heunpp2", "dpm_2"), ("s_noise",)),
    **dict.fromkeys(("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde",
                     "dpmpp_2m_sde", "dpmpp_3m_sde"), _ETA),
}
DIFFUSERS = "diffusers:"


def sampler_names() -> tuple[str, ...]:
    """Every name ``sample`` takes: ComfyUI's, then diffusers' prefixed."""
    return (*COMFY_SAMPLERS, *(DIFFUSERS + name for name in SAMPLERS))


# The options a schedule name sets.  Every name sets all three sigma switches,
# so that "normal" really is the scheduler's own spacing even if a family's
# config had one of them on.
_NO_SIGMAS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
SCHEDULES: dict[str, dict[str, Any]] = {
    "normal": dict(_NO_SIGMAS),
    "karras": {**_NO_SIGMAS, "use_karras_sigmas": True},
    "exponential": {**_NO_SIGMAS, "use_exponential_sigmas": True},
    "beta": {**_NO_SIGMAS, "use_beta_sigmas": True},
    "sgm_uniform": {**_NO_SIGMAS, "timestep_spacing": "trailing"},
    "simple": {**_NO_SIGMAS, "timestep_spacing": "trailing"},
}

# Which classes honour which schedule options (tests/test_sampling.py checks
# these against diffusers' behaviour, so a diffusers upgrade cannot drift).
SIGMA_SCHEDULE_CLASSES = frozenset({
    "EulerDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
})
SPACING_CLASSES = frozenset({
    "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler",
    "DPMSolverMultistepScheduler", "DDIMScheduler", "DDPMScheduler", "UniPCMultistepScheduler",
})

# diffusers needs scipy for these (LMS integrates its coefficients with it).
SCIPY_CLASSES = frozenset({"LMSDiscreteScheduler"})


def supported(sampler: str, scheduler: str) -> str | None:
    """None if this pair can run here, else the reason it cannot."""
    if sampler in COMFY_SAMPLERS:
        if scheduler not in COMFY_SCHEDULES:
            return f"unknown scheduler '{scheduler}'"
        if scheduler == "beta" and importlib.util.find_spec("scipy") is None:
            return "the beta noise schedule needs scipy, which is not installed (pip install scipy)"
        if sampler in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde") and importlib.util.find_spec("torchsde") is None:
            return f"sampler '{sampler}' needs torchsde for its Brownian-tree noise (pip install torchsde)"
        return None
    if sampler.startswith(DIFFUSERS):
        sampler = sampler[len(DIFFUSERS):]
        if sampler in SAMPLERS and scheduler in COMFY_SCHEDULES and scheduler not in SCHEDULES:
            return f"diffusers' schedulers have no '{scheduler}' schedule; choose one of {', '.join(SCHEDULES)}"
    if sampler not in SAMPLERS:
        return f"unknown sampler '{sampler}'"
    if scheduler not in SCHEDULES:
        return f"unknown scheduler '{scheduler}'"
    cls = SAMPLERS[sampler].scheduler_class
    if scheduler in ("karras", "exponential", "beta") and cls not in SIGMA_SCHEDULE_CLASSES:
        return f"diffusers' {cls} (sampler '{sampler}') has no {scheduler} noise schedule"
    if scheduler in ("sgm_uniform", "simple") and cls not in SPACING_CLASSES:
        return f"diffusers' {cls} (sampler '{sampler}') has a fixed timestep spacing, so no '{scheduler}'"
    if (scheduler == "beta" or cls in SCIPY_CLASSES) and importlib.util.find_spec("scipy") is None:
        what = "the beta noise schedule" if scheduler == "beta" else f"sampler '{sampler}'"
        return f"{what} needs scipy, which is not installed (pip install scipy)"
    return None


def scheduler_options(sampler: str, scheduler: str) -> tuple[str, dict[str, Any]]:
    """The diffusers class name and the options that go over the family's
    scheduler config, for a diffusers sampler (with or without its
    ``diffusers:`` prefix).  Schedule options a class does not take are left
    for the caller to drop (``normal`` sets the sigma switches off everywhere)."""
    spec = SAMPLERS[sampler.removeprefix(DIFFUSERS)]
    return spec.scheduler_class, {**SCHEDULES[scheduler], **spec.options}
