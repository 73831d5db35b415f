"""DiffHarmony++'s Harmony-VAE: an SD VAE whose decoder also sees the composite and its mask.

Decoding a latent alone loses fine detail (faces, text, edges); the authors therefore add a
second encoder that reads [composite (3) in [-1, 1], mask (1)] and feeds the decoder through
zero-initialized 1x1 "skip" convolutions: every feature map of that encoder is added to the
matching decoder resnet output, its mid-block output to the decoder's mid-block output, and its
(post-quant) latent sample, through one more 1x1 convolution, to the decoded latent. Zero-initialized
skips make an untrained Harmony-VAE decode exactly like the plain VAE.

Facts from the authors' public code (nicecv/DiffHarmony, src/models/condition_vae.py, vae.py,
unet_2d_blocks.py; read, not copied): the class is saved as `"_class_name": "ConditionVAE"` with
the SD VAE's config keys plus `additional_in_channels` (1: the mask); the submodules are
`encoder` (diffusers Encoder), `conditional_encoder` (`conv_in` for the image, `add_conv_in`
for the extra channels, `down_blocks`, `mid_block`, `conv_norm_out`, `conv_out`,
`down_block_skip_convs`, `mid_block_skip_conv`), `decoder` (diffusers Decoder layout),
`quant_conv`, `post_quant_conv`, `latent_skip_conv`. The pipeline decodes with
cond = cat([composite, mask]) at the working resolution and samples the conditional posterior
with the run's generator. This module re-implements that layout on diffusers' blocks so the
released `condition_vae/` folder loads.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder, DiagonalGaussianDistribution, Encoder
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block
from torch import nn

EPS = 1e-6


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ConditionEncoder(nn.Module):
    """The VAE encoder architecture on [image, extra channels], also returning skip features.

    Skips: conv_in's output, every resnet output and every downsampler output of the down blocks
    (each through its own zero-initialized 1x1 conv; a downsampler's skip is projected to the next
    block's width, which is the width of the decoder resnet it is added to), and the mid block's
    output.
    """

    def __init__(self, in_channels: int, additional_in_channels: int, latent_channels: int,
                 down_block_types: tuple[str, ...], block_out_channels: tuple[int, ...],
                 layers_per_block: int, norm_num_groups: int, act_fn: str) -> None:
        super().__init__()
        self.in_channels = in_channels
        width = block_out_channels[0]
        self.conv_in = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        if additional_in_channels > 0:
            self.add_conv_in = nn.Conv2d(additional_in_channels, width, kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.down_block_skip_convs = nn.ModuleList([_zero_conv(width, width)])
        last = len(block_out_channels) - 1
        for index, (kind, out) in enumerate(zip(down_block_types, block_out_channels)):
            self.down_blocks.append(get_down_block(
                kind, num_layers=layers_per_block, in_channels=width, out_channels=out, temb_channels=None,
                add_downsample=index < last, resnet_eps=EPS, downsample_padding=0, resnet_act_fn=act_fn,
                resnet_groups=norm_num_groups, attention_head_dim=out,
            ))
            self.down_block_skip_convs.extend(_zero_conv(out, out) for _ in range(layers_per_block))
            if index < last:
                self.down_block_skip_convs.append(_zero_conv(out, block_out_channels[index + 1]))
            width = out
        self.mid_block = UNetMidBlock2D(
            in_channels=width, temb_channels=None, resnet_eps=EPS, resnet_act_fn=act_fn, output_scale_factor=1,
            resnet_time_scale_shift="default", attention_head_dim=width, resnet_groups=norm_num_groups,
            add_attention=True,
        )
        self.mid_block_skip_conv = _zero_conv(width, width)
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, width, eps=EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(width, 2 * latent_channels, kernel_size=3, padding=1)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """(moments before quant_conv, projected skip features in encoder order, projected mid feature)."""
        hidden = self.conv_in(cond[:, : self.in_channels])
        if hasattr(self, "add_conv_in"):
            hidden = hidden + self.add_conv_in(cond[:, self.in_channels :])
        features = [hidden]
        for block in self.down_blocks:
            for resnet in block.resnets:
                hidden = resnet(hidden, None)
                features.append(hidden)
            for downsampler in block.downsamplers or ():
                hidden = downsampler(hidden)
                features.append(hidden)
        hidden = self.mid_block(hidden)
        mid = self.mid_block_skip_conv(hidden)
        moments = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        skips = [conv(feature) for conv, feature in zip(self.down_block_skip_convs, features)]
        return moments, skips, mid


class ConditionVAE(ModelMixin, ConfigMixin):
    """AutoencoderKL-compatible `encode` / `decode`, plus `decode_with_cond` (the Harmony-VAE path)."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        additional_in_channels: int = 1,
        scaling_factor: float = 0.18215,
        force_upcast: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(
            in_channels=in_channels, out_channels=latent_channels, down_block_types=down_block_types,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block, act_fn=act_fn,
            norm_num_groups=norm_num_groups, double_z=True,
        )
        self.conditional_encoder = ConditionEncoder(
            in_channels, additional_in_channels, latent_channels, tuple(down_block_types),
            tuple(block_out_channels), layers_per_block, norm_num_groups, act_fn,
        )
        self.decoder = Decoder(
            in_channels=latent_channels, out_channels=out_channels, up_block_types=up_block_types,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups, act_fn=act_fn,
        )
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, kernel_size=1)
        self.latent_skip_conv = _zero_conv(latent_channels, latent_channels)

    def encode(self, image: torch.Tensor) -> AutoencoderKLOutput:
        """The plain VAE posterior of an image in [-1, 1] (same interface as AutoencoderKL.encode)."""
        moments = self.quant_conv(self.encoder(image))
        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(moments))

    def decode_with_cond(self, latent: torch.Tensor, cond: torch.Tensor,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Image in about [-1, 1] from an unscaled latent and cond = [composite, mask] at image size.

        The conditional posterior is sampled with `generator` (as the authors' pipeline does), so the
        result is deterministic for a seeded generator.
        """
        moments, skips, mid = self.conditional_encoder(cond)
        cond_latent = DiagonalGaussianDistribution(self.quant_conv(moments)).sample(generator=generator)
        hidden = self.post_quant_conv(latent) + self.latent_skip_conv(self.post_quant_conv(cond_latent))
        decoder = self.decoder
        hidden = decoder.conv_in(hidden)
        hidden = decoder.mid_block(hidden, None) + mid
        for block in decoder.up_blocks:
            for resnet in block.resnets:
                hidden = resnet(hidden, None) + skips.pop()
            for upsampler in block.upsamplers or ():
                hidden = upsampler(hidden)
        return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(hidden)))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """The plain VAE decoder (no condition)."""
        return self.decoder(self.post_quant_conv(latent))
