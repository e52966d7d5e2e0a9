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
