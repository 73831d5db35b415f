"""DiffHarmony's stage-2 refinement network: a timestep-free UNet that predicts a residual.

The diffusion stage leaves VAE reconstruction artefacts (blur, colour shifts in fine detail); the
authors fix them with a small pixel-space UNet at the evaluation resolution (256 px) that sees
[stage-1 output (3), mask (1), composite (3)] in [-1, 1] and adds its output to the stage-1 image.

The module layout and the config keys follow the authors' released `refinement/` folder (a
diffusers-style `config.json` with `"_class_name": "UNet2DCustom"` plus
`diffusion_pytorch_model.safetensors`), so `RefinementUNet.from_pretrained(folder)` loads it:
diffusers' DownBlock2D / UNetMidBlock2D / UpBlock2D built with no time-embedding channels, the
same `conv_in` / `down_blocks` / `mid_block` / `up_blocks` / `conv_norm_out` / `conv_out` names,
and `input_residual` adding the first `out_channels` input channels to the output.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block
from torch import nn

STAGE2_RESOLUTION = 256
"""The refinement network's working resolution (the authors' evaluation resolution)."""

FULL_CONFIG: dict[str, Any] = {
    "sample_size": STAGE2_RESOLUTION,
    "in_channels": 7,
    "out_channels": 3,
    "down_block_types": ["DownBlock2D"] * 4,
    "up_block_types": ["UpBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 0,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "act_fn": "silu",
    "attention_head_dim": None,
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
    "add_attention": True,
    "input_residual": True,
}
"""The authors' `base` stage-2 configuration with the 7-channel input they trained (`--in_channels=7`)."""


class RefinementUNet(ModelMixin, ConfigMixin):
    """UNet without timestep: (B, in_channels, H, W) in [-1, 1] -> (B, out_channels, H, W).

    With `input_residual` the network learns only a correction of the stage-1 image, which the
    authors found to converge faster; a zero-initialized `conv_out` therefore gives the identity.
    `attention_head_dim=None` means one head spanning all channels (the authors' convention).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = STAGE2_RESOLUTION,
        in_channels: int = 7,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownBlock2D",) * 4,
        up_block_types: tuple[str, ...] = ("UpBlock2D",) * 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1.0,
        downsample_padding: int = 0,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        act_fn: str = "silu",
        attention_head_dim: int | None = None,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        input_residual: bool = True,
    ) -> None:
        super().__init__()
        if len(down_block_types) != len(block_out_channels) or len(up_block_types) != len(block_out_channels):
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        if input_residual and in_channels < out_channels:
            raise ValueError("input_residual needs at least out_channels input channels")

        def heads(channels: int) -> int:
            return attention_head_dim if attention_head_dim is not None else channels

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList()
        channels = block_out_channels[0]
        last = len(block_out_channels) - 1
        for index, (kind, out) in enumerate(zip(down_block_types, block_out_channels)):
            self.down_blocks.append(get_down_block(
                kind, num_layers=layers_per_block, in_channels=channels, out_channels=out,
                temb_channels=None, add_downsample=index < last, resnet_eps=norm_eps,
                resnet_act_fn=act_fn, resnet_groups=norm_num_groups, attention_head_dim=heads(out),
                downsample_padding=downsample_padding, resnet_time_scale_shift=resnet_time_scale_shift,
                downsample_type=downsample_type,
            ))
            channels = out
        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1], temb_channels=None, resnet_eps=norm_eps,
            resnet_act_fn=act_fn, output_scale_factor=mid_block_scale_factor,
            resnet_time_scale_shift=resnet_time_scale_shift, attention_head_dim=heads(block_out_channels[-1]),
            resnet_groups=norm_num_groups, add_attention=add_attention,
        )
        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        previous = reversed_channels[0]
        for index, kind in enumerate(up_block_types):
            out = reversed_channels[index]
            skip = reversed_channels[min(index + 1, last)]
            self.up_blocks.append(get_up_block(
                kind, num_layers=layers_per_block + 1, in_channels=skip, out_channels=out,
                prev_output_channel=previous, temb_channels=None, add_upsample=index < last,
                resnet_eps=norm_eps, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                attention_head_dim=heads(out), resnet_time_scale_shift=resnet_time_scale_shift,
                upsample_type=upsample_type,
            ))
            previous = out
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        """The refined image (before clamping); the input's first channels are the stage-1 image."""
        residual_base = sample[:, : self.config.out_channels] if self.config.input_residual else None
        hidden = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (hidden,)
        for block in self.down_blocks:
            hidden, outputs = block(hidden, None)
            skips += outputs
        hidden = self.mid_block(hidden, None)
        for block in self.up_blocks:
            count = len(block.resnets)
            hidden = block(hidden, skips[-count:], None)
            skips = skips[:-count]
        hidden = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        return hidden + residual_base if residual_base is not None else hidden


def stage2_input(stage1: torch.Tensor, mask: torch.Tensor, composite: torch.Tensor, in_channels: int) -> torch.Tensor:
    """The refinement input for a network with `in_channels` inputs, in the authors' channel order.

    3: the stage-1 image; 4: + mask; 7: + mask + composite. All (B, C, H, W), images in [-1, 1],
    mask in {0, 1}; everything is cast to the stage-1 tensor's dtype and device.
    """
    parts = {3: (stage1,), 4: (stage1, mask), 7: (stage1, mask, composite)}
    if in_channels not in parts:
        raise ValueError(f"a refinement network with {in_channels} input channels is not supported (3, 4 or 7)")
    return torch.cat([p.to(stage1) for p in parts[in_channels]], dim=1)
