"""Test support: code only the tests use (reference loops, hand-set models, small helpers).

Kept out of the package so that harmony_core holds only what the library, the CLI and the
studio run; `harmony_core/diffusion/tiny.py` keeps the model builders that random-weight
benchmarks and `device-check --tiny` need.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from harmony_core.data.synth import SyntheticComposites
from harmony_core.diffusion import ddim, tiny
from harmony_core.errors import InputError
from harmony_core.imaging import MASK_THRESHOLD


def ddim_sample(
    x_T: torch.Tensor,
    eps_fn: ddim.EpsFn,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: ddim.StepCallback | None = None,
) -> torch.Tensor:
    """Plain DDIM generation from x at max(timesteps) down to t = -1 (the clean sample)."""
    x = x_T
    for i, (t, t_prev) in enumerate(ddim.step_pairs(timesteps)):
        eps = eps_fn(x, t)
        x = ddim.ddim_step(x, eps, ddim.alpha_at(alphas_cumprod, t), ddim.alpha_at(alphas_cumprod, t_prev),
                           eta=eta, generator=generator)
        if callback is not None:
            callback(i, t, x)
    return x


def ddpm_like_unet(seed: int = 0, residual_scale: float = 0.05) -> torch.nn.Module:
    """A tiny UNet2DModel that behaves like a trained DDPM where tests need it: eps ~ x_t / rms(x_t).

    A random network's eps changes erratically with t, so DDIM inversion of it cannot be undone
    (at t ~ 999 the image survives only as a 0.6% component of x_t). A trained DDPM predicts
    eps ~ x_t there. This model gets that property by setting weights: conv_in writes (x, -x) into
    channel pairs, the last up block's shortcut carries them to the output GroupNorm (whose pairs
    then hold x / rms(x)) and conv_out reads them back; every other weight keeps its random value
    times `residual_scale`, so h, the skips, attention and the time embedding all still change eps.
    """
    model = tiny.ddpm_unet("tiny", seed)
    channels = model.conv_in.out_channels
    with torch.no_grad():
        model.conv_in.weight.mul_(residual_scale)
        model.conv_in.bias.zero_()
        last = model.up_blocks[-1].resnets[-1]
        last.conv2.weight.mul_(residual_scale)
        last.conv2.bias.zero_()
        last.conv_shortcut.weight.mul_(residual_scale)
        last.conv_shortcut.bias.zero_()
        sample_channels = last.conv_shortcut.in_channels - channels  # concat order: sample, then skip
        model.conv_norm_out.weight.fill_(1.0)
        model.conv_norm_out.bias.zero_()
        model.conv_out.weight.mul_(residual_scale)
        model.conv_out.bias.zero_()
        for c in range(3):
            for k, sign in ((2 * c, 1.0), (2 * c + 1, -1.0)):
                model.conv_in.weight[k, c, 1, 1] += sign
                last.conv_shortcut.weight[k, sample_channels + k] += 1.0
                model.conv_norm_out.bias[k] = 10.0  # SiLU(10 + v) ~ 10 + v: linear on these channels
                model.conv_out.weight[:, k] = 0.0
                model.conv_out.weight[c, k, 1, 1] = 0.5 * sign
    return model


def match_modules(model: torch.nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of submodules matching any glob pattern, in model order (e.g. 'up_blocks.*.attentions.?')."""
    return [name for name, _ in model.named_modules() if name and any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def alpha_to_mask(rgba: np.ndarray, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """The object mask of an RGBA foreground: alpha above `threshold`."""
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise InputError("The foreground has no alpha channel; supply a mask for it.")
    return rgba[:, :, 3] > threshold * 255


def batches(source: SyntheticComposites, batch_size: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Stacked (composite BxHxWx3, mask BxHxW, real BxHxWx3) of consecutive samples (needs `size`)."""
    if source.size is None:
        raise InputError("Batches need a fixed output size (size=...).")
    for first in range(start, source.length, batch_size):
        items = [source[i] for i in range(first, min(first + batch_size, source.length))]
        yield tuple(np.stack(parts) for parts in zip(*items))  # type: ignore[misc]
