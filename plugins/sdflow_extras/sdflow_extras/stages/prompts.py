"""wildcard_encode: a prompt template, expanded from a seed, then encoded by CLIP."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from sdflow.plugin import Params, Port, StageError, stage
from sdflow_extras.wildcards import Expansion, TemplateError, expand, parse

FOLDERS_HELP = ("wildcard folders: --wildcards-dir DIR (or $SDFLOW_WILDCARDS), "
                "then wildcards/ beside the recipe")


class WildcardEncode(Params):
    text: str = Field(description="the prompt template: {a|b} picks one option, __name__ a line "
                                  "of name.txt from the wildcard folders; \\{ \\| \\} \\_ are literal")
    seed: int = Field(0, ge=0, le=2**64 - 1, description="picks the options: the same seed, the same prompt")

    @field_validator("text")
    @classmethod
    def _parses(cls, text: str) -> str:
        # Braces are checked with the recipe; wildcard files only when it runs.
        try:
            parse(text, where="")
        except TemplateError as err:
            raise ValueError(err.message + (f" ({err.help})" if err.help else "")) from None
        return text


@stage(
    params=WildcardEncode,
    inputs={"clip": Port("CLIP", "the text encoder")},
    outputs={"conditioning": Port("CONDITIONING", "the expanded prompt, encoded")},
)
def wildcard_encode(ctx, params: WildcardEncode, clip) -> dict:
    """Expand a wildcard prompt template from a seed and encode it with CLIP. ComfyUI: Random Prompts + CLIPTextEncode.

    ``{a|b}`` picks an option, ``__name__`` a line of ``name.txt`` (the
    "dynamic prompts" syntax of the A1111 extension and ComfyUI's
    comfyui-dynamicprompts nodes).  The expanded prompt is recorded in
    every image made from it, under ``prompt KEY`` (``sdflow show`` prints
    it), with the SHA-256 of each wildcard file it read.
    """
    from sdflow_diffusion.stages.text import ClipTextEncode, clip_text_encode

    expansion = _expand(ctx, params)
    ctx.record(**{f"prompt {ctx.key}": expansion.text})
    return ctx.call(clip_text_encode, ClipTextEncode(text=expansion.text), clip=clip)


@wildcard_encode.identifies
def _wildcard_files(ctx, params: WildcardEncode) -> None:
    # The files' contents decide the prompt: their identities belong in the
    # cache key (an edited colors.txt encodes again) and in the image.
    for name, path in _expand(ctx, params).files.items():
        ctx.identify_file(f"wildcard __{name}__", path)


def wildcard_folders(ctx) -> list[Path]:
    """Where wildcard files are looked up, in order: the settings' folders,
    then ``wildcards/`` beside the recipe."""
    folders = [Path(folder).expanduser() for folder in getattr(ctx.settings, "wildcards_dirs", ())]
    if ctx.recipe_dir is not None:
        folders.append(ctx.recipe_dir / "wildcards")
    return folders


def _expand(ctx, params: WildcardEncode) -> Expansion:
    try:
        return expand(params.text, params.seed, wildcard_folders(ctx))
    except TemplateError as err:
        lost = err.missing is not None and not err.near  # say where files are looked for
        raise StageError(err.message, f"{err.help}; {FOLDERS_HELP}" if lost else err.help) from None
    except OSError as err:
        raise StageError(f"cannot read a wildcard file: {err}", FOLDERS_HELP) from None
