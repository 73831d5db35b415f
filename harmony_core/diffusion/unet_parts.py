"""diffusers' UNet2DModel run in parts: encoder (time embedding, conv_in, down blocks, mid) -> h; decoder.

h-space methods need the bottleneck h = mid_block output (B x 512 x 8 x 8 for the 256-px DDPMs)
and the skip connections separately, so that one encoder pass can feed two decoder passes (plain h
and injected h~ with the SAME skips). The parts perform exactly the operations of
``UNet2DModel.forward`` in the same order, so ``decode(encode(x, t)) == unet(x, t).sample`` bit for bit
(tests/test_diffusion.py checks torch.equal).

Supported: the DDPM-style configs (positional time embedding, plain/attention down and up blocks, no
class conditioning). Score-SDE variants (fourier embedding, skip blocks) raise NotImplementedError.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DModel


@dataclass
class Encoded:
    """What the decoder needs: h (the mid block's output), the skips (conv_in output first), the time embedding."""

    h: torch.Tensor
    skips: tuple[torch.Tensor, ...]
    emb: torch.Tensor


def _check_supported(unet: UNet2DModel) -> None:
    config = unet.config
    if config.time_embedding_type != "positional" or unet.class_embedding is not None:
        raise NotImplementedError("unet_parts supports positional time embeddings without class conditioning")
    if any(hasattr(block, "skip_conv") for block in (*unet.down_blocks, *unet.up_blocks)):
        raise NotImplementedError("unet_parts does not support skip-type (score-SDE) blocks")
    if unet.mid_block is None:
        raise NotImplementedError("unet_parts needs a mid block: h-space is its output")


def time_embedding(unet: UNet2DModel, t: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """The embedding of timestep t broadcast to the batch, as UNet2DModel.forward computes it."""
    timesteps = t if torch.is_tensor(t) else torch.tensor([t], dtype=torch.long, device=device)
    if timesteps.ndim == 0:
        timesteps = timesteps[None].to(device)
    timesteps = timesteps * torch.ones(batch, dtype=timesteps.dtype, device=timesteps.device)
    t_emb = unet.time_proj(timesteps).to(dtype=unet.dtype)
    return unet.time_embedding(t_emb)


def encode(unet: UNet2DModel, x: torch.Tensor, t: int | torch.Tensor) -> Encoded:
    """Time embedding, conv_in, down blocks (collecting skips), mid block -> Encoded(h, skips, emb)."""
    _check_supported(unet)
    if unet.config.center_input_sample:
        x = 2 * x - 1.0
    emb = time_embedding(unet, t, x.shape[0], x.device)
    sample = unet.conv_in(x)
    skips: tuple[torch.Tensor, ...] = (sample,)
    for block in unet.down_blocks:
        sample, residuals = block(hidden_states=sample, temb=emb)
        skips += residuals
    return Encoded(h=unet.mid_block(sample, emb), skips=skips, emb=emb)


def decode(unet: UNet2DModel, h: torch.Tensor, skips: tuple[torch.Tensor, ...], emb: torch.Tensor) -> torch.Tensor:
    """Up blocks consuming the skips from the end, then the output head -> eps."""
    sample = h
    remaining = skips
    for block in unet.up_blocks:
        n = len(block.resnets)
        residuals, remaining = remaining[-n:], remaining[:-n]
        sample = block(sample, residuals, emb)
    sample = unet.conv_norm_out(sample)
    sample = unet.conv_act(sample)
    return unet.conv_out(sample)


def forward(unet: UNet2DModel, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
    """encode then decode: equals unet(x, t).sample."""
    enc = encode(unet, x, t)
    return decode(unet, enc.h, enc.skips, enc.emb)
