"""The diffusion plugin's run settings: ``sdflow run`` flags and variables.

Declared through the ``sdflow_settings`` hook like any plugin's; the engine
turns each field into a flag (``--device``, ``--dtype``, ``--models-dir``,
``--allow-pickle``, ``--inputs``, and how the models run: ``--deterministic``,
``--compile``, ``--channels-last``, ``--vae-tiling``, ``--weight-dtype``,
``--lowvram``) and an
environment variable, and hands the values to the stages as ``ctx.settings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

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
    # How the models run (sdflow_diffusion.models.run_options).  Off by default.
    deterministic: bool = setting(
        False, "the same seed gives the same bits on CUDA too: deterministic kernels only, cuDNN's autotuner off, "
               "CUBLAS_WORKSPACE_CONFIG=:4096:8 (somewhat slower; the CPU is deterministic either way)")
    compile: bool = setting(
        False, "compile the U-Net with torch.compile: the first sampling steps of a process compile it (tens of "
               "seconds), later ones run faster; needs triton on CUDA, a C++ compiler on the CPU")
    channels_last: bool = setting(
        False, "keep the U-Net's and the VAE's tensors in channels-last layout (faster convolutions on recent "
               "NVIDIA GPUs)")
    vae_tiling: bool = setting(
        False, "decode and encode images larger than the VAE's own size (SD 1.5: 512 px, SDXL: 1024) in "
               "overlapping tiles: far less memory, other pixels (for big images on small cards)")
    weight_dtype: Literal["auto", "file", "run"] = setting(
        "auto", "how a checkpoint's weights are kept in memory: file keeps an fp16, bf16 or fp8 file's U-Net, "
                "text encoders and ControlNets so when --dtype is wider, each layer's weights converted as it runs (the same "
                "images, half the memory for an fp16 file run in fp32, a little slower); run converts them all "
                "to --dtype as they load; auto is file on the CPU (without --compile), run elsewhere")
    lowvram: bool = setting(
        False, "keep the models in CPU memory and move each to the GPU only while it runs (for 4-6 GB cards; "
               "slower)")

    def resolved(self) -> dict[str, Any]:
        """The device and dtype a run would use here, ``auto`` resolved, and
        the options that may change its bits (``sdflow lock`` records them;
        imports torch)."""
        import torch

        from sdflow_diffusion.models.device import resolve_device

        device, dtype = resolve_device(self)
        names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
        return {"device": device.type, "dtype": names[dtype], **self.pixel_options()}

    def pixel_options(self) -> dict[str, bool]:
        """The options that are on and may change an image's bits, as images
        and lock files record them: ``--deterministic``, ``--compile``,
        ``--channels-last``, ``--vae-tiling``.  An option that is off is not
        recorded, so images and locks written without these options read as
        they did.  ``--lowvram`` only moves models: the same bits."""
        return {name: True for name in PIXEL_OPTIONS if getattr(self, name)}


PIXEL_OPTIONS = ("deterministic", "compile", "channels_last", "vae_tiling")
