"""AUTOMATIC1111's ``parameters`` text, which image viewers, galleries and
model sites read from a PNG to show how it was made.

Its layout: the prompt; a ``Negative prompt:`` line when there is one; then
one line of ``Key: value`` pairs in A1111's order (Steps, Sampler, Schedule
type, CFG scale, Seed, Size, Model hash, Model, Denoising strength, Clip
skip, Lora hashes, Version), a value quoted as a JSON string when it holds a
comma, a colon or a line break.

A recipe is a graph, A1111's text one sampler's settings: it describes the
output's *main* sample stage, the first that ran on its way (for a hires fix,
the first pass, with the second pass's denoise as the denoising strength),
its prompt and negative (the first text encode found going back through
combined or masked conditioning), the checkpoint its model came from and
the LoRAs applied on the way.  What it cannot say (a second sampler's
steps, area prompts, ControlNets) is left out; the recipe in the PNG says
all of it.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePath
from typing import Any, Sequence

# ComfyUI's sampler names (sdflow's) -> the names A1111 shows.
SAMPLERS = {
    "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2", "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS", "dpmpp_2s_ancestral": "DPM++ 2S a", "dpmpp_sde": "DPM++ SDE", "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_3m_sde": "DPM++ 3M SDE", "ddim": "DDIM", "uni_pc": "UniPC",
    "lcm": "LCM", "heunpp2": "Heun++ 2", "ddpm": "DDPM", "ipndm": "IPNDM", "deis": "DEIS",
    "uni_pc_bh2": "UniPC BH2",
}
# ComfyUI's schedule names -> A1111's "Schedule type" names.
SCHEDULES = {
    "normal": "Normal", "karras": "Karras", "exponential": "Exponential", "sgm_uniform": "SGM Uniform",
    "simple": "Simple", "ddim_uniform": "DDIM", "beta": "Beta", "kl_optimal": "KL Optimal",
    "linear_quadratic": "Linear Quadratic",
}
SAMPLE_STAGES = ("sample", "sample_advanced")
# Text encodes and the field holding the prompt A1111 would show.
TEXT_FIELDS = {"clip_text_encode": "text", "clip_text_encode_sdxl": "text_g", "clip_text_encode_sdxl_refiner": "text"}
# Inputs that carry no prompt on the way back from a conditioning.
NOT_PROMPTS = frozenset({"clip", "mask", "image", "control_net", "vae", "model"})


def parameters(lineage: Sequence[Any], index: int, size: tuple[int, int], version: str) -> str | None:
    """A1111's text for image ``index`` (of ``size``, width x height) of an
    output whose :meth:`RunContext.lineage` is ``lineage``; None when no
    sample stage led to it."""
    stages = {u.key: u for u in lineage}
    samples = [u for u in lineage if u.type in SAMPLE_STAGES]
    if not samples:
        return None
    main, last = samples[-1], samples[0]  # lineage is nearest first: the first sampler to run is last
    params = main.params
    prompt = _prompt(stages, main.inputs.get("positive"))
    negative = _prompt(stages, main.inputs.get("negative"))
    seeds = next((u.records["seeds"] for u in lineage if isinstance(u.records.get("seeds"), list)), None)
    seed = seeds[index] if seeds and index < len(seeds) else params.seed + index
    sampler = params.sampler.removeprefix("diffusers:")
    pairs: list[tuple[str, Any]] = [
        ("Steps", params.steps), ("Sampler", SAMPLERS.get(sampler, sampler)),
        ("Schedule type", SCHEDULES.get(params.scheduler, params.scheduler)), ("CFG scale", _number(params.cfg)),
        ("Seed", seed), ("Size", f"{size[0]}x{size[1]}"),
    ]
    checkpoint = _checkpoint(stages, main.inputs.get("model"))
    if checkpoint is not None:
        name, sha = checkpoint
        pairs += [("Model hash", sha[:10]), ("Model", PurePath(name).stem)]
    denoise = getattr(last.params, "denoise", 1.0) if last is not main else getattr(params, "denoise", 1.0)
    if denoise < 1.0:
        pairs.append(("Denoising strength", _number(denoise)))
    skip = next((u.params.stop_at_clip_layer for u in lineage if u.type == "clip_set_last_layer"), None)
    if skip is not None and skip != -1:
        pairs.append(("Clip skip", -skip))
    loras = [(PurePath(u.params.name).stem, sha[:12]) for u in reversed(lineage) if u.type.startswith("load_lora")
             for sha in u.files.values()]
    if loras:
        pairs.append(("Lora hashes", ", ".join(f"{name}: {sha}" for name, sha in loras)))
    pairs.append(("Version", version))
    lines = [prompt or ""]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{key}: {_quoted(str(value))}" for key, value in pairs))
    return "\n".join(lines)


def _prompt(stages: dict, source: tuple[str, str] | None) -> str | None:
    """The first prompt text found going back from a conditioning input."""
    seen: set[str] = set()
    todo = [source[0]] if source else []
    while todo:
        key = todo.pop(0)
        if key in seen or key not in stages:
            continue
        seen.add(key)
        stage = stages[key]
        if stage.type in TEXT_FIELDS:
            return getattr(stage.params, TEXT_FIELDS[stage.type])
        todo += [src for port, (src, _) in stage.inputs.items() if port not in NOT_PROMPTS]
    return None


def _checkpoint(stages: dict, source: tuple[str, str] | None) -> tuple[str, str] | None:
    """The name and SHA-256 of the checkpoint a model input came from
    (back through LoRAs and other model patches)."""
    key = source[0] if source else None
    while key in stages:
        stage = stages[key]
        if stage.type == "load_checkpoint" and stage.files:
            label, sha = next(iter(stage.files.items()))
            return label, sha
        key = stage.inputs["model"][0] if "model" in stage.inputs else None
    return None


def _number(value: float) -> str:
    return f"{value:g}"


def _quoted(text: str) -> str:
    """As A1111 writes a value: as it is, unless a comma, colon or line
    break would split it, then as a JSON string."""
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


# -- reading it back: sdflow import -------------------------------------------

A1111_SAMPLERS = {name: comfy for comfy, name in SAMPLERS.items()}
A1111_SCHEDULES = {name: comfy for comfy, name in SCHEDULES.items()} | {"Uniform": "normal"}
# Before A1111 1.9 the schedule was part of the sampler's name ("DPM++ 2M Karras").
OLD_SUFFIXES = {" Karras": "karras", " Exponential": "exponential", " SGMUniform": "sgm_uniform"}
USED = ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model", "Clip skip")
_PAIR = re.compile(r'\s*([A-Za-z][\w \-/().]*?):\s*("(?:[^"\\]|\\.)*"|[^,]*)(?:,|$)')
_LORA = re.compile(r"<(lora|lyco):([^:>]+)(?::([^:>]*))?(?::([^:>]*))?>")
_OTHER_TAG = re.compile(r"<(hypernet):[^>]*>")


def parse(text: str) -> tuple[str, str, dict[str, str]]:
    """The prompt, the negative and the settings (key -> value, in order)
    of A1111's parameters text.  Raises ValueError when its last line is
    not a settings line (``Steps: ...`` among at least three pairs)."""
    lines = text.strip("\n").split("\n")
    settings = _pairs(lines[-1])
    if "Steps" not in settings or len(settings) < 3:
        raise ValueError("its last line is not A1111's settings line (Steps: ..., Sampler: ..., Seed: ...)")
    lines = lines[:-1]
    negative_at = next((i for i, line in enumerate(lines) if line.startswith("Negative prompt:")), len(lines))
    negative = "\n".join(lines[negative_at:])[len("Negative prompt:"):].strip() if negative_at < len(lines) else ""
    return "\n".join(lines[:negative_at]).strip(), negative, settings


def _pairs(line: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    position = 0
    while position < len(line):
        found = _PAIR.match(line, position)
        if found is None or found.end() == position:
            break
        key, value = found.group(1).strip(), found.group(2).strip()
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        pairs[key] = value
        position = found.end()
    return pairs


def import_a1111(path) -> str | None:
    """``sdflow import``'s reader of A1111's parameters: from a PNG's
    ``parameters`` text chunk (A1111, Forge, Fooocus in its A1111 mode,
    stable-diffusion.cpp write it) or a ``.txt`` file holding that text; None
    for a file without it.  The recipe: txt2img with A1111's prompt reading
    (``convention="a1111"``), its LoRA tags as load_lora stages, clip skip,
    size, sampler, schedule, steps, CFG and seed as params; every key it
    does not use kept as a comment."""
    from pathlib import Path

    from sdflow.plugin import StageError

    path = Path(path)
    if path.suffix.lower() == ".txt":
        text = path.read_text(encoding="utf-8", errors="replace")
    else:
        text = _png_parameters(path)
        if text is None:
            return None
    try:
        prompt, negative, settings = parse(text)
    except ValueError as err:
        raise StageError(f"A1111 parameters that sdflow cannot read: {err}") from None
    return _recipe(path.name, prompt, negative, settings)


def _png_parameters(path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}).get("parameters") or image.info.get("parameters")
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return text if isinstance(text, str) else None


def _recipe(source: str, prompt: str, negative: str, settings: dict[str, str]) -> str:
    from sdflow.plugin import literal

    notes = [f"Made by sdflow import from {source} (AUTOMATIC1111's parameters)."]
    loras = [(m.group(2), *_strengths(m.group(3), m.group(4))) for m in _LORA.finditer(prompt)]
    if loras:
        notes.append("The prompt's LoRA tags are load_lora stages (the file names are guesses: NAME.safetensors).")
    if _OTHER_TAG.search(prompt):
        notes.append("Hypernetwork tags were removed from the prompt: sdflow has no hypernetworks.")
    prompt = _OTHER_TAG.sub("", _LORA.sub("", prompt))
    prompt = re.sub(r"\s*,\s*(,\s*)+", ", ", prompt).strip(" ,\n")
    sampler_name = settings.get("Sampler", "Euler")
    scheduler = A1111_SCHEDULES.get(settings.get("Schedule type", ""), None)
    for suffix, schedule in OLD_SUFFIXES.items():
        if sampler_name.endswith(suffix) and sampler_name not in A1111_SAMPLERS:
            sampler_name, scheduler = sampler_name[: -len(suffix)], scheduler or schedule
    sampler = A1111_SAMPLERS.get(sampler_name)
    if sampler is None:
        notes.append(f"Sampler {sampler_name!r} has no sdflow equivalent; euler is used.")
        sampler = "euler"
    if settings.get("Schedule type") and settings["Schedule type"] not in A1111_SCHEDULES:
        notes.append(f"Schedule type {settings['Schedule type']!r} has no sdflow equivalent; normal is used.")
    width, height = _size(settings.get("Size", "512x512"))
    params = {
        "checkpoint": f"{settings.get('Model', 'model')}.safetensors",
        "prompt": prompt,
        "negative_prompt": negative,
        "width": width,
        "height": height,
        "seed": _int(settings.get("Seed"), 0),
        "steps": _int(settings.get("Steps"), 20),
        "cfg": _float(settings.get("CFG scale"), 7.0),
    }
    unused = [f"{key}: {value}" for key, value in settings.items() if key not in USED]
    lines = [f"# {note}" for note in notes]
    if unused:
        lines.append("# Not used (A1111's keys sdflow has no stage for, or keeps only as a record):")
        lines += [f"#   {_one_line(entry)}" for entry in unused]
    lines += ["sdflow 1", ""]
    lines += [f"param {name} = {literal(value)}" for name, value in params.items()]
    lines += ["", "ckpt = load_checkpoint(name=checkpoint)"]
    model, clip = "ckpt.model", "ckpt.clip"
    for i, (name, unet, text_encoder) in enumerate(loras, start=1):
        lines.append(f"lora_{i} = load_lora(model={model}, clip={clip}, name={literal(name + '.safetensors')}, "
                     f"strength_model={literal(unet)}, strength_clip={literal(text_encoder)})")
        model, clip = f"lora_{i}.model", f"lora_{i}.clip"
    skip = _int(settings.get("Clip skip"), 1)
    if skip > 1:
        lines.append(f"skip = clip_set_last_layer(clip={clip}, stop_at_clip_layer={-skip})")
        clip = "skip.clip"
    lines += [
        f'positive = clip_text_encode(clip={clip}, text=prompt, convention="a1111")',
        f'negative = clip_text_encode(clip={clip}, text=negative_prompt, convention="a1111")',
        "latent = empty_latent(width=width, height=height, batch=1)",
        f"denoised = sample(model={model}, positive=positive, negative=negative, latent=latent, seed=seed, "
        f"steps=steps, cfg=cfg, sampler={literal(sampler)}, scheduler={literal(scheduler or 'normal')})",
        "image = vae_decode(vae=ckpt.vae, latent=denoised)",
        'save_image(image=image, prefix="imported")',
    ]
    return "\n".join(lines) + "\n"


def _strengths(first: str | None, second: str | None) -> tuple[float, float]:
    """A LoRA tag's strengths for the model and for CLIP: ``<lora:n:w>`` both
    w; ``<lora:n:te:unet>`` A1111's text-encoder strength, then the U-Net's."""
    one = _float(first, 1.0)
    return (_float(second, one), one) if second is not None else (one, one)


def _size(text: str) -> tuple[int, int]:
    width, _, height = str(text).partition("x")
    return _int(width, 512), _int(height, 512)


def _int(text, default: int) -> int:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return default


def _float(text, default: float) -> float:
    try:
        return float(str(text).strip())
    except (TypeError, ValueError):
        return default


def _one_line(text: str) -> str:
    return text.replace("\n", " ").replace("\r", " ")
