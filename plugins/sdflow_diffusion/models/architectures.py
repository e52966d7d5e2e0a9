"""What each kind of Stable Diffusion is, as data: its text encoders and how
they condition the U-Net, how a file of it is recognised, what it predicts.

Detection, loading, encoding and sampling read these descriptions instead of
branching on a kind's name, so that adding a kind (the SDXL refiner, say) is
adding a description here and a config folder under ``configs/``.  Torch-free.

A *family* (``configs/<name>/family.json``) is one shipped configuration of
a kind: SD 1.5 and sdflow-tiny are two families of the ``sd1`` kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

END = "<|endoftext|>"


@dataclass(frozen=True)
class TextEncoder:
    """One text encoder of a kind, in the pipeline's order.

    ``prefix``: where its weights are in the original single-file layout;
    ``layout``: how they are named there ("clip", OpenAI's names kept by
    transformers, or "open_clip", OpenCLIP's own); ``activation``: what its
    config says (``quick_gelu`` for OpenAI CLIP, ``gelu`` for OpenCLIP),
    which tells the two apart in a diffusers folder; ``pad``: the padding
    token of its tokenizer; ``hidden_layer``: the hidden state the U-Net is
    conditioned on (-1: the last, after the final layer norm; -2: the one
    before, as SDXL takes it); ``pooled``: it also gives the pooled,
    projected embedding SDXL conditions on.
    """

    subfolder: str
    prefix: str
    layout: Literal["clip", "open_clip"]
    activation: str
    pad: str
    hidden_layer: int = -1
    pooled: bool = False


@dataclass(frozen=True)
class Architecture:
    """A kind of Stable Diffusion.

    ``added_conditions``: what the U-Net takes besides the text ("text_time":
    SDXL's pooled text embedding and its size and crop micro-conditioning;
    "text_time_aesthetic": the refiner's, with an aesthetic score in place
    of the target size); ``pipeline``: the diffusers pipeline class a
    folder of it is saved with;
    ``prediction_by_name``: its files rarely say what they predict, and
    Stability's names do (SD 2.x: "512" or "base" means epsilon, anything
    else v-prediction).
    """

    kind: str
    description: str
    text_encoders: tuple[TextEncoder, ...]
    added_conditions: Literal["text_time", "text_time_aesthetic"] | None = None
    prediction_by_name: bool = False
    pipeline: str = "StableDiffusionPipeline"

    def holds(self, keys) -> bool:
        """Whether a state dict's keys hold every text encoder of this kind."""
        return all(any(key.startswith(encoder.prefix) for key in keys) for encoder in self.text_encoders)


_OPENAI_CLIP = dict(layout="clip", activation="quick_gelu", pad=END)
_OPEN_CLIP = dict(layout="open_clip", activation="gelu", pad="!")

ARCHITECTURES: dict[str, Architecture] = {
    "sdxl": Architecture(
        "sdxl", "Stable Diffusion XL",
        (TextEncoder("text_encoder", "conditioner.embedders.0.transformer.", hidden_layer=-2, **_OPENAI_CLIP),
         TextEncoder("text_encoder_2", "conditioner.embedders.1.model.", hidden_layer=-2, pooled=True,
                     **_OPEN_CLIP)),
        added_conditions="text_time",
        pipeline="StableDiffusionXLPipeline",
    ),
    "sdxl-refiner": Architecture(
        "sdxl-refiner", "Stable Diffusion XL refiner",
        (TextEncoder("text_encoder_2", "conditioner.embedders.0.model.", hidden_layer=-2, pooled=True,
                     **_OPEN_CLIP),),
        added_conditions="text_time_aesthetic",
        pipeline="StableDiffusionXLImg2ImgPipeline",
    ),
    "sd2": Architecture(
        "sd2", "Stable Diffusion 2.x",
        (TextEncoder("text_encoder", "cond_stage_model.model.", **_OPEN_CLIP),),
        prediction_by_name=True,
    ),
    "sd1": Architecture(
        "sd1", "Stable Diffusion 1.x",
        (TextEncoder("text_encoder", "cond_stage_model.transformer.", **_OPENAI_CLIP),),
    ),
}  # most text encoders first: a file is of the first kind whose encoders it holds


def architecture(kind: str) -> Architecture:
    return ARCHITECTURES[kind]


def kind_of_keys(keys) -> str | None:
    """The kind whose text encoders a single file's keys hold, or None."""
    keys = list(keys)
    return next((kind for kind, arch in ARCHITECTURES.items() if arch.holds(keys)), None)


def kind_of_folder(subfolders: set[str], activation_of) -> str | None:
    """The kind of a diffusers folder (or of components), from the text
    encoder subfolders it has and ``activation_of(subfolder)``, the
    activation its first encoder's config names."""
    for kind, arch in ARCHITECTURES.items():
        first = arch.text_encoders[0]
        if {e.subfolder for e in arch.text_encoders} == subfolders and activation_of(first.subfolder) == first.activation:
            return kind
    return None
