"""CLIP text encoding, as ComfyUI's CLIPTextEncode does it and with diffusers' numbers.

CLIP sees at most 77 tokens: a start token, 75 of the prompt, an end token.
A longer prompt is cut into windows of 75 tokens, each wrapped and padded to
77 and encoded alone, and the windows are joined along the token axis (as
ComfyUI and AUTOMATIC1111 do; they differ in where they cut, this cuts at
every 75th token).  A prompt that fits is one window, token for token what
diffusers' pipelines feed the encoder, so its embedding is theirs bit for bit.
"""

from __future__ import annotations

import torch

from sdflow_diffusion.handles import ClipHandle, Conditioning


def token_windows(tokenizer, text: str) -> torch.Tensor:
    """[windows, 77] token ids: ``<start> 75 tokens <end>`` padded with the
    tokenizer's own pad token (``<end>`` for SD 1.x, ``!`` for OpenCLIP).
    An empty prompt is one window."""
    ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
    length = tokenizer.model_max_length  # 77
    window = length - 2
    windows = []
    for start in range(0, max(len(ids), 1), window):
        chunk = [tokenizer.bos_token_id, *ids[start:start + window], tokenizer.eos_token_id]
        windows.append(chunk + [tokenizer.pad_token_id] * (length - len(chunk)))
    return torch.tensor(windows, dtype=torch.long)


def encode_text(clip: ClipHandle, text: str) -> Conditioning:
    """Encode a prompt with ``clip``'s patches (a LoRA's) applied while it runs
    (see :func:`_encode`)."""
    from sdflow_diffusion.models.patches import applied

    with applied(clip):
        return _encode(clip, text)


@torch.no_grad()
def _encode(clip: ClipHandle, text: str) -> Conditioning:
    """Encode a prompt: embeds [1, 77 x windows, dim] on the run's device in
    its dtype, each text encoder's chosen hidden state side by side on the
    feature axis (SDXL: both encoders' penultimate ones); and where the kind
    has one, the pooled embedding [1, dim] of the first window (as ComfyUI
    takes it)."""
    per_encoder, pooled = [], None
    for spec, tokenizer, encoder in zip(clip.family.architecture.text_encoders, clip.tokenizers, clip.encoders):
        states = []
        for window in token_windows(tokenizer, text):
            if spec.hidden_layer == -1:  # the last hidden state, after the final layer norm
                out = _hidden(encoder, window)
                states.append(out[0])
            else:
                out = _hidden(encoder, window, hidden_states=True)
                states.append(out.hidden_states[spec.hidden_layer])
            if spec.pooled and pooled is None:  # CLIPTextModelWithProjection's text_embeds
                pooled = out[0]
        per_encoder.append(torch.cat(states, dim=1))
    if any(spec.pooled for spec in clip.family.architecture.text_encoders) and pooled is None:
        raise ValueError("the text encoder that gives the pooled embedding gave none")
    embeds = per_encoder[0] if len(per_encoder) == 1 else torch.cat(per_encoder, dim=-1)
    return Conditioning(embeds=embeds.to(device=clip.device, dtype=clip.dtype),
                        pooled=None if pooled is None else pooled.to(device=clip.device, dtype=clip.dtype))


def _hidden(encoder, window: torch.Tensor, hidden_states: bool = False):
    """Run one 77-token window (no attention mask, as Stable Diffusion was trained)."""
    device = next(encoder.parameters()).device
    ids = window.unsqueeze(0).to(device)
    if hidden_states:
        return encoder(ids, output_hidden_states=True)
    return encoder(ids)
