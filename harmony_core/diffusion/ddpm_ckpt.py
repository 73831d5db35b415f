"""DDPM checkpoints in the original PyTorch layout (SDEdit, InjectFusion / DiffStyle) as a diffusers UNet2DModel.

InjectFusion's own church, bedroom and CelebA-HQ models, like SDEdit's, are `.ckpt` files holding
the state dict of the PyTorch port of the DDPM network (Ho et al.): `temb.dense.{0,1}`, `conv_in`,
`down.{level}.block.{i}` / `.attn.{i}` / `.downsample.conv`, `mid.block_1` / `attn_1` / `block_2`,
`up.{level}.block.{i}` / `.attn.{i}` / `.upsample.conv`, `norm_out`, `conv_out`. It is the same
network as diffusers' UNet2DModel with the google/ddpm-*-256 settings, so converting is renaming:

- `up.{level}` is stored by resolution (level 0 = full size) while diffusers orders up blocks from
  the bottleneck: `up.{level}` is `up_blocks[levels - 1 - level]`;
- the attention's q / k / v / proj_out are 1x1 convolutions there and linear layers here;
- `temb_proj` is `time_emb_proj`, `nin_shortcut` is `conv_shortcut`, `norm_out` is `conv_norm_out`.

The architecture (channels, levels, blocks, where attention is) is read from the tensors' names
and shapes; GroupNorm(32, eps 1e-6), the sinusoidal embedding without flip and with shift 1 and
the asymmetric padding of the strided convolutions are that network's fixed choices. The file is
read with `torch.load(weights_only=True)`: tensors only, no pickled code runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")
_RESNET = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
           "nin_shortcut": "conv_shortcut"}
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_TOP = {"temb.dense.0": "time_embedding.linear_1", "temb.dense.1": "time_embedding.linear_2",
        "conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out",
        "mid.block_1": "mid_block.resnets.0", "mid.attn_1": "mid_block.attentions.0",
        "mid.block_2": "mid_block.resnets.1"}


def is_checkpoint(source: str | os.PathLike) -> bool:
    """True when `source` names a checkpoint file (by its suffix; it may not exist)."""
    return Path(os.fspath(source)).suffix.lower() in CHECKPOINT_SUFFIXES


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a bare state dict, or one under "state_dict" / "model" / "ema", or the
    first item of a list (the DDIM code's [model, optimizer, ...]); a DataParallel "module." prefix is dropped."""
    try:
        data: Any = torch.load(Path(path), map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # torch.load's errors for a foreign or damaged file are of many types
        raise ValueError(f"'{path}' is not a PyTorch checkpoint of tensors ({type(exc).__name__}: {exc})") from None
    if isinstance(data, (list, tuple)) and data:
        data = data[0]
    if isinstance(data, dict):
        for key in ("state_dict", "model", "ema"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"'{path}' does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def _levels(state: dict[str, torch.Tensor], part: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(rf"{part}\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def unet_config(state: dict[str, torch.Tensor], sample_size: int = 256) -> dict[str, Any]:
    """The UNet2DModel config of the network whose tensors `state` holds (ValueError when it is not one)."""
    required = ("conv_in.weight", "temb.dense.0.weight", "mid.attn_1.q.weight", "norm_out.weight", "conv_out.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(f"not a DDPM checkpoint in the SDEdit / InjectFusion layout (no {', '.join(missing)})")
    levels = _levels(state, "down")
    if levels == 0 or _levels(state, "up") != levels:
        raise ValueError("not a DDPM checkpoint in the SDEdit / InjectFusion layout (down/up levels)")
    blocks = len({m.group(1) for k in state if (m := re.match(r"down\.0\.block\.(\d+)\.", k))})
    if any(".conv_shortcut." in k for k in state) or (levels > 1 and "down.0.downsample.conv.weight" not in state):
        raise ValueError("this DDPM variant (3x3 shortcuts or resampling without convolutions) is not supported")
    channels = [int(state[f"down.{i}.block.0.conv1.weight"].shape[0]) for i in range(levels)]
    attention = [any(k.startswith(f"down.{i}.attn.") for k in state) for i in range(levels)]
    return {
        "sample_size": sample_size, "in_channels": int(state["conv_in.weight"].shape[1]),
        "out_channels": int(state["conv_out.weight"].shape[0]), "center_input_sample": False,
        "time_embedding_type": "positional", "flip_sin_to_cos": False, "freq_shift": 1,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "block_out_channels": channels, "layers_per_block": blocks, "mid_block_scale_factor": 1,
        "downsample_padding": 0, "act_fn": "silu", "attention_head_dim": None, "norm_num_groups": 32,
        "norm_eps": 1e-6, "add_attention": True,
    }


def diffusers_name(name: str, levels: int) -> str:
    """The UNet2DModel parameter name of one original parameter name."""
    prefix, _, leaf = name.rpartition(".")
    if prefix in _TOP:
        return f"{_TOP[prefix]}.{leaf}"
    for top in ("mid.block_1", "mid.block_2"):
        if prefix.startswith(top + "."):
            return f"{_TOP[top]}.{_RESNET[prefix[len(top) + 1:]]}.{leaf}"
    if prefix.startswith("mid.attn_1."):
        return f"{_TOP['mid.attn_1']}.{_ATTENTION[prefix[len('mid.attn_1.'):]]}.{leaf}"
    m = re.fullmatch(r"(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(\w+)", prefix)
    if m:
        part, level, kind, index, layer = m.group(1), int(m.group(2)), m.group(3), m.group(4), m.group(5)
        block = f"down_blocks.{level}" if part == "down" else f"up_blocks.{levels - 1 - level}"
        table, group = (_RESNET, "resnets") if kind == "block" else (_ATTENTION, "attentions")
        return f"{block}.{group}.{index}.{table[layer]}.{leaf}"
    m = re.fullmatch(r"(down|up)\.(\d+)\.(downsample|upsample)\.conv", prefix)
    if m:
        level = int(m.group(2))
        block = f"down_blocks.{level}.downsamplers" if m.group(1) == "down" else f"up_blocks.{levels - 1 - level}.upsamplers"
        return f"{block}.0.conv.{leaf}"
    raise KeyError(name)


def convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict renamed (and the attention's 1x1 convolutions flattened) for UNet2DModel."""
    levels = _levels(state, "down")
    converted = {}
    for name, tensor in state.items():
        try:
            target = diffusers_name(name, levels)
        except KeyError:
            raise ValueError(f"unexpected tensor '{name}' for a DDPM checkpoint in the SDEdit / InjectFusion layout") from None
        is_attention = ".attentions." in target
        converted[target] = tensor.flatten(1) if is_attention and tensor.ndim == 4 else tensor
    return converted


def load_unet(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
              sample_size: int = 256) -> Any:
    """A UNet2DModel with the checkpoint's weights, in eval mode without gradients (ValueError when the file
    is not such a checkpoint). sample_size: the resolution it was trained at (256 for InjectFusion's)."""
    from diffusers import UNet2DModel

    state = read_state_dict(path)
    config = unet_config(state, sample_size)
    unet = UNet2DModel(**config)
    result = unet.load_state_dict(convert(state), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"'{path}' does not match the DDPM layout it names: missing {result.missing_keys[:4]}, "
                         f"unexpected {result.unexpected_keys[:4]}")
    unet = unet.to(device) if dtype == torch.float32 else unet.to(device, dtype)
    return unet.eval().requires_grad_(False)
