"""The diffusion plugin's run settings: ``sdflow run`` flags and variables.

Declared through the ``sdflow_settings`` hook like any plugin's; the engine
turns each field into a flag (``--device``, ``--dtype``, ``--models-dir``,
``--allow-pickle``, ``--inputs``) and an environment variable, and hands the
values to the stages as ``ctx.settings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from sdflow.plugin import setting


class DiffusionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Literal["auto", "cuda", "cpu", "mps"] = setting(
        "auto", "where models run: auto is CUDA when there is a GPU, else the CPU")
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = setting(
        "auto", "the weights' precision: auto is fp16 on CUDA, fp32 elsewhere (SDXL's VAE stays fp32)")
    models_dirs: tuple[Path, ...] = setting(
        (), "where model names are looked up, in ComfyUI's layout (DIR/checkpoints/NAME or "
            "DIR/models/checkpoints/NAME); repeatable",
        flag="--models-dir", env="SDFLOW_MODELS", metavar="DIR")
    allow_pickle: bool = setting(
        False, "load .ckpt/.pt checkpoints (refused by default: a pickle can run code), with weights_only=True")
    inputs_dirs: tuple[Path, ...] = setting(
        (), "where load_image and load_mask look names up (ComfyUI's input folder), before the recipe's "
            "folder and its inputs/ folder; repeatable",
        flag="--inputs", env="SDFLOW_INPUTS", metavar="DIR")

    def resolved(self) -> dict[str, str]:
        """The device and dtype a run would use here, ``auto`` resolved
        (``sdflow lock`` records them; imports torch)."""
        import torch

        from sdflow_diffusion.models.device import resolve_device

        device, dtype = resolve_device(self)
        names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
        return {"device": device.type, "dtype": names[dtype]}
