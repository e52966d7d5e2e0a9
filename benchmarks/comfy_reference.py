"""Reference sigma schedules from a real ComfyUI checkout, written as JSON.

Run by hand; it asserts nothing about sdflow and sdflow never imports it.
It imports ComfyUI's own code from the checkout given with ``--comfyui``
(ComfyUI is GPL-3.0: none of its code is copied here, only its module and
function names are used) and records the numbers that ComfyUI computes, so
that sdflow's tests can compare its own schedules with them
(``tests/data/comfyui_sigmas.json``, described in ``tests/data/README.md``).

What it records, for each model (SD 1.5, SD 2.x v-prediction, SDXL, and
zero-terminal-SNR variants):

* the ``model_sampling`` object ComfyUI builds for that model, made the way
  ComfyUI makes it when it loads a checkpoint, without loading one: the
  model config class from ``comfy.supported_models`` (``SD15``, ``SD20``,
  ``SDXL``), its ``model_type()`` (answered from a tiny fake state dict
  that holds only the keys ComfyUI's detection looks at), then
  ``comfy.model_base.model_sampling(config, model_type)``, which is what
  ``BaseModel.__init__`` calls.  Its ``sigma_min``, ``sigma_max`` and the
  whole ``sigmas`` table (float32, one entry per training timestep);
* for every name in ``comfy.samplers.SCHEDULER_NAMES`` and every step count
  in ``--steps``, the sigmas of ``comfy.samplers.KSampler`` (sampler
  ``euler``), checked against ``comfy.samplers.calculate_sigmas``;
* the same for a sampler in ``DISCARD_PENULTIMATE_SIGMA_SAMPLERS``
  (``dpm_2``), for the step counts in ``--denoise-steps``;
* the sigmas of ``KSampler`` with ``denoise`` < 1 (``set_steps``: a schedule
  of ``int(steps / denoise)`` steps, its last ``steps + 1`` sigmas);
* ``model_sampling.timestep(sigma)``, the timestep ComfyUI feeds the U-Net,
  for every non-zero sigma of the full-denoise schedules of
  ``--denoise-steps`` steps;
* the sampler name lists (``KSAMPLER_NAMES``, ``SAMPLER_NAMES``) and
  ``KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS``.

Floats are written with ``repr`` precision (each is a float32 value, exactly
representable as a double).  A value that is not finite (``kl_optimal``
with 1 step divides 0 by 0) is written as the string ``"NaN"``,
``"Infinity"`` or ``"-Infinity"`` so that the file stays strict JSON;
``float()`` reads those strings back.

It needs a Python with ComfyUI's import chain installed (torch, numpy,
scipy, einops, torchsde, tqdm, Pillow, safetensors, psutil, transformers)
and no model weights.  Where ``torchvision`` cannot be imported (a CPU-only
torch with only CUDA builds of torchvision at hand), an empty stand-in
module is put in its place: ComfyUI imports it only at module level in
model files whose classes are never built here, and the file records that
the stand-in was used.  Example::

    /work/comfy-venv/bin/python benchmarks/comfy_reference.py \\
        --comfyui /work/comfyui --out tests/data/comfyui_sigmas.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.machinery
import json
import math
import os
import platform
import subprocess
import sys
import types

STEPS = (1, 2, 4, 20)
DENOISE_STEPS = (4, 20)
DENOISES = (0.5, 0.75)
DISCARD_SAMPLER = "dpm_2"
FULL_SAMPLER = "euler"


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui", required=True, help="path of a ComfyUI checkout")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument(
        "--commit",
        default=None,
        help="ComfyUI commit to record (default: git rev-parse HEAD in the "
        "checkout, else the first line of COMFYUI_COMMIT.txt there)",
    )
    p.add_argument(
        "--repository",
        default="https://github.com/Comfy-Org/ComfyUI",
        help="where the checkout came from, to record (comfyanonymous/ComfyUI moved there)",
    )
    p.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    p.add_argument("--denoise-steps", type=int, nargs="+", default=list(DENOISE_STEPS))
    p.add_argument("--denoise", type=float, nargs="+", default=list(DENOISES))
    return p.parse_args(argv)


def _commit_of(path, given):
    if given:
        return given
    try:
        out = subprocess.run(
            ["git", "-C", path, "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        if out:
            return out
    except (OSError, subprocess.CalledProcessError):
        pass
    marker = os.path.join(path, "COMFYUI_COMMIT.txt")
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            return f.readline().strip()
    return None


def comfyui_record(path, commit):
    """The ``comfyui`` field of a reference file: the checkout's commit, its
    version and where it lives."""
    try:
        from comfyui_version import __version__ as version
    except ImportError:
        version = None
    return {"commit": _commit_of(path, commit), "version": version,
            "repository": "https://github.com/Comfy-Org/ComfyUI"}


def write_cases(path, data):
    """``data`` as JSON with its ``cases`` one a line, so that a change shows
    as that case's line in a diff."""
    with open(path, "w", encoding="utf-8") as f:
        head = json.dumps({k: v for k, v in data.items() if k != "cases"}, ensure_ascii=False, indent=1)
        f.write(head[:-2] + ',\n "cases": [\n')
        f.write(",\n".join(json.dumps(case, ensure_ascii=False, separators=(",", ":")) for case in data["cases"]))
        f.write("\n ]\n}\n")


def _torchvision_importable():
    try:
        import torchvision  # noqa: F401
        return True
    except Exception:  # a CUDA build beside a CPU torch fails with RuntimeError
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False


def _install_torchvision_stand_in():
    """An empty ``torchvision`` (and ``torchvision.transforms``) module."""
    tv = types.ModuleType("torchvision")
    tv.__path__ = []
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    tv.__version__ = "0+stand-in"
    tr = types.ModuleType("torchvision.transforms")
    tr.__spec__ = importlib.machinery.ModuleSpec("torchvision.transforms", None)
    tv.transforms = tr
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.transforms"] = tr


def _import_comfy(path):
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "comfy", "samplers.py")):
        raise SystemExit(f"{path} does not look like a ComfyUI checkout (no comfy/samplers.py)")
    sys.path.insert(0, path)
    stand_in = not _torchvision_importable()
    if stand_in:
        _install_torchvision_stand_in()
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
    mods = types.SimpleNamespace(
        samplers=importlib.import_module("comfy.samplers"),
        model_base=importlib.import_module("comfy.model_base"),
        supported_models=importlib.import_module("comfy.supported_models"),
        model_sampling=importlib.import_module("comfy.model_sampling"),
    )
    try:
        mods.version = importlib.import_module("comfyui_version").__version__
    except Exception:
        mods.version = None
    return mods, stand_in


def _num(x):
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def _nums(t):
    return [_num(v) for v in t.detach().cpu().reshape(-1).tolist()]


class _FakeModel:
    """What ``KSampler`` asks of a model: ``get_model_object("model_sampling")``."""

    def __init__(self, model_sampling):
        self._ms = model_sampling

    def get_model_object(self, name):
        if name != "model_sampling":
            raise KeyError(name)
        return self._ms


def _model_specs(torch, comfy):
    """(key, description, config class name, fake state dict, extra sampling settings)."""
    sm = comfy.supported_models
    v_key = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    marker = torch.tensor([-1.0, 1.0])  # std 1 > 0.09: SD20.model_type says v-prediction
    return [
        ("sd15", "SD 1.x: supported_models.SD15, eps", sm.SD15, {}, {}),
        ("sd2_v", "SD 2.x 768-v: supported_models.SD20 whose U-Net detection says v-prediction",
         sm.SD20, {v_key: marker}, {}),
        ("sdxl", "SDXL base: supported_models.SDXL, eps", sm.SDXL, {}, {}),
        ("sd15_zsnr", "SD 1.x eps with sampling_settings zsnr=True (what the ModelSamplingDiscrete "
         "node does with sampling=eps, zsnr=true)", sm.SD15, {}, {"zsnr": True}),
        ("sdxl_v_zsnr", "SDXL whose state dict has the 'v_pred' and 'ztsnr' keys: "
         "supported_models.SDXL.model_type sets zsnr and v-prediction",
         sm.SDXL, {"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, {}),
    ]


def _build_model_sampling(comfy, cls, fake_sd, extra):
    unet_config = dict(cls.unet_config)
    unet_config.setdefault("in_channels", 4)
    config = cls(unet_config)
    config.sampling_settings.update(extra)
    model_type = config.model_type(fake_sd)
    ms = comfy.model_base.model_sampling(config, model_type)
    return config, model_type, ms


def _effective_settings(config, ms):
    return {
        # ModelSamplingDiscrete.__init__ reads sampling_settings.get("beta_schedule", "linear")
        "beta_schedule": config.sampling_settings.get("beta_schedule", "linear"),
        "num_timesteps": ms.num_timesteps,
        "linear_start": ms.linear_start,
        "linear_end": ms.linear_end,
        "zsnr": bool(ms.zsnr),
        "sigma_data": ms.sigma_data,
    }


def _ksampler_sigmas(comfy, fake_model, steps, scheduler, sampler, denoise=None):
    ks = comfy.samplers.KSampler(
        fake_model, steps=steps, device="cpu", sampler=sampler, scheduler=scheduler, denoise=denoise
    )
    if ks.scheduler != scheduler or ks.sampler != sampler:
        raise RuntimeError(f"KSampler replaced {scheduler}/{sampler} with {ks.scheduler}/{ks.sampler}")
    return ks.sigmas


def _guard(fn):
    try:
        return fn()
    except Exception as e:  # recorded, not hidden: the test data says what ComfyUI does
        return {"error": f"{type(e).__name__}: {e}"}


def _one_model(torch, comfy, args, key, description, cls, fake_sd, extra):
    config, model_type, ms = _build_model_sampling(comfy, cls, fake_sd, extra)
    fake = _FakeModel(ms)
    names = comfy.samplers.SCHEDULER_NAMES
    entry = {
        "description": description,
        "config_class": cls.__name__,
        "model_type": model_type.name,
        "model_sampling_bases": [b.__name__ for b in type(ms).__bases__],
        "sampling_settings": dict(config.sampling_settings),
        "effective": _effective_settings(config, ms),
        "sigma_min": _num(ms.sigma_min),
        "sigma_max": _num(ms.sigma_max),
        "sigmas": _nums(ms.sigmas),
        "schedules": {},
        "schedules_" + DISCARD_SAMPLER: {},
        "denoise": {},
        "timesteps": {},
    }

    for sched in names:
        per_steps = {}
        for n in args.steps:
            def full(n=n, sched=sched):
                s = _ksampler_sigmas(comfy, fake, n, sched, FULL_SAMPLER)
                direct = comfy.samplers.calculate_sigmas(ms, sched, n)
                same = torch.equal(s, direct) or (
                    s.shape == direct.shape and bool(torch.all((s == direct) | (s.isnan() & direct.isnan())))
                )
                if not same:
                    raise RuntimeError("KSampler and calculate_sigmas disagree")
                return _nums(s)
            per_steps[str(n)] = _guard(full)
        entry["schedules"][sched] = per_steps

        discard = {}
        for n in args.denoise_steps:
            discard[str(n)] = _guard(
                lambda n=n, sched=sched: _nums(_ksampler_sigmas(comfy, fake, n, sched, DISCARD_SAMPLER))
            )
        entry["schedules_" + DISCARD_SAMPLER][sched] = discard

        den = {}
        for n in args.denoise_steps:
            den[str(n)] = {
                repr(d): _guard(
                    lambda n=n, d=d, sched=sched: _nums(_ksampler_sigmas(comfy, fake, n, sched, FULL_SAMPLER, d))
                )
                for d in args.denoise
            }
        entry["denoise"][sched] = den

        ts = {}
        for n in args.denoise_steps:
            def timesteps(n=n, sched=sched):
                s = _ksampler_sigmas(comfy, fake, n, sched, FULL_SAMPLER)
                out = []
                for v in s:
                    if float(v) > 0 and math.isfinite(float(v)):
                        out.append(int(ms.timestep(v.reshape(1)).item()))
                    else:
                        out.append(None)
                return out
            ts[str(n)] = _guard(timesteps)
        entry["timesteps"][sched] = ts
    return entry


def _dumps(obj, level=0):
    """JSON with nested objects indented and lists of numbers kept compact
    (10 to a line when long), so the file reads and diffs well."""
    pad = " " * level
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [
            f'{pad} {json.dumps(str(k))}: {_dumps(v, level + 1)}' for k, v in obj.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and not any(isinstance(v, (dict, list)) for v in obj):
        parts = [json.dumps(v, allow_nan=False) for v in obj]
        if len(parts) <= 24:
            return "[" + ", ".join(parts) + "]"
        rows = [", ".join(parts[i:i + 10]) for i in range(0, len(parts), 10)]
        return "[\n" + ",\n".join(pad + "  " + r for r in rows) + "\n" + pad + " ]"
    if isinstance(obj, list):
        return "[" + ", ".join(_dumps(v, level + 1) for v in obj) + "]"
    return json.dumps(obj, allow_nan=False)


def provenance(args, comfy, what: str, generator: str, stand_in: bool, **environment) -> dict:
    """The head of a reference file: what it holds, which ComfyUI made it, and where."""
    import numpy
    import scipy
    import torch

    return {
        "format": 1,
        "what": f"{what} (numbers only; see tests/data/README.md)",
        "generator": generator,
        "generated_utc": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "comfyui": {
            "repository": args.repository,
            "commit": _commit_of(args.comfyui, args.commit),
            "version": comfy.version,
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "scipy": scipy.__version__,
            **environment,
            "torchvision_stand_in": stand_in,
            "device": "cpu",
        },
    }


def main(argv=None):
    args = _parse_args(argv)
    comfy, stand_in = _import_comfy(args.comfyui)
    import torch

    torch.set_num_threads(1)
    samplers = comfy.samplers
    data = {
        **provenance(args, comfy, "sigma schedules computed by ComfyUI's own code", "benchmarks/comfy_reference.py",
                     stand_in),
        "float_encoding": "repr of float32 values; non-finite values as the strings "
        "'NaN', 'Infinity', '-Infinity'",
        "scheduler_names": list(samplers.SCHEDULER_NAMES),
        "ksampler_names": list(samplers.KSAMPLER_NAMES),
        "sampler_names": list(samplers.SAMPLER_NAMES),
        "discard_penultimate_sigma_samplers": sorted(samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS),
        "cases": {
            "schedules": f"KSampler(sampler={FULL_SAMPLER!r}, denoise=None).sigmas, which equals "
            "calculate_sigmas(model_sampling, scheduler, steps); keyed by scheduler then steps",
            "schedules_" + DISCARD_SAMPLER: f"KSampler(sampler={DISCARD_SAMPLER!r}).sigmas: "
            "a schedule of steps+1 with its penultimate sigma dropped",
            "denoise": f"KSampler(sampler={FULL_SAMPLER!r}, denoise=d).sigmas: the last steps+1 "
            "sigmas of a schedule of int(steps/d) steps; keyed by scheduler, steps, repr(d)",
            "timesteps": "model_sampling.timestep(sigma) for each sigma of 'schedules' "
            "(null where sigma is 0 or not finite)",
            "error": "a case that raised in ComfyUI is {'error': 'Type: message'}",
        },
        "steps": list(args.steps),
        "denoise_steps": list(args.denoise_steps),
        "denoise_values": list(args.denoise),
        "models": {},
    }
    for key, description, cls, fake_sd, extra in _model_specs(torch, comfy):
        data["models"][key] = _one_model(torch, comfy, args, key, description, cls, fake_sd, extra)

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(_dumps(data))
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes), ComfyUI {data['comfyui']['commit']}")


if __name__ == "__main__":
    main()
