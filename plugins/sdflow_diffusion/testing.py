"""Tiny Stable Diffusion models for tests, saved the way users' files are.

For plugin authors and sdflow's own tests: :func:`tiny_components` builds
real diffusers/transformers objects from the shipped tiny family configs
(``sd1-tiny``, ``sd2-tiny``, ``sdxl-tiny``: the real architectures, shrunk to
a few hundred thousand parameters plus CLIP's 49408-token embedding) with
seeded random weights, so that a test runs the same code a real checkpoint
runs, in well under a second, without downloading anything.

:func:`save_single_file` writes them as ONE ``.safetensors`` in the original
Stable Diffusion key layout (what ComfyUI's ``models/checkpoints`` holds) and
:func:`save_diffusers` as a diffusers folder, so that loading goes through
exactly the code path a user's file takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from sdflow_diffusion.models.families import family_dir

Kind = Literal["sd1", "sd2", "sdxl", "sdxl-refiner"]
TINY_FAMILY = {"sd1": "sd1-tiny", "sd2": "sd2-tiny", "sdxl": "sdxl-tiny", "sdxl-refiner": "sdxl-refiner-tiny"}


def tiny_components(kind: Kind, seed: int = 0, family: str | None = None) -> dict[str, Any]:
    """The components of a tiny pipeline of ``kind``, deterministic in ``seed``
    (of the tiny ``family`` of that kind when given, e.g. "sd1-inpaint-tiny").

    Keys: unet, vae, text_encoder, tokenizer, scheduler, and for SDXL also
    text_encoder_2 and tokenizer_2.  Every weight is drawn from a generator
    seeded with ``seed`` (norm scales near 1, the rest small), so that no two
    tensors are equal and a key mapped to the wrong place is caught.
    """
    import torch

    from sdflow_diffusion.models.families import build_components

    if kind not in TINY_FAMILY:
        raise ValueError(f"kind must be one of {sorted(TINY_FAMILY)}, not {kind!r}")
    with torch.random.fork_rng(devices=[]):  # leave the caller's global seed alone
        components = build_components(family_dir(family or TINY_FAMILY[kind]), kind)
    _randomize(components, seed)
    return components


def _randomize(components: dict[str, Any], seed: int) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in sorted(components):
            module = components[name]
            if not isinstance(module, torch.nn.Module):
                continue
            for key, param in sorted(module.named_parameters()):
                noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
                is_scale = key.endswith("weight") and param.ndim == 1  # a norm's scale
                param.copy_(1.0 + 0.1 * noise if is_scale else 0.05 * noise)
            module.eval()


def save_single_file(components: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``components`` as one ``.safetensors`` in the original Stable
    Diffusion layout (``model.diffusion_model.*``, ``first_stage_model.*``,
    and the text encoders under ``cond_stage_model.*`` or
    ``conditioner.embedders.*``)."""
    from safetensors.torch import save_file

    from sdflow_diffusion.models.ldm_layout import to_original

    state = to_original(components)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def save_diffusers(components: dict[str, Any], folder: Path) -> Path:
    """Write ``components`` as a diffusers folder (``model_index.json`` and
    one subfolder per component, weights as safetensors)."""
    from sdflow_diffusion.models.common import quiet

    from sdflow_diffusion.models.architectures import architecture
    from sdflow_diffusion.models.ldm_layout import infer_kind

    folder = Path(folder)
    with quiet():  # importing the pipelines makes transformers talk about image processors
        pipeline = make_pipeline(components, architecture(infer_kind(components)).pipeline)
        pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def make_pipeline(components: dict[str, Any], class_name: str):
    """The diffusers pipeline ``class_name`` around ``components`` (the
    parts a kind lacks given as None, no safety checker)."""
    import diffusers

    cls = getattr(diffusers, class_name)
    parts = {name: components.get(name) for name in ("unet", "vae", "scheduler", "text_encoder", "tokenizer",
                                                     "text_encoder_2", "tokenizer_2")}
    if class_name.startswith("StableDiffusionXL"):
        extra = {"requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False} \
            if "Img2Img" in class_name else {}
        return cls(**parts, **extra)
    parts = {k: v for k, v in parts.items() if not k.endswith("_2")}
    return cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_checkpoint(folder: Path, kind: Kind, layout: Literal["single", "diffusers"] = "single",
                    seed: int = 0) -> Path:
    """Save a tiny ``kind`` model into ``folder`` and return its path: a file
    ``tiny-<kind>.safetensors`` or a folder ``tiny-<kind>``."""
    components = tiny_components(kind, seed)
    if layout == "single":
        return save_single_file(components, Path(folder) / f"tiny-{kind}.safetensors")
    if layout == "diffusers":
        return save_diffusers(components, Path(folder) / f"tiny-{kind}")
    raise ValueError(f"layout must be 'single' or 'diffusers', not {layout!r}")


def tiny_controlnet(unet: Any, seed: int):
    """A ControlNet copied from ``unet`` (a tiny model's), its hint encoder
    and zero convolutions drawn from a generator seeded ``seed`` (a copied
    ControlNet's zero convolutions would add nothing)."""
    import diffusers
    import torch

    with torch.random.fork_rng(devices=[]):
        net = diffusers.ControlNetModel.from_unet(unet)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, param in sorted(net.named_parameters()):
            if key.startswith(("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return net.eval()


def tiny_handles(kind: Kind, seed: int = 0, components: dict[str, Any] | None = None):
    """(ModelHandle, ClipHandle, VaeHandle) around tiny components, on the CPU
    in float32: what load_checkpoint gives, for testing a stage's numerics
    without writing a file."""
    import torch

    from sdflow_diffusion.models.families import family_handle
    from sdflow_diffusion.handles import ClipHandle, ModelHandle, VaeHandle

    components = components if components is not None else tiny_components(kind, seed)
    family = family_handle(TINY_FAMILY[kind])
    cpu, f32 = torch.device("cpu"), torch.float32
    encoders = [n for n in ("text_encoder", "text_encoder_2") if n in components]
    tokenizers = tuple(components[n.replace("text_encoder", "tokenizer")] for n in encoders)
    clip = ClipHandle(tokenizers, tuple(components[n] for n in encoders), family, cpu, f32)
    model = ModelHandle(components["unet"], family, cpu, f32)
    return model, clip, VaeHandle(components["vae"], family, cpu, f32)


def main(argv: list[str] | None = None) -> None:
    """``python -m sdflow_diffusion.testing KIND PATH``: write a tiny model.

    Random weights: it draws noise, not pictures.  It exists so that sdflow
    can be run end to end where no real checkpoint is at hand.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m sdflow_diffusion.testing", description=main.__doc__)
    parser.add_argument("kind", choices=sorted(TINY_FAMILY))
    parser.add_argument("path", type=Path, help="a .safetensors file, or a folder for --layout diffusers")
    parser.add_argument("--layout", choices=("single", "diffusers"), default="single")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.path.exists():  # never replace a file; the README's command may run twice
        print(f"{args.path} exists; kept as it is", file=sys.stderr)
        return
    components = tiny_components(args.kind, args.seed)
    args.path.parent.mkdir(parents=True, exist_ok=True)
    if args.layout == "single":
        save_single_file(components, args.path)
    else:
        save_diffusers(components, args.path)
    print(args.path)


if __name__ == "__main__":
    main()


class StepCounter:
    """A stand-in for a stage's progress counter: counts ``step()`` calls and
    raises :class:`Interrupted` after ``stop_after`` of them, as a user's
    Ctrl-C would."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.count, self.stop_after = 0, stop_after

    def step(self, n: int = 1) -> None:
        from sdflow.plugin import Interrupted

        self.count += n
        if self.stop_after is not None and self.count >= self.stop_after:
            raise Interrupted()
