"""clip_text_encode: a prompt, encoded by a checkpoint's CLIP."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sdflow.plugin import ComfyNode, ParamWarning, Params, Port, stage


class ClipTextEncode(Params):
    text: str = Field(description="the prompt: (word:1.2) weights, embedding:NAME, any length (see docs/prompts.md)")
    convention: Literal["comfy", "a1111"] = Field(
        "comfy", description="how weights, BREAK and long prompts are read: ComfyUI's way or AUTOMATIC1111's")

    def warnings(self) -> list[ParamWarning]:
        """A malformed weight or an unbalanced parenthesis, at its place in the prompt."""
        from sdflow_diffusion.numerics.prompt import parse_prompt

        return [ParamWarning("text", problem.message, problem.column - 1)
                for problem in parse_prompt(self.text, self.convention).problems]


# 0.2: (word:1.2) weights, embedding:NAME and ComfyUI's chunking are read, not encoded as text.
@stage(
    params=ClipTextEncode,
    inputs={"clip": Port("CLIP", "the text encoder")},
    outputs={"conditioning": Port("CONDITIONING", "the encoded prompt")},
    version="0.2.0",
    comfyui=ComfyNode("CLIPTextEncode", inputs="clip", widgets="text", title="CLIP Text Encode (Prompt)"),
)
def clip_text_encode(ctx, params: ClipTextEncode, clip) -> dict:
    """Encode a prompt with CLIP, reading weights, embeddings and long prompts as ComfyUI (or A1111) does.
    ComfyUI: CLIPTextEncode.

    Syntax, convention="comfy" (the default, ComfyUI's): (word) weights by 1.1, ((word)) by 1.21;
    (word:1.3) sets the weight to 1.3, even inside other parentheses; \\( and \\) are literal
    parentheses; [word] and BREAK are plain text. convention="a1111" (AUTOMATIC1111's): (word) x1.1,
    [word] /1.1, (word:1.3) x1.3, all multiplying when nested; \\( \\) \\[ \\] \\\\ literal; BREAK
    starts a new chunk of 75 tokens. In both, embedding:NAME (or (embedding:NAME:1.2)) puts a
    textual-inversion embedding from models/embeddings/NAME(.safetensors|.pt|.bin) in place of
    tokens; a missing one is an error, a malformed weight or an unbalanced parenthesis a warning
    that gives its column.

    How weights apply: comfy moves each weighted token's encoding away from the empty prompt's at
    its place, (z - z_empty) * w + z_empty; a1111 multiplies it, z * w, then rescales the chunk
    so that its mean is unchanged. Long prompts are encoded in chunks of 75 tokens and joined:
    comfy cuts at 75 but moves a weighted run (or an embedding) of fewer than 8 tokens that
    would straddle the cut whole to the next chunk; a1111 moves the words after the last comma
    to the next chunk when that comma is among the last 20 tokens, and never splits an
    embedding. A prompt without weights that fits 75 tokens encodes the same either way."""
    from sdflow_diffusion.models.embeddings import read_embedding
    from sdflow_diffusion.numerics.encode import encode_text
    from sdflow_diffusion.numerics.prompt import parse_prompt

    embeddings = {}
    for segment in parse_prompt(params.text, params.convention).embeddings:
        path = ctx.file_path(_label(segment.text)) or _find(ctx, segment)
        embeddings[segment.text] = read_embedding(segment.text, path, ctx.settings.allow_pickle)
    return {"conditioning": encode_text(clip, params.text, params.convention, embeddings)}


@clip_text_encode.identifies
def _prompt_files(ctx, params: ClipTextEncode) -> None:
    """Each embedding the prompt names, found and checked (in the cache key
    and the metadata), before anything runs."""
    from sdflow_diffusion.models.embeddings import inspect_embedding
    from sdflow_diffusion.numerics.prompt import parse_prompt

    parsed = parse_prompt(params.text, params.convention)  # its problems are check-time warnings (W104)
    for segment in parsed.embeddings:
        path = _find(ctx, segment)
        inspect_embedding(path, ctx.settings.allow_pickle, segment.text)
        ctx.identify_file(_label(segment.text), path)


def _label(name: str) -> str:
    return f"embedding:{name}"


def _find(ctx, segment):
    from sdflow_diffusion.models.embeddings import find_embedding

    return find_embedding(segment.text, ctx.settings, ctx.recipe_dir, segment.column)
