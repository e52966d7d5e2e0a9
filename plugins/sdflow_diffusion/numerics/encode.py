"""CLIP text encoding, as ComfyUI's CLIPTextEncode does it and with diffusers' numbers.

CLIP sees at most 77 tokens: a start token, 75 of the prompt, an end token.
The prompt is read (weights, embeddings, BREAK) and cut into chunks of 77 by
:mod:`sdflow_diffusion.numerics.prompt`, as ComfyUI or AUTOMATIC1111 would;
each chunk is encoded alone and the chunks are joined along the token axis.
An embedding's vectors take the place of tokens in the encoder's input
(a forward hook on its token embedding, removed after the call: the cached
encoder is never changed).  Weights are then applied to the encoded chunks
(:func:`weigh`).  A prompt without weights or embeddings that fits one chunk
is token for token what diffusers' pipelines feed the encoder, so its
embedding is theirs bit for bit.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from sdflow.plugin import StageError
from sdflow_diffusion.handles import ClipHandle, Conditioning
from sdflow_diffusion.models.embeddings import Embedding, encoder_key
from sdflow_diffusion.numerics.prompt import (
    CHUNK,
    Chunk,
    Convention,
    SpecialTokens,
    Vector,
    chunk_prompt,
    parse_prompt,
)


def token_windows(tokenizer, text: str, convention: Convention = "comfy") -> torch.Tensor:
    """[chunks, 77] token ids of a prompt without embeddings: ``<start> 75
    tokens <end>`` padded with the tokenizer's own pad token (``<end>`` for
    SD 1.x, ``!`` for OpenCLIP).  An empty prompt is one chunk."""
    chunks = chunk_prompt(parse_prompt(text, convention), _tokenize(tokenizer), {}, _special(tokenizer), convention)
    return torch.tensor([[token for token, _ in chunk] for chunk in chunks], dtype=torch.long)


def encode_text(clip: ClipHandle, text: str | Sequence[str], convention: Convention = "comfy",
                embeddings: Mapping[str, Embedding] | None = None) -> Conditioning:
    """Encode a prompt with ``clip``'s patches (a LoRA's) applied while it runs
    (see :func:`_encode`); ``embeddings``: the files its ``embedding:NAME``
    words name, by NAME.  ``text`` may be one prompt per text encoder
    (SDXL's text_l and text_g: ComfyUI's CLIPTextEncodeSDXL)."""
    from sdflow_diffusion.models.patches import applied
    from sdflow_diffusion.models.run_options import on_device

    with on_device(clip.device, *clip.encoders), applied(clip):  # on the device only now with --lowvram
        return _encode(clip, text, convention, embeddings or {})


@torch.no_grad()
def _encode(clip: ClipHandle, text: str | Sequence[str], convention: Convention,
            embeddings: Mapping[str, Embedding]) -> Conditioning:
    """Encode a prompt: embeds [1, 77 x chunks, dim] on the run's device in
    its dtype, each text encoder's chosen hidden state side by side on the
    feature axis (SDXL: both encoders' penultimate ones); and where the kind
    has one, the pooled embedding [1, dim] of the first chunk (as ComfyUI
    takes it).  One prompt per encoder: the one with fewer chunks gets
    chunks of the empty prompt, as ComfyUI's CLIPTextEncodeSDXL pads."""
    specs = clip.family.architecture.text_encoders
    texts = [text] * len(specs) if isinstance(text, str) else list(text)
    if len(texts) != len(specs):
        raise StageError(f"{len(texts)} prompts for {len(specs)} text encoders")
    parsed_texts = [parse_prompt(t, convention) for t in texts]
    for parsed in parsed_texts:
        for segment in parsed.embeddings:
            if segment.text not in embeddings:
                raise StageError(f"embedding '{segment.text}' at column {segment.column} of the prompt was not "
                                 "loaded", help="clip_text_encode finds embeddings in models/embeddings")
    per_encoder, pooled, empties = [], None, []
    for spec, tokenizer, encoder, parsed in zip(specs, clip.tokenizers, clip.encoders, parsed_texts):
        width = encoder.get_input_embeddings().embedding_dim
        key = encoder_key(spec.layout, spec.pooled)
        vectors = {s.text: embeddings[s.text].vectors(key, width, clip.family.name) for s in parsed.embeddings}
        special = _special(tokenizer)
        chunks = chunk_prompt(parsed, _tokenize(tokenizer), {n: len(v) for n, v in vectors.items()}, special,
                              convention)
        layer = hidden_layer(spec, encoder, clip.last_layer)
        states = []
        for chunk in chunks:
            state, first_pooled = _run(encoder, chunk, vectors, layer)
            states.append(state)
            if spec.pooled and pooled is None:  # CLIPTextModelWithProjection's text_embeds
                pooled = first_pooled
        empty = [(special.start, 1.0), (special.end, 1.0)] + [(special.pad, 1.0)] * CHUNK
        if any(weight != 1.0 for chunk in chunks for _, weight in chunk):
            states = weigh(states, chunks, convention, _run(encoder, empty, {}, layer)[0])
        per_encoder.append(torch.cat(states, dim=1))
        empties.append((encoder, empty, layer))
    if any(spec.pooled for spec in specs) and pooled is None:
        raise ValueError("the text encoder that gives the pooled embedding gave none")
    if isinstance(text, str):  # ComfyUI's SDXL: encoders' embeddings may differ in count
        length = min(states.shape[1] for states in per_encoder)
        per_encoder = [states[:, :length] for states in per_encoder]
    else:
        length = max(states.shape[1] for states in per_encoder)
        per_encoder = [_pad_with_empty(states, length, *empty) for states, empty in zip(per_encoder, empties)]
    embeds = torch.cat(per_encoder, dim=-1)
    return Conditioning(embeds=embeds.to(device=clip.device, dtype=clip.dtype),
                        pooled=None if pooled is None else pooled.to(device=clip.device, dtype=clip.dtype))


def _pad_with_empty(states: torch.Tensor, length: int, encoder, empty: Chunk, layer) -> torch.Tensor:
    """``states`` followed by the empty prompt's chunks up to ``length`` tokens."""
    if states.shape[1] >= length:
        return states
    blank = _run(encoder, empty, {}, layer)[0].to(states)
    return torch.cat([states, *[blank] * ((length - states.shape[1]) // blank.shape[1])], dim=1)


def weigh(states: list[torch.Tensor], chunks: list[Chunk], convention: Convention,
          empty: torch.Tensor) -> list[torch.Tensor]:
    """Each chunk's encoding [1, 77, dim] with its tokens' weights applied.

    ComfyUI: a weighted token's vector moves away from (or towards) the
    empty prompt's vector at its position, ``(z - z_empty) * w + z_empty``.
    AUTOMATIC1111: ``z * w``, then the chunk is scaled so that its mean is
    the unweighted chunk's mean.  In float32, as both compute it.
    """
    weighted = []
    for state, chunk in zip(states, chunks):
        weights = torch.tensor([weight for _, weight in chunk], dtype=torch.float32, device=state.device)
        if bool((weights == 1.0).all()):
            weighted.append(state)
            continue
        z, w = state.float(), weights[None, :, None]
        if convention == "comfy":
            z_empty = empty.float()
            z = torch.where(w != 1.0, (z - z_empty) * w + z_empty, z)
        else:
            mean = z.mean()
            z = z * w
            z = z * (mean / z.mean())
        weighted.append(z.to(state.dtype))
    return weighted


def hidden_layer(spec, encoder, last_layer: int | None) -> tuple[int | None, bool]:
    """Which hidden state of ``encoder`` conditions the U-Net, as
    ``(index into hidden_states or None for the last one after the final
    layer norm, whether the final layer norm is applied to it)``.

    Without clip_set_last_layer: the kind's own (``spec.hidden_layer``).
    With ``last_layer`` = L (-1 the last layer), as ComfyUI's
    ``SDClipModel.set_clip_options``: the output of layer L, through the
    final layer norm for SD 1.x and 2.x, raw for SDXL's encoders (whose
    default, -2, is taken raw); an L beyond the encoder's depth means the
    last layer with its norm.  diffusers' SD 2.x encoder stops one layer
    short of OpenCLIP's (its last hidden state is ComfyUI's -2, the
    kind's default), so L counts one more layer there; the layer it lacks
    (-1) is served by the nearest it has (see :func:`missing_layer`).
    """
    if last_layer is None:
        return (None, True) if spec.hidden_layer == -1 else (spec.hidden_layer, False)
    layers = encoder.config.num_hidden_layers
    normed = spec.hidden_layer == -1  # ComfyUI's layer_norm_hidden_state: SD 1.x and 2.x
    full = layers + _dropped(spec)
    if abs(last_layer) > full:
        return None, True
    index = min(full + last_layer + 1, layers)  # hidden_states[0] is the input, [k + 1] layer k's output
    if normed and index == layers:
        return None, True  # what the encoder returns: the same numbers, bit for bit
    return index, normed


def missing_layer(spec, encoder, last_layer: int) -> bool:
    """Whether ``last_layer`` asks for a layer that diffusers' encoder of
    this kind lacks (SD 2.x's last), which :func:`hidden_layer` serves
    with the nearest it has."""
    dropped = _dropped(spec)
    return dropped > 0 and (last_layer == -1 or abs(last_layer) > encoder.config.num_hidden_layers + dropped)


def _dropped(spec) -> int:
    """Layers diffusers' encoder lacks at the end: SD 2.x's OpenCLIP encoder
    is conditioned on its penultimate layer, so diffusers keeps only the
    layers up to it (and its default is its last hidden state)."""
    return 1 if spec.layout == "open_clip" and spec.hidden_layer == -1 else 0


def _run(encoder, chunk: Chunk, vectors: Mapping[str, torch.Tensor],
         layer: tuple[int | None, bool]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One 77-token chunk (no attention mask, as Stable Diffusion was
    trained): its hidden state [1, 77, dim] and, from an encoder with a
    projection, its pooled embedding [1, dim].  An embedding's vectors
    replace the token embeddings at their places (the ids there are 0, "!",
    never the end token the pooling looks for)."""
    device = next(encoder.parameters()).device
    ids = torch.tensor([[0 if isinstance(t, Vector) else t for t, _ in chunk]], dtype=torch.long, device=device)
    places = [i for i, (t, _) in enumerate(chunk) if isinstance(t, Vector)]
    hook = None
    if places:
        given = torch.stack([vectors[chunk[i][0].name][chunk[i][0].index] for i in places])

        def put(module, inputs, output):
            output = output.clone()
            output[:, places] = given.to(device=output.device, dtype=output.dtype)
            return output

        hook = encoder.get_input_embeddings().register_forward_hook(put)
    index, normed = layer
    try:
        out = encoder(ids, output_hidden_states=True) if index is not None else encoder(ids)
    finally:
        if hook is not None:
            hook.remove()
    if index is None:
        state = out.last_hidden_state
    else:
        state = out.hidden_states[index]
        if normed:
            state = final_layer_norm(encoder)(state)
    return state, getattr(out, "text_embeds", None)


def final_layer_norm(encoder):
    """CLIP's final layer norm (transformers keeps it under ``text_model``
    in the model with a projection, at the top in the one without)."""
    text_model = getattr(encoder, "text_model", encoder)
    return text_model.final_layer_norm


def _tokenize(tokenizer):
    return lambda text: tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids


def _special(tokenizer) -> SpecialTokens:
    return SpecialTokens(tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                         tokenizer.convert_tokens_to_ids(",</w>"))
