"""Reference latents from ComfyUI's own samplers, written as JSON.

Run by hand; it asserts nothing about sdflow and sdflow never imports it.
It imports ComfyUI's code from the checkout given with ``--comfyui`` (GPL-3.0:
only its module, class and function names are used here, none of its code
is copied) and records what ComfyUI's samplers return, so that sdflow's own
samplers (``sdflow_diffusion.numerics.samplers``) can be compared with them
bit for bit (``tests/data/comfyui_samplers.json``, described in
``tests/data/README.md``; ``tests/test_samplers.py`` reads it).

No model is needed: the "model" is a fixed function of the latent and the
noise level (``toy_denoise`` below), the posterior mean of Gaussian data
bent by a small nonlinearity, so that each step's prediction depends on both
and the multistep samplers' history terms matter.  ``tests/test_samplers.py``
has its own copy of it, which must give the same float32 numbers.

Each case goes through ComfyUI's real path for a KSampler run: the sigmas
of ``comfy.samplers.KSampler`` for SD 1.5's ``model_sampling`` (which drops
the penultimate sigma for the samplers that want it), the starting noise of
``comfy.sample.prepare_noise(latent, seed)``, and ``KSAMPLER.sample`` of
``comfy.samplers.sampler_object(name)``, which scales the noise to the first
sigma (``noise_scaling``), wraps the model (``KSamplerX0Inpaint``) and passes
``extra_args={"seed": seed}``, from which ComfyUI's ancestral samplers seed
their noise and its SDE samplers their Brownian trees.

Cases (see ``cases`` in the output for the exact list):

* ``main``: every sampler, schedules ``normal`` and ``karras``, 4 and 10
  steps, batch 1, seed 42, ComfyUI's default options and its own noise;
* ``short``: every sampler, ``normal``, 1, 2 and 3 steps (the low-order
  starts and ends);
* ``options``: non-default options (eta, s_noise, r, solver_type, order,
  max_order, and s_churn, whose noise ComfyUI takes from torch's global
  generator, which ``prepare_noise`` has just seeded);
* ``batch2``: every sampler, ``karras``, 10 steps, a batch of two in sdflow's
  convention (image i from seed 42 + i): the starting noise and the
  ancestral noise from one CPU generator per image, the SDE samplers' noise
  from ComfyUI's ``BrownianTreeNoiseSampler`` given the list of seeds.

Example::

    /work/comfy-venv/bin/python benchmarks/comfy_reference_samplers.py \\
        --comfyui /work/comfyui --out tests/data/comfyui_samplers.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

import comfy_reference  # this folder's schedule script: ComfyUI import and model_sampling set-up

SAMPLERS = (
    "euler", "euler_ancestral", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "lms",
    "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm",
    "ipndm", "deis", "uni_pc", "uni_pc_bh2", "ddim",
)
SHAPE = (1, 4, 8, 8)
SEED = 42
MAIN = {"schedules": ("normal", "karras"), "steps": (4, 10)}
SHORT = {"schedules": ("normal",), "steps": (1, 2, 3)}
BATCH2 = {"schedule": "karras", "steps": 10, "seeds": (42, 43)}
OPTIONS = [  # (sampler, options), on karras at 10 steps
    ("euler", {"s_churn": 2.0}),
    ("heun", {"s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 5.0}),
    ("heunpp2", {"s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 5.0}),
    ("dpm_2", {"s_churn": 1.5, "s_noise": 1.003}),
    ("euler_ancestral", {"eta": 0.5, "s_noise": 0.8}),
    ("dpm_2_ancestral", {"eta": 0.6}),
    ("dpmpp_2s_ancestral", {"eta": 0.0}),
    ("dpmpp_2s_ancestral", {"eta": 0.7, "s_noise": 1.1}),
    ("dpmpp_sde", {"eta": 0.5, "r": 0.3}),
    ("dpmpp_2m_sde", {"solver_type": "heun"}),
    ("dpmpp_2m_sde", {"eta": 0.0}),
    ("dpmpp_3m_sde", {"eta": 0.5, "s_noise": 0.9}),
    ("lms", {"order": 2}),
    ("ipndm", {"max_order": 2}),
    ("deis", {"max_order": 2}),
    ("deis", {"max_order": 4}),
]
OPTIONS_CASE = {"schedule": "karras", "steps": 10}


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui", required=True, help="path of a ComfyUI checkout")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--commit", default=None, help="ComfyUI commit to record (default: from the checkout)")
    p.add_argument("--repository", default="https://github.com/Comfy-Org/ComfyUI")
    return p.parse_args(argv)


# --------------------------------------------------------------------------
# The toy model (tests/test_samplers.py has its own copy)

def toy_mean(torch):
    """A fixed "data mean": -0.2, -0.1, 0, 0.1, 0.2 repeating over the latent."""
    n = SHAPE[1] * SHAPE[2] * SHAPE[3]
    return ((torch.arange(n) % 5).to(torch.float32) - 2.0).mul(0.1).reshape(1, *SHAPE[1:])


def toy_denoise(torch, x, sigma):
    """The clean latent predicted from x at noise level sigma (one per image).

    For unit-variance Gaussian data around ``toy_mean`` the prediction would
    be mean + (x - mean) / (1 + sigma^2); the denominator 1 + k (x - mean)^2
    bends it, more at high noise, not at all at sigma 0."""
    mean = toy_mean(torch)
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    c = 1.0 / (s * s + 1.0)
    k = 0.25 * (1.0 - c)
    r = x - mean
    return mean + (r * c) / (1.0 + (k * r) * r)


class _ToyModelWrap:
    """What ComfyUI's samplers ask of the model they are given (a CFGGuider
    in a real run): called as ``(x, sigma, model_options=, seed=)``, with
    ``inner_model.model_sampling`` and ``model_patcher.get_model_object``."""

    def __init__(self, torch, model_sampling):
        self._torch = torch
        self.inner_model = _Namespace(model_sampling=model_sampling)
        self.model_patcher = comfy_reference._FakeModel(model_sampling)
        self.calls = 0

    def __call__(self, x, sigma, model_options=None, seed=None):
        self.calls += 1
        return toy_denoise(self._torch, x, sigma)


class _Namespace:
    def __init__(self, **kw):
        self.__dict__.update(kw)


# --------------------------------------------------------------------------
# Running a case

def _sigmas(comfy, fake_model, sampler, schedule, steps):
    ks = comfy.samplers.KSampler(fake_model, steps=steps, device="cpu", sampler=sampler, scheduler=schedule)
    return ks.sigmas.clone()


def _per_image_noise(torch, shape, seeds):
    """sdflow's batch convention: image i's noise from its own CPU generator."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]

    def draw(sigma, sigma_next):
        return torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generators])

    return draw


def _run(torch, comfy, ms, name, sigmas, options, seeds):
    """Run ComfyUI's sampler ``name``; returns (start x, output, model calls,
    sigmas as the sampler left them)."""
    sampler = comfy.samplers.sampler_object(name)
    sampler.extra_options = dict(sampler.extra_options, **options)
    shape = (len(seeds), *SHAPE[1:])
    latent = torch.zeros(shape)
    if len(seeds) == 1:
        noise = comfy.sample.prepare_noise(latent, seeds[0])  # seeds torch's global generator too
    else:
        noise = torch.cat([torch.randn((1, *SHAPE[1:]), generator=torch.Generator().manual_seed(s))
                           for s in seeds])
        x_shape_like = torch.zeros(shape)
        if name in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"):
            k = comfy.k_diffusion_sampling
            sampler.extra_options["noise_sampler"] = k.BrownianTreeNoiseSampler(
                x_shape_like, sigmas[sigmas > 0].min(), sigmas.max(), seed=list(seeds), cpu=True)
        elif name in ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "ddpm", "lcm"):
            sampler.extra_options["noise_sampler"] = _per_image_noise(torch, shape, seeds)

    started = {}
    inner = sampler.sampler_function

    def recording(model, x, sigmas, **kw):
        started["x"] = x.clone()
        return inner(model, x, sigmas, **kw)

    sampler.sampler_function = recording
    wrap = _ToyModelWrap(torch, ms)
    given = sigmas.clone()
    with torch.no_grad():
        out = sampler.sample(wrap, given, {"model_options": {}, "seed": seeds[0]}, None, noise,
                             latent_image=latent, denoise_mask=None, disable_pbar=True)
    # The start is noise * sqrt(1 + sigma0^2) (ComfyUI's noise_scaling at full denoise) + the zero latent.
    expected_start = noise * torch.sqrt(1.0 + sigmas[0] ** 2.0) + latent
    if not torch.equal(started["x"], expected_start):
        raise RuntimeError(f"{name}: the start is not noise * sqrt(1 + sigma0^2)")
    return noise, out, wrap.calls, given


def _case(torch, comfy, ms, fake, name, schedule, steps, options=None, seeds=(SEED,)):
    sigmas = _sigmas(comfy, fake, name, schedule, steps)
    entry = {"sampler": name, "schedule": schedule, "steps": steps, "options": dict(options or {}),
             "seeds": list(seeds), "sigmas": _F32(sigmas)}
    try:
        noise, out, calls, after = _run(torch, comfy, ms, name, sigmas, dict(options or {}), list(seeds))
    except Exception as e:  # recorded, not hidden
        entry["error"] = f"{type(e).__name__}: {e}"
        return entry
    if not torch.isfinite(out).all():
        raise RuntimeError(f"{name} {schedule} {steps}: output not finite")
    entry["model_calls"] = calls
    if not torch.equal(after, sigmas):
        entry["sigmas_after"] = _F32(after)  # uni_pc writes 0.001 over a final 0 in the caller's tensor
    entry["output"] = _F32(out)
    return entry, noise


# --------------------------------------------------------------------------
# JSON with float32 values in their shortest exact form

class _F32:
    """A tensor's values, written as the shortest decimals that read back
    (through a double) as the same float32."""

    def __init__(self, t):
        import numpy as np

        self.values = t.detach().to("cpu").reshape(-1).numpy().astype(np.float32)
        self.text = [str(v) for v in self.values]
        for v, s in zip(self.values, self.text):
            if not np.isfinite(v) or np.float32(float(s)) != v:
                raise ValueError(f"{s} does not round-trip to {v!r}")


def _dumps(obj, level=0):
    pad = " " * level
    if isinstance(obj, _F32):
        parts = obj.text
        if len(parts) <= 12:
            return "[" + ", ".join(parts) + "]"
        rows = [", ".join(parts[i:i + 8]) for i in range(0, len(parts), 8)]
        return "[\n" + ",\n".join(pad + "  " + r for r in rows) + "\n" + pad + " ]"
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad} {json.dumps(str(k))}: {_dumps(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list, _F32)) for v in obj):
        return "[\n" + ",\n".join(pad + " " + _dumps(v, level + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


def main(argv=None):
    args = _parse_args(argv)
    comfy, stand_in = comfy_reference._import_comfy(args.comfyui)
    comfy.sample = importlib.import_module("comfy.sample")
    comfy.k_diffusion_sampling = importlib.import_module("comfy.k_diffusion.sampling")
    import torch
    import torchsde

    torch.set_num_threads(1)
    _, model_type, ms = comfy_reference._build_model_sampling(comfy, comfy.supported_models.SD15, {}, {})
    fake = comfy_reference._FakeModel(ms)

    data = {
        **comfy_reference.provenance(args, comfy, "latents from ComfyUI's samplers with a toy model",
                                     "benchmarks/comfy_reference_samplers.py", stand_in,
                                     torchsde=torchsde.__version__, threads=torch.get_num_threads()),
        "model": f"SD 1.5 model_sampling (supported_models.SD15, {model_type.name}); "
                 "the denoiser is toy_denoise, not a U-Net",
        "toy_denoise": "mean = ((arange(256) % 5) - 2.0) * 0.1 as [1, 4, 8, 8] float32; "
                       "s = sigma per image; c = 1.0 / (s * s + 1.0); k = 0.25 * (1.0 - c); "
                       "r = x - mean; denoised = mean + (r * c) / (1.0 + (k * r) * r)",
        "start": "noise * sqrt(1.0 + sigmas[0] ** 2.0): noise = torch.randn([1, 4, 8, 8], "
                 "generator seeded with the seed), one generator per image for a batch",
        "float_encoding": "float32 values as the shortest decimals that read back as the same float32",
        "shape": list(SHAPE),
        "cases": {
            "main": {**{k: list(v) for k, v in MAIN.items()}, "seed": SEED},
            "short": {**{k: list(v) for k, v in SHORT.items()}, "seed": SEED},
            "options": {**OPTIONS_CASE, "seed": SEED},
            "batch2": {**BATCH2, "seeds": list(BATCH2["seeds"])},
        },
        "noise": {},
        "main": [], "short": [], "options": [], "batch2": [],
    }

    def add(section, *a, **kw):
        result = _case(torch, comfy, ms, fake, *a, **kw)
        if isinstance(result, dict):
            data[section].append(result)
            print(f"{section}: {a} {kw}: {result['error']}", file=sys.stderr)
            return
        entry, noise = result
        data[section].append(entry)
        for i, seed in enumerate(entry["seeds"]):
            data["noise"].setdefault(str(seed), _F32(noise[i:i + 1]))

    for name in SAMPLERS:
        for schedule in MAIN["schedules"]:
            for steps in MAIN["steps"]:
                add("main", name, schedule, steps)
        for schedule in SHORT["schedules"]:
            for steps in SHORT["steps"]:
                add("short", name, schedule, steps)
        add("batch2", name, BATCH2["schedule"], BATCH2["steps"], seeds=BATCH2["seeds"])
    for name, options in OPTIONS:
        add("options", name, OPTIONS_CASE["schedule"], OPTIONS_CASE["steps"], options=options)

    text = _dumps(data) + "\n"
    json.loads(text)  # strict JSON
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.out} ({len(text.encode())} bytes), ComfyUI {data['comfyui']['commit']}")


if __name__ == "__main__":
    main()
