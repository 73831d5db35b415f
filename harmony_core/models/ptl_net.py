"""The regional-reference harmonization network: an improved-DIH encoder-decoder with LTL and PTL.

Paper: "Harmonizing foreground with content-related background regions" (LTL + PTL + residual
reconstruction), shared/papers/002_*.txt; our reading of it is shared/specs/methods.md section 4.

- Input: the composite normalized with ImageNet mean/std, concatenated with the mask (4 x 256 x 256).
- Encoder: 4x4 stride-2 convolutions (BatchNorm from the third block) + ELU, 256 px down to 1 px.
- Decoder: 4x4 stride-2 transposed convolutions + BatchNorm + ELU, each followed by ADDING the
  encoder output of the same size. LTL after the 32x32 block, PTL after the 128x128 block.
- Residual reconstruction: output = input + to_rgb(features) * mask (eq. 7), in normalized space.

Both translation layers change features at foreground positions only and record their attention
(`attention`, when `record` is set) so the contribution maps (paper fig. 5) can be
drawn without a second pass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PTLConfig:
    """Everything that defines the architecture; saved next to the weights as config.json."""

    image_size: int = 256
    width: float = 1.0
    """Channel multiplier: 1.0 is the paper's network (~9.5M parameters)."""
    ltl_heads: int = 1
    """Heads of LTL's self-attention (our choice; the paper does not say)."""
    block_divisor: int = 8
    """PTL block size = H / block_divisor at PTL's resolution (paper: H/8)."""
    stride_divisor: int = 32
    """PTL block stride = H / stride_divisor (paper: H/32)."""
    min_block_coverage: float = 0.25
    """PTL ignores blocks with less background than this fraction (our choice)."""
    ptl_write: str = "replace"
    """How PTL writes T_fb back at the foreground: "replace" the features (the paper's text) or
    "add" it to them (our variant: replacing drops the object's own appearance, which residual
    reconstruction needs in order to predict a change from it)."""
    eps: float = 1e-5

    def channels(self, base: int) -> int:
        return max(8, int(round(base * self.width)))


def masked_softmax(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to `keep`. The dtype's lowest finite value (not -inf)
    fills the rest, so a row with nothing to keep gives finite weights (discarded by the caller)
    instead of NaNs that would poison the gradients."""
    return torch.softmax(logits.masked_fill(~keep, torch.finfo(logits.dtype).min), dim=-1)


class LTL(nn.Module):
    """Locations-to-location translation (paper sec. 3.2) on a C x h x w feature map.

    T = InstanceNorm(F + SelfAttention(F)); foreground tokens attend to background tokens only,
    R = softmax(T_f T_b^T / sqrt(C)) T_b; T_h = Linear(concat(T_f, R)) replaces the foreground
    tokens; background tokens keep T (the paper reshapes "T_h and the background tokens" back).
    A sample without background tokens passes through unchanged.
    """

    def __init__(self, channels: int, heads: int = 1) -> None:
        super().__init__()
        self.attention_layer = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm = nn.InstanceNorm1d(channels)
        self.fuse = nn.Linear(2 * channels, channels)
        self.record = False
        self.attention: torch.Tensor | None = None
        """With `record` set, the last forward's B x L x L foreground-to-background weights
        (zero rows off the foreground)."""

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = features.shape
        tokens = features.flatten(2).transpose(1, 2)  # B x L x C
        attended, _ = self.attention_layer(tokens, tokens, tokens, need_weights=False)
        tokens = self.norm((tokens + attended).transpose(1, 2)).transpose(1, 2)
        foreground = (F.adaptive_avg_pool2d(mask, (h, w)) > 0.5).flatten(1)  # B x L
        background = ~foreground
        logits = tokens @ tokens.transpose(1, 2) / math.sqrt(c)
        has_background = background.any(dim=1)
        weights = masked_softmax(logits, background[:, None, :])
        fused = self.fuse(torch.cat([tokens, weights @ tokens], dim=-1))
        write = (foreground & has_background[:, None]).unsqueeze(-1)
        if self.record:
            self.attention = (weights * write).detach()
        out = torch.where(write, fused, tokens)
        out = torch.where(has_background[:, None, None], out, features.flatten(2).transpose(1, 2))
        return out.transpose(1, 2).reshape(b, c, h, w)


class PTL(nn.Module):
    """Patches-to-location translation (paper sec. 3.3) on a C x H x W feature map.

    The background features are cut into overlapping blocks (size H/8, stride H/32: 29 x 29 = 841
    at 128 px). Each block's appearance is its background-weighted mean mu and std sigma (eq. 3);
    its content token is the block normalized by them, projected by Linear(C*k*k -> C).
    Foreground content = features normalized by foreground-only statistics. W = softmax(C_f C_b^T /
    sqrt(C)) over blocks with enough background; T_fb = C_f * (W sigma) + W mu (eqs. 4-5) replaces
    the foreground features.

    Nothing of size K x C x k x k is materialized (that costs most of the time on a CPU): the
    statistics come from average pooling of F*M_b, F^2*M_b and M_b, and the projection of the
    normalized block, sum_c (W_c . (F_c M_b) - mu_c W_c . M_b) / sigma_c, from two matrix products
    over the unfolded F*M_b and M_b. Attention runs over foreground positions only.
    """

    def __init__(self, channels: int, size: int, config: PTLConfig) -> None:
        super().__init__()
        self.block = size // config.block_divisor
        self.stride = max(1, size // config.stride_divisor)
        self.min_coverage = config.min_block_coverage
        self.eps = config.eps
        if config.ptl_write not in ("replace", "add"):
            raise ValueError(f"ptl_write must be 'replace' or 'add', got {config.ptl_write!r}")
        self.add = config.ptl_write == "add"
        self.project = nn.Linear(channels * self.block * self.block, channels)
        self.record = False
        self.attention: torch.Tensor | None = None
        """With `record` set, the last forward's B x L x K foreground-to-block weights (zero rows
        off the foreground)."""

    def block_statistics(self, features: torch.Tensor, background: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per block: mu, sigma (B x C x K), background coverage (B x K), content tokens (B x K x C)."""
        b, c = features.shape[:2]
        k, s = self.block, self.stride
        pool = lambda x: F.avg_pool2d(x, k, s).flatten(2)  # noqa: E731  (B x ch x K)
        coverage = pool(background)  # B x 1 x K
        total = coverage.clamp_min(1e-8)
        mu = pool(features * background) / total
        var = (pool(features * features * background) / total - mu * mu).clamp_min(0.0)
        sigma = torch.sqrt(var + self.eps)
        weight = self.project.weight.view(-1, c, k * k).transpose(0, 1)  # C x C_out x kk
        blocks = F.unfold(features * background, k, stride=s).view(b, c, k * k, -1)  # B x C x kk x K
        masks = F.unfold(background, k, stride=s)  # B x kk x K
        values = weight @ blocks  # B x C x C_out x K
        ones = (weight.reshape(-1, k * k) @ masks).view(b, c, -1, masks.shape[-1])  # B x C x C_out x K
        tokens = ((values - mu.unsqueeze(2) * ones) / sigma.unsqueeze(2)).sum(dim=1)  # B x C_out x K
        tokens = tokens.transpose(1, 2) + self.project.bias
        return mu, sigma, coverage.squeeze(1), tokens

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = features.shape
        soft = F.adaptive_avg_pool2d(mask, (h, w))
        foreground = (soft > 0.5).flatten(1)  # B x L
        mu, sigma, coverage, content_b = self.block_statistics(features, 1.0 - soft)
        valid = coverage >= self.min_coverage  # B x K
        flat = features.flatten(2).transpose(1, 2)  # B x L x C
        rows = []
        attention = []
        for i in range(b):
            index = foreground[i].nonzero().squeeze(1)
            if index.numel() == 0 or not valid[i].any():
                rows.append(flat[i])
                attention.append(None)
                continue
            tokens = flat[i, index]  # L_f x C
            mean_f = tokens.mean(dim=0, keepdim=True)
            std_f = torch.sqrt(tokens.var(dim=0, unbiased=False, keepdim=True) + self.eps)
            content_f = (tokens - mean_f) / std_f
            weights = masked_softmax(content_f @ content_b[i].T / math.sqrt(c), valid[i])  # L_f x K
            translated = content_f * (weights @ sigma[i].T) + weights @ mu[i].T
            if self.add:
                translated = translated + tokens
            rows.append(flat[i].index_put((index,), translated))
            attention.append((index, weights))
        if self.record:
            self.attention = torch.zeros(b, h * w, content_b.shape[1], dtype=features.dtype, device=features.device)
            for i, item in enumerate(attention):
                if item is not None:
                    self.attention[i, item[0]] = item[1].detach()
        return torch.stack(rows).transpose(1, 2).reshape(b, c, h, w)


def _down(cin: int, cout: int, norm: bool, padding: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, 2, padding)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ELU())
    return nn.Sequential(*layers)


def _up(cin: int, cout: int, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, padding), nn.BatchNorm2d(cout), nn.ELU())


class PTLNet(nn.Module):
    """The whole network. forward(image in [0,1], mask in {0,1}) -> harmonized image in [0,1]."""

    def __init__(self, config: PTLConfig = PTLConfig()) -> None:
        super().__init__()
        if config.image_size != 256:
            raise ValueError("The encoder-decoder is defined for 256 px inputs (its bottleneck is 1x1).")
        self.config = config
        ch = config.channels
        widths = [ch(64), ch(64), ch(128), ch(128), ch(256), ch(256), ch(512)]
        cin = 4
        encoder = []
        for i, cout in enumerate(widths):
            encoder.append(_down(cin, cout, norm=i >= 2, padding=0 if i == len(widths) - 1 else 1))
            cin = cout
        self.encoder = nn.ModuleList(encoder)
        skips = widths[-2::-1]  # 256@4, 256@8, 128@16, 128@32, 64@64, 64@128
        decoder = []
        for i, cout in enumerate(skips):
            decoder.append(_up(cin, cout, padding=0 if i == 0 else 1))
            cin = cout
        self.decoder = nn.ModuleList(decoder)
        self.last = _up(cin, ch(32))
        self.to_rgb = nn.Conv2d(ch(32), 3, 1)
        nn.init.zeros_(self.to_rgb.weight)  # our choice: training starts from the unchanged composite
        nn.init.zeros_(self.to_rgb.bias)
        self.ltl = LTL(widths[3], config.ltl_heads)  # after the 32x32 block
        self.ptl = PTL(widths[0], config.image_size // 2, config)  # after the 128x128 block
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        normalized = (image - self.mean) / self.std
        x = torch.cat([normalized, mask], dim=1)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            x = block(x) + skips.pop()
            if x.shape[-1] == self.config.image_size // 8:
                x = self.ltl(x, mask)
            elif x.shape[-1] == self.config.image_size // 2:
                x = self.ptl(x, mask)
        residual = self.to_rgb(self.last(x))
        out = normalized + residual * mask
        return out * self.std + self.mean

    # -- loading and saving, diffusers-style: a folder with config.json + model.safetensors -----

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype = torch.float16) -> None:
        import json

        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
                 for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        (folder / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> PTLNet:
        import json

        from safetensors.torch import load_file

        folder = Path(folder)
        config = PTLConfig(**json.loads((folder / CONFIG_NAME).read_text()))
        model = cls(config)
        state = load_file(str(folder / WEIGHTS_NAME))
        model.load_state_dict({k: v.float() for k, v in state.items()})
        return model.to(device=device, dtype=dtype).eval()


CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def foreground_mse_loss(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, min_area: float = 100.0) -> torch.Tensor:
    """Eq. 8 per image, averaged over the batch: sum(M (O - GT)^2) / max(A_min, sum M), on 0..255
    values, the squared error summed over the 3 channels as in the paper's ||.||_2^2."""
    error = ((output - target) * 255.0) ** 2 * mask
    area = mask.sum(dim=(1, 2, 3)).clamp_min(min_area)
    return (error.sum(dim=(1, 2, 3)) / area).mean()
