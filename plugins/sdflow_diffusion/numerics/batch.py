"""Fitting a tensor to a batch size, as ComfyUI does wherever a mask or a latent meets a larger batch."""

from __future__ import annotations

import math

import torch


def repeat_to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """``tensor`` repeated whole, then cut, to ``batch`` along dim 0
    (ComfyUI's ``repeat_to_batch_size``)."""
    if tensor.shape[0] == batch:
        return tensor
    repeats = math.ceil(batch / tensor.shape[0])
    return tensor.repeat(repeats, *[1] * (tensor.ndim - 1))[:batch]
