"""The arithmetic of the conditioning stages on prompt embeddings (ComfyUI's)."""

from __future__ import annotations

from dataclasses import replace

import torch

from sdflow.plugin import StageError
from sdflow_diffusion.handles import Conditioning


def concat(to: Conditioning, source: Conditioning) -> Conditioning:
    """Each entry of ``to`` with the first entry of ``source``'s tokens after its own."""
    tokens = source.entries[0].embeds
    return Conditioning.of([replace(e, embeds=torch.cat([e.embeds, _like(tokens, e.embeds)], dim=1))
                            for e in to.entries])


def average(to: Conditioning, source: Conditioning, strength: float) -> Conditioning:
    """Each entry of ``to`` blended with ``source``'s first entry: ``to *
    strength + source * (1 - strength)``; ``source`` cut or zero-padded to
    the entry's length, pooled embeddings blended alike."""
    first = source.entries[0]
    out = []
    for entry in to.entries:
        tokens = _like(first.embeds, entry.embeds)[:, :entry.embeds.shape[1]]
        if tokens.shape[1] < entry.embeds.shape[1]:
            pad = torch.zeros((1, entry.embeds.shape[1] - tokens.shape[1], tokens.shape[2]),
                              dtype=tokens.dtype, device=tokens.device)
            tokens = torch.cat([tokens, pad], dim=1)
        blended = entry.embeds * strength + tokens * (1.0 - strength)
        pooled = entry.pooled if entry.pooled is not None else first.pooled
        if entry.pooled is not None and first.pooled is not None:
            pooled = entry.pooled * strength + first.pooled.to(entry.pooled) * (1.0 - strength)
        out.append(replace(entry, embeds=blended, pooled=pooled))
    return Conditioning.of(out)


def _like(tokens: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    if tokens.shape[-1] != other.shape[-1]:
        raise StageError(f"the two conditionings come from different text encoders: {other.shape[-1]} and "
                         f"{tokens.shape[-1]} features", "encode both prompts with the same checkpoint's clip")
    return tokens.to(other)
