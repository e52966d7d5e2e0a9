"""The parameters of the built-in diffusion stages, as pydantic models.

These are what ``sdflow check`` validates a recipe's literal arguments
against, and what ``sdflow stages`` documents.  Names and defaults follow
ComfyUI's nodes, so that a workflow carries over with the same numbers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from sdflow_diffusion import sampler_table

# ComfyUI's names that a diffusers scheduler serves (see DESIGN.md and
# sampler_table.py, which maps each to its diffusers class and options).
SAMPLERS = tuple(sampler_table.SAMPLERS)
SCHEDULERS = tuple(sampler_table.SCHEDULES)

Sampler = Literal[SAMPLERS]  # type: ignore[valid-type]
Scheduler = Literal[SCHEDULERS]  # type: ignore[valid-type]

MAX_SEED = 2**64 - 1


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoadCheckpoint(_Params):
    name: str = Field(
        min_length=1,
        description="checkpoint file: a name looked up in models/checkpoints, or a path",
    )
    prediction: Literal["auto", "epsilon", "v_prediction"] = Field(
        "auto",
        description="what the model predicts; auto reads it from the file "
        "(SD 2.x: v_prediction unless its name says 512 or base)",
    )


class ClipTextEncode(_Params):
    text: str = Field(description="the prompt; longer than 77 tokens is encoded in chunks")


class EmptyLatent(_Params):
    width: int = Field(512, ge=16, le=16384, multiple_of=8, description="image width in pixels")
    height: int = Field(512, ge=16, le=16384, multiple_of=8, description="image height in pixels")
    batch: int = Field(1, ge=1, le=4096, description="images drawn at once")


class Sample(_Params):
    seed: int = Field(0, ge=0, le=MAX_SEED, description="initial noise seed; image i uses seed + i")
    steps: int = Field(20, ge=1, le=10000, description="denoising steps")
    cfg: float = Field(8.0, ge=0.0, le=100.0, description="classifier-free guidance scale")
    sampler: Sampler = Field("euler", description="sampling method, by ComfyUI's name")
    scheduler: Scheduler = Field("normal", description="noise schedule, by ComfyUI's name")
    denoise: float = Field(1.0, ge=0.0, le=1.0, description="share of the schedule to run")

    @field_validator("scheduler")
    @classmethod
    def _pair_runs(cls, scheduler: str, info: ValidationInfo) -> str:
        """Not every diffusers scheduler has every noise schedule: say so at
        check time, not after the model has loaded."""
        sampler = info.data.get("sampler", "euler")
        reason = sampler_table.supported(sampler, scheduler)
        if reason is not None:
            raise ValueError(reason)
        return scheduler


class VaeDecode(_Params):
    pass


class SaveImage(_Params):
    prefix: str = Field(
        "sdflow",
        min_length=1,
        pattern=r"^[^\x00]*$",
        description="file name prefix inside the output folder (may name subfolders); a counter follows",
    )

    @field_validator("prefix")
    @classmethod
    def _stays_inside(cls, prefix: str) -> str:
        parts = prefix.replace("\\", "/").split("/")
        if prefix.startswith(("/", "\\")) or ".." in parts or (len(prefix) > 1 and prefix[1] == ":"):
            raise ValueError("the prefix must stay inside the output folder: no leading '/', no '..'")
        if parts[-1] in ("", "."):
            raise ValueError("the prefix must end with a file name, such as \"portraits/cat\"")
        return prefix
