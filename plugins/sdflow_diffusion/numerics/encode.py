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


@torch.no_grad()
def encode_text(clip: ClipHandle, text: str) -> Conditioning:
    """Encode a prompt: embeds [1, 77 x windows, dim] on the run's device in
    its dtype; for SDXL also the pooled embedding [1, dim] (of the first window,
    as ComfyUI takes it)."""
    if clip.family.kind == "sdxl":
        return _encode_sdxl(clip, text)
    tokenizer, encoder = clip.tokenizers[0], clip.encoders[0]
    embeds = torch.cat([_hidden(encoder, window)[0] for window in token_windows(tokenizer, text)], dim=1)
    return Conditioning(embeds=embeds.to(device=clip.device, dtype=clip.dtype))


def _encode_sdxl(clip: ClipHandle, text: str) -> Conditioning:
    """Both encoders' penultimate hidden states side by side on the feature
    axis; the pooled, projected output of the second (OpenCLIP bigG)."""
    per_encoder, pooled = [], None
    for tokenizer, encoder in zip(clip.tokenizers, clip.encoders):
        states = []
        for window in token_windows(tokenizer, text):
            out = _hidden(encoder, window, hidden_states=True)
            states.append(out.hidden_states[-2])
            if pooled is None and out[0].ndim == 2:  # CLIPTextModelWithProjection's text_embeds
                pooled = out[0]
        per_encoder.append(torch.cat(states, dim=1))
    if pooled is None:
        raise ValueError("SDXL's second text encoder gave no pooled output")
    embeds = torch.cat(per_encoder, dim=-1)
    return Conditioning(embeds=embeds.to(device=clip.device, dtype=clip.dtype),
                        pooled=pooled.to(device=clip.device, dtype=clip.dtype))


def _hidden(encoder, window: torch.Tensor, hidden_states: bool = False):
    """Run one 77-token window (no attention mask, as Stable Diffusion was trained)."""
    device = next(encoder.parameters()).device
    ids = window.unsqueeze(0).to(device)
    if hidden_states:
        return encoder(ids, output_hidden_states=True)
    return encoder(ids)
