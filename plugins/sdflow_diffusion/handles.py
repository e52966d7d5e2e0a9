"""The values that flow through the diffusion stages' ports.

One small class per port type.  Tensors live on the run's device in its
dtype, except IMAGE and MASK, which are float32 on the CPU (what Pillow and
the PNG writer need).  Imports torch only for type checking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Family:
    """What a checkpoint is: its family and the settings that follow from it.

    ``kind`` is "sd1", "sd2", "sdxl" or "sdxl-refiner" (described in
    :mod:`sdflow_diffusion.models.architectures`); ``name`` is the shipped config folder
    it was loaded with (e.g. "sd15", "sd21-v", "sdxl-base", "sd1-tiny").
    ``scheduler_config`` is the diffusers scheduler config of the family
    (prediction type, beta schedule, zero terminal SNR, timestep spacing),
    which every sampler honours.
    """

    name: str
    kind: str
    prediction_type: str
    scheduler_config: dict[str, Any]
    vae_scaling_factor: float
    vae_shift_factor: float | None = None
    vae_scale_factor: int = 8  # pixels per latent cell, from the VAE's own config
    description: str = ""
    variant: str | None = None  # "inpainting": the U-Net also takes a mask and a masked image

    @property
    def architecture(self):
        """What the kind is, as data (:mod:`sdflow_diffusion.models.architectures`)."""
        from sdflow_diffusion.models.architectures import architecture

        return architecture(self.kind)


@dataclass(frozen=True)
class ModelHandle:
    """MODEL: the denoising U-Net of a checkpoint.

    ``patches``: changes to its weights (a LoRA at a strength, ...) that a
    stage added.  They are applied only while the model runs and undone
    after (:func:`sdflow_diffusion.models.patches.applied`): the U-Net
    object is shared with the cached checkpoint and never changes for good.
    """

    unet: Any  # diffusers.UNet2DConditionModel
    family: Family
    device: Any  # torch.device
    dtype: Any  # torch.dtype it computes in; its parameters may be narrower (models.storage), here and in CLIP
    patches: tuple[Any, ...] = ()

    @property
    def module(self):
        """The torch module the patches change."""
        return self.unet


@dataclass(frozen=True)
class ClipHandle:
    """CLIP: the tokenizer(s) and text encoder(s) of a checkpoint.

    SD 1.x and 2.x have one of each; SDXL two (CLIP ViT-L, then OpenCLIP
    ViT-bigG with projection, whose pooled output SDXL also conditions on).
    """

    tokenizers: tuple[Any, ...]  # transformers.CLIPTokenizer
    encoders: tuple[Any, ...]  # CLIPTextModel / CLIPTextModelWithProjection
    family: Family
    device: Any
    dtype: Any
    patches: tuple[Any, ...] = ()  # as ModelHandle's, on the text encoders
    last_layer: int | None = None  # clip_set_last_layer: stop at this layer (-1 the last), None: the kind's own

    @property
    def module(self):
        """The torch modules the patches change (one per text encoder)."""
        return self.encoders


@dataclass(frozen=True)
class VaeHandle:
    """VAE: the autoencoder, and the factor between its latents and the U-Net's."""

    vae: Any  # diffusers.AutoencoderKL
    family: Family
    device: Any
    dtype: Any


@dataclass(frozen=True)
class Conditioning:
    """CONDITIONING: encoded prompt(s), and where and when each applies.

    ``embeds``: [1, tokens, dim] (tokens = 77 x chunks); ``pooled``: [1, dim]
    for SDXL, else None.  As in ComfyUI a conditioning is a list of such
    entries (conditioning_combine joins lists): this object is the first,
    ``rest`` holds the others (:attr:`entries` gives them all).  Each entry
    may be limited to an ``area`` ((height, width, y, x) in latent cells)
    weighted by ``strength``, to a ``mask`` ([1 or batch, H, W], any size,
    resized to the latent when sampling; weighted by ``mask_strength``), and
    to the part of the schedule between ``start`` and ``end`` (shares of it,
    0 the first step).  The sampler mixes the entries' predictions weighted
    by their areas and masks, as ComfyUI does.
    """

    embeds: "torch.Tensor"
    pooled: "torch.Tensor | None" = None
    area: tuple[int, int, int, int] | None = None
    strength: float = 1.0
    mask: "torch.Tensor | None" = None
    mask_strength: float = 1.0
    set_area_to_bounds: bool = False
    start: float = 0.0
    end: float = 1.0
    # SDXL's micro-conditioning ((height, width) in pixels, crop (top, left));
    # None: the image's size, as the sampler finds it.  The refiner's score.
    original_size: tuple[int, int] | None = None
    crop: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None
    aesthetic_score: float | None = None
    # ControlNets guiding this entry (apply_controlnet), in the order applied:
    # objects with residuals(call) -> (down residuals, mid residual) or None
    # (see sdflow_diffusion.numerics.denoiser.UNetCall).
    control: tuple[Any, ...] = ()
    rest: tuple["Conditioning", ...] = ()

    @property
    def entries(self) -> tuple["Conditioning", ...]:
        """Every entry, each with no ``rest``."""
        from dataclasses import replace

        return (replace(self, rest=()), *self.rest)

    @staticmethod
    def of(entries) -> "Conditioning":
        """One conditioning of several entries (in order)."""
        from dataclasses import replace

        first, *others = [entry for c in entries for entry in c.entries]
        return replace(first, rest=tuple(others))


@dataclass(frozen=True)
class Latent:
    """LATENT: [batch, channels, height/f, width/f] in the U-Net's space
    (the VAE's latents times its scaling factor), float32 on the CPU between
    stages.  ``noise_mask`` is for inpainting (None: repaint everything).
    """

    samples: "torch.Tensor"
    noise_mask: "torch.Tensor | None" = None
    extra: dict[str, Any] = field(default_factory=dict)


# IMAGE: torch.Tensor [batch, height, width, 3], float32 in [0, 1], on the CPU.
# MASK:  torch.Tensor [batch, height, width], float32 in [0, 1], on the CPU.
