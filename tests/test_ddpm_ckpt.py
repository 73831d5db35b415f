"""DDPM checkpoints in the SDEdit / InjectFusion layout, converted to UNet2DModel on load.

The checkpoint is built here, tensor by tensor in that layout, and the converted model is compared
with a forward pass written directly from the DDPM network's definition over the same tensors.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from harmony_core.diffusion import ddpm_ckpt, unet_parts

CH, MULT, BLOCKS, ATTN_LEVELS = 32, (1, 2, 2), 1, {1}


def ddpm_state_dict(seed: int = 0, ch: int = CH, mult: tuple[int, ...] = MULT, blocks: int = BLOCKS,
                    attn_levels: set[int] = ATTN_LEVELS) -> dict[str, torch.Tensor]:
    """Random tensors with the original network's names and shapes."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def t(*shape, scale=0.08):
        return torch.randn(*shape, generator=g) * scale

    def linear(name, cin, cout):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = t(cout, cin), t(cout)

    def conv(name, cin, cout, k=3):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = t(cout, cin, k, k), t(cout)

    def norm(name, c):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = 1 + t(c), t(c)

    def resnet(name, cin, cout):
        norm(f"{name}.norm1", cin), conv(f"{name}.conv1", cin, cout), linear(f"{name}.temb_proj", 4 * ch, cout)
        norm(f"{name}.norm2", cout), conv(f"{name}.conv2", cout, cout)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for layer in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{layer}", c, c, 1)

    linear("temb.dense.0", ch, 4 * ch), linear("temb.dense.1", 4 * ch, 4 * ch), conv("conv_in", 3, ch)
    in_mult = (1,) + mult
    c = ch
    for i, m in enumerate(mult):
        c_in, c = ch * in_mult[i], ch * m
        for j in range(blocks):
            resnet(f"down.{i}.block.{j}", c_in if j == 0 else c, c)
            if i in attn_levels:
                attn(f"down.{i}.attn.{j}", c)
        if i != len(mult) - 1:
            conv(f"down.{i}.downsample.conv", c, c)
    resnet("mid.block_1", c, c), attn("mid.attn_1", c), resnet("mid.block_2", c, c)
    for i in reversed(range(len(mult))):
        out = ch * mult[i]
        for j in range(blocks + 1):
            skip = ch * (in_mult[i] if j == blocks else mult[i])
            resnet(f"up.{i}.block.{j}", c + skip, out)
            c = out
            if i in attn_levels:
                attn(f"up.{i}.attn.{j}", c)
        if i != 0:
            conv(f"up.{i}.upsample.conv", c, c)
    norm("norm_out", c), conv("conv_out", c, 3)
    return sd


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, ch: int = CH,
                      levels: int = len(MULT), blocks: int = BLOCKS) -> torch.Tensor:
    """The DDPM network's forward pass, read off its definition, over the state dict's tensors."""

    def gn(name, h):
        return F.group_norm(h, 32, sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)

    def conv(name, h, stride=1, padding=1):
        return F.conv2d(h, sd[f"{name}.weight"], sd[f"{name}.bias"], stride=stride, padding=padding)

    def resnet(name, h, temb):
        out = conv(f"{name}.conv1", F.silu(gn(f"{name}.norm1", h)))
        out = out + F.linear(F.silu(temb), sd[f"{name}.temb_proj.weight"], sd[f"{name}.temb_proj.bias"])[:, :, None, None]
        out = conv(f"{name}.conv2", F.silu(gn(f"{name}.norm2", out)))
        skip = conv(f"{name}.nin_shortcut", h, padding=0) if f"{name}.nin_shortcut.weight" in sd else h
        return skip + out

    def attn(name, h):
        b, c, height, width = h.shape
        n = gn(f"{name}.norm", h)
        q, k, v = (conv(f"{name}.{p}", n, padding=0).reshape(b, c, -1) for p in ("q", "k", "v"))
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=2)
        out = torch.einsum("bcj,bij->bci", v, weights).reshape(b, c, height, width)
        return h + conv(f"{name}.proj_out", out, padding=0)

    half = ch // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / (half - 1))
    angles = t.float()[:, None] * freqs[None]
    temb = torch.cat([angles.sin(), angles.cos()], dim=1)
    temb = F.linear(F.silu(F.linear(temb, sd["temb.dense.0.weight"], sd["temb.dense.0.bias"])),
                    sd["temb.dense.1.weight"], sd["temb.dense.1.bias"])
    hs = [conv("conv_in", x)]
    for i in range(levels):
        for j in range(blocks):
            h = resnet(f"down.{i}.block.{j}", hs[-1], temb)
            if f"down.{i}.attn.{j}.q.weight" in sd:
                h = attn(f"down.{i}.attn.{j}", h)
            hs.append(h)
        if i != levels - 1:
            hs.append(conv(f"down.{i}.downsample.conv", F.pad(hs[-1], (0, 1, 0, 1)), stride=2, padding=0))
    h = resnet("mid.block_2", attn("mid.attn_1", resnet("mid.block_1", hs[-1], temb)), temb)
    for i in reversed(range(levels)):
        for j in range(blocks + 1):
            h = resnet(f"up.{i}.block.{j}", torch.cat([h, hs.pop()], dim=1), temb)
            if f"up.{i}.attn.{j}.q.weight" in sd:
                h = attn(f"up.{i}.attn.{j}", h)
        if i != 0:
            h = conv(f"up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return conv("conv_out", F.silu(gn("norm_out", h)))


def test_converted_checkpoint_computes_what_the_original_network_computes(tmp_path):
    sd = ddpm_state_dict()
    path = tmp_path / "church.ckpt"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)  # as DataParallel saved it
    unet = ddpm_ckpt.load_unet(path, sample_size=16)
    assert list(unet.config.block_out_channels) == [32, 64, 64] and unet.config.layers_per_block == 1
    assert list(unet.config.down_block_types) == ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"]
    assert list(unet.config.up_block_types) == ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 700])
    with torch.no_grad():
        expected = reference_forward(sd, x, t)
        got = unet(x, t).sample
        split = unet_parts.forward(unet, x, t)  # the encoder -> h -> decoder split hspace uses
    assert expected.abs().mean() > 0.05  # a network that computes something
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(split, expected, rtol=1e-4, atol=1e-4)


def test_other_checkpoint_wrappings_and_bad_files(tmp_path):
    sd = ddpm_state_dict(seed=2, mult=(1, 2), attn_levels=set())
    torch.save([sd, {"optimizer": torch.zeros(1)}], tmp_path / "ddim.pth")  # the DDIM code's [model, optimizer]
    torch.save({"state_dict": sd}, tmp_path / "wrapped.ckpt")
    a = ddpm_ckpt.load_unet(tmp_path / "ddim.pth", sample_size=8)
    b = ddpm_ckpt.load_unet(tmp_path / "wrapped.ckpt", sample_size=8)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    torch.save({"something": torch.zeros(3)}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a DDPM checkpoint"):
        ddpm_ckpt.load_unet(tmp_path / "other.ckpt")
    torch.save({**sd, "extra.weight": torch.zeros(1)}, tmp_path / "extra.ckpt")
    with pytest.raises(ValueError, match="unexpected tensor 'extra.weight'"):
        ddpm_ckpt.load_unet(tmp_path / "extra.ckpt")
    (tmp_path / "pickle.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        ddpm_ckpt.load_unet(tmp_path / "pickle.ckpt")
