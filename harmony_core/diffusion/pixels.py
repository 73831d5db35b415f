"""Images <-> the [-1, 1] tensors that diffusion models and VAEs take, for every diffusion method."""

from __future__ import annotations

import numpy as np
import torch


def to_tensor(image: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xHxW float32 in [-1, 1]; an HxW bool mask -> 1x1xHxW float32 in {0, 1}.
    Copies, because inputs may be read-only views."""
    tensor = torch.tensor(np.asarray(image), device=device)
    if tensor.dtype == torch.bool:
        return tensor[None, None].float()
    return tensor.permute(2, 0, 1)[None].float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """1x3xHxW in [-1, 1] (clamped) -> HxWx3 uint8, rounded."""
    pixels = ((x[0].detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 0).numpy()
