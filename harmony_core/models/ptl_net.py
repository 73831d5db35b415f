"""The regional-reference harmonization network: an improved-DIH encoder-decoder with LTL and PTL.

Paper: "Harmonizing foreground with content-related background regions" (LTL + PTL + residual
reconstruction); our reading of it, setting by setting, is in docs/methods.md ("ptl: paper vs our choices").

- Input: the composite normalized with ImageNet mean/std, concatenated with the mask (4 x 256 x 256).
- Encoder: 4x4 stride-2 convolutions (BatchNorm from the third block) + ELU, 256 px down to 1 px.
- Decoder: 4x4 stride-2 transposed convolutions + BatchNorm + ELU, each followed by ADDING the
  encoder output of the same size. LTL after the 32x32 block, PTL after the 128x128 block.
- Output head (`PTLConfig.head`): "residual", the paper's reconstruction output = input +
  to_rgb(features) * mask (eq. 7) in normalized space; or "affine" (ours): a 3x4 colour transform of
  the composite's RGB per location (a local map plus a global part pooled over the object),
  identity at initialization, composed with an optional global `prior` transform. The transform
  map is what full-resolution inference upsamples and applies, so the object's texture survives.

Both translation layers change features at foreground positions only and return their attention
when asked (`output_attentions`), so the contribution maps (paper fig. 5) come from the same pass
without state on a model that every request shares.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AFFINE_PARAMS = 12
"""A 3x4 colour transform per location, stored as (A - I) row-major (9) then the offset b (3)."""

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
Head = Literal["residual", "affine"]
Prior = Literal["none", "poisson"]


@dataclass(frozen=True)
class PTLConfig:
    """Everything that defines the architecture; saved next to the weights as config.json."""

    image_size: int = 256
    width: float = 0.5
    """Channel multiplier: 1.0 is the paper's network (~9.5M parameters); the shipped one is 0.5."""
    ltl_heads: int = 1
    """Heads of LTL's self-attention (our choice; the paper does not say)."""
    block_divisor: int = 8
    """PTL block size = H / block_divisor at PTL's resolution (paper: H/8)."""
    stride_divisor: int = 32
    """PTL block stride = H / stride_divisor (paper: H/32)."""
    min_block_coverage: float = 0.25
    """PTL ignores blocks with less background than this fraction (our choice)."""
    ptl_write: str = "add"
    """How PTL writes T_fb back at the foreground: "replace" the features (the paper's text) or
    "add" it to them (our variant: replacing drops the object's own appearance, which residual
    reconstruction needs in order to predict a change from it)."""
    head: Head = "affine"
    """"residual": the paper's eq. 7. "affine" (ours): per-location 3x4 colour transforms of the
    composite, applied at full resolution (see the module docstring and docs/methods.md)."""
    prior: Prior = "poisson"
    """"poisson" (ours, affine head only): the network corrects a global 3x4 colour map fitted to
    the Poisson blend at 256 px (`classical.poisson_affine`), which alone beats the Poisson blend on
    the training split; "none": it starts from the identity."""
    correction_scale: float = 1.0
    """Affine head: the learned correction of the prior is multiplied by this (ours). Shrinking it
    towards the prior trades accuracy on the training recipes for robustness to other ones
    (measured on training photos; see weights/ptl/README.md)."""
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.head not in ("residual", "affine") or self.prior not in ("none", "poisson"):
            raise ValueError(f"Unknown head {self.head!r} or prior {self.prior!r}")
        if self.head == "residual" and self.prior != "none":
            raise ValueError("A prior needs the affine head (the residual head predicts pixels, not a transform).")

    def channels(self, base: int) -> int:
        return max(8, int(round(base * self.width)))


def masked_softmax(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to `keep`. The dtype's lowest finite value (not -inf)
    fills the rest, so a row with nothing to keep gives finite weights (discarded by the caller)
    instead of NaNs that would poison the gradients."""
    return torch.softmax(logits.masked_fill(~keep, torch.finfo(logits.dtype).min), dim=-1)


def block_means(x: torch.Tensor, block: int, stride: int) -> torch.Tensor:
    """F.avg_pool2d(x, block, stride), computed from stride x stride cell means when the sizes
    allow it (PTL's 16 / 4 at 128 px): one pass over x instead of block^2 reads per output."""
    h, w = x.shape[-2:]
    if block % stride or h % stride or w % stride:
        return F.avg_pool2d(x, block, stride)
    return F.avg_pool2d(F.avg_pool2d(x, stride, stride), block // stride, 1)


@dataclass
class RowAttention:
    """One image's attention from its foreground locations, as a translation layer computed it:
    `rows` are their flat indices on the layer's `side` x `side` grid, `weights` is rows x
    len(`keys`), the keys (of `key_count`) the layer could use. Only these exist: a dense L x K map
    would be mostly zeros and cost more than the layer itself at 128 x 128."""

    rows: torch.Tensor
    keys: torch.Tensor
    weights: torch.Tensor
    side: int
    key_count: int

    def over_all_keys(self, values: torch.Tensor) -> torch.Tensor:
        """A vector over `keys` (a row of weights, their mean) as one over all keys, zero elsewhere."""
        return values.new_zeros(self.key_count).index_copy(0, self.keys, values)


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

    def forward(self, features: torch.Tensor, mask: torch.Tensor,
                output_attention: bool = False) -> tuple[torch.Tensor, list[RowAttention] | None]:
        """(features, per image the foreground-to-background weights when `output_attention`)."""
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
        attention = None
        if output_attention:
            rows = [row.nonzero().squeeze(1) for row in write[..., 0]]
            keys = torch.arange(h * w, device=features.device)
            attention = [RowAttention(r, keys, weights[i, r].detach(), h, h * w) for i, r in enumerate(rows)]
        out = torch.where(write, fused, tokens)
        out = torch.where(has_background[:, None, None], out, features.flatten(2).transpose(1, 2))
        return out.transpose(1, 2).reshape(b, c, h, w), attention


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
    over the blocks of F*M_b and M_b. Attention runs from foreground positions to usable blocks only.
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

    def block_statistics(self, features: torch.Tensor, background: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per block: mu, sigma (B x C x K), background coverage (B x K), content tokens (B x K x C)."""
        b, c = features.shape[:2]
        k, s = self.block, self.stride
        masked = features * background
        means = lambda x: block_means(x, k, s).flatten(2)  # noqa: E731  (B x ch x K)
        coverage = means(background)
        total = coverage.clamp_min(1e-8)
        mu = means(masked) / total
        var = (means(masked * features) / total - mu * mu).clamp_min(0.0)
        sigma = torch.sqrt(var + self.eps)
        # The blocks as strided views copied once (F.unfold's im2col and its backward are ~2x slower).
        blocks = masked.unfold(2, k, s).unfold(3, k, s).reshape(b, c, -1, k * k)  # B x C x K x kk
        masks = background.unfold(2, k, s).unfold(3, k, s).reshape(b, -1, k * k)  # B x K x kk
        weight = self.project.weight.view(-1, c, k * k).permute(1, 2, 0)  # C x kk x C_out
        values = blocks @ weight  # B x C x K x C_out
        ones = (masks @ weight.transpose(0, 1).reshape(k * k, -1)).view(b, -1, c, weight.shape[-1]).transpose(1, 2)
        tokens = ((values - mu[..., None] * ones) / sigma[..., None]).sum(dim=1) + self.project.bias  # B x K x C_out
        return mu, sigma, coverage.squeeze(1), tokens

    def forward(self, features: torch.Tensor, mask: torch.Tensor,
                output_attention: bool = False) -> tuple[torch.Tensor, list[RowAttention] | None]:
        """(features, per image the foreground-to-block weights when `output_attention`)."""
        b, c, h, w = features.shape
        soft = F.adaptive_avg_pool2d(mask, (h, w))
        foreground = (soft > 0.5).flatten(1)  # B x L
        mu, sigma, coverage, content_b = self.block_statistics(features, 1.0 - soft)
        valid = coverage >= self.min_coverage  # B x K
        appearance = torch.cat([sigma, mu], dim=1)  # B x 2C x K: one product gives W sigma and W mu
        flat = features.flatten(2).transpose(1, 2)  # B x L x C
        rows, attention = [], []
        for i in range(b):
            index = foreground[i].nonzero().squeeze(1)
            # Softmax over the usable blocks only (the same weights as masking the rest out).
            blocks = valid[i].nonzero().squeeze(1)
            weights = flat.new_zeros(index.numel(), blocks.numel())
            if index.numel() and blocks.numel():
                tokens = flat[i, index]  # L_f x C
                mean_f = tokens.mean(dim=0, keepdim=True)
                std_f = torch.sqrt(tokens.var(dim=0, unbiased=False, keepdim=True) + self.eps)
                content_f = (tokens - mean_f) / std_f
                weights = torch.softmax((content_f / math.sqrt(c)) @ content_b[i, blocks].T, dim=-1)  # L_f x K_valid
                mixed = weights @ appearance[i, :, blocks].T  # L_f x 2C
                translated = content_f * mixed[:, :c] + mixed[:, c:]
                if self.add:
                    translated = translated + tokens
                rows.append(flat[i].index_put((index,), translated))
            else:
                rows.append(flat[i])
            if output_attention:
                attention.append(RowAttention(index, blocks, weights.detach(), h, valid.shape[1]))
        out = torch.stack(rows).transpose(1, 2).reshape(b, c, h, w)
        return out, attention if output_attention else None


def _down(cin: int, cout: int, norm: bool, padding: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, 2, padding)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ELU())
    return nn.Sequential(*layers)


def _up(cin: int, cout: int, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, padding), nn.BatchNorm2d(cout), nn.ELU())


@dataclass
class PTLOutput:
    """What one forward pass gives: the harmonized image at 256 px, the colour transform map the
    affine head applied (None for the residual head), and the attention weights when asked."""

    image: torch.Tensor
    transform: torch.Tensor | None = None
    """B x 12 x H x W, (A - I, b) per location in [0, 1] RGB; `apply_affine` applies it."""
    ltl_attention: list[RowAttention] | None = None
    ptl_attention: list[RowAttention] | None = None


def apply_affine(transform: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """out = (I + A) rgb + b per location: transform B x 12 x H x W, image B x 3 x H x W.

    Written as broadcast products rather than an einsum, which torch turns into B*H*W tiny matrix
    products (an 8x slower training step on a CPU)."""
    b, _, h, w = transform.shape
    matrix = transform[:, :9].reshape(b, 3, 3, h, w)
    return image + (matrix * image.unsqueeze(1)).sum(dim=2) + transform[:, 9:]


def compose_affine(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The map x -> outer(inner(x)): outer B x 12 x H x W per location, inner B x 12 global.

    (I + O)(I + N) = I + O + N + O N and (I + O) c + o, with O N as one batched product per
    image of the 3x3 N against all locations' rows of O."""
    b, _, h, w = outer.shape
    rows = outer[:, :9].reshape(b, 3, 3, h * w)  # O_ij per location
    n_matrix, n_offset = inner[:, :9].reshape(b, 3, 3), inner[:, 9:]
    # (O N)_ik = sum_j O_ij N_jk: N^T (k x j) times O arranged as j x (i, location).
    product = torch.bmm(n_matrix.transpose(1, 2), rows.transpose(1, 2).reshape(b, 3, 3 * h * w))
    product = product.reshape(b, 3, 3, h * w).transpose(1, 2)  # back to (i, k)
    matrix = rows + n_matrix[:, :, :, None] + product
    offset = n_offset[:, :, None] + (rows * n_offset[:, None, :, None]).sum(dim=2) + outer[:, 9:].reshape(b, 3, h * w)
    return torch.cat([matrix.reshape(b, 9, h, w), offset.reshape(b, 3, h, w)], dim=1)


LEGACY_CONFIG = {"head": "residual", "prior": "none"}
"""What a config.json without these keys means: it was saved before the affine head existed, so it
holds the paper's residual network (the shipped weights/ptl folder)."""


def config_from_dict(values: dict[str, Any]) -> PTLConfig:
    """A PTLConfig from a saved config (ours, or diffusers' with `_class_name` etc.: other keys are
    ignored); missing head / prior mean LEGACY_CONFIG."""
    known = {f.name for f in fields(PTLConfig)}
    return PTLConfig(**{**LEGACY_CONFIG, **{k: v for k, v in dict(values).items() if k in known}})


class PTLNet(ModelMixin, ConfigMixin):
    """The whole network. forward(image in [0,1], mask in {0,1}) -> PTLOutput.

    A diffusers ModelMixin / ConfigMixin: the PTLConfig fields are its registered config (written
    as config.json by `save_config`), and `config` is the PTLConfig itself. Weights are saved as
    fp16 `model.safetensors` (the name the shipped folder and train-ptl's exports use).
    """

    config_name = CONFIG_NAME

    def __init__(self, config: PTLConfig = PTLConfig()) -> None:
        super().__init__()
        if config.image_size != 256:
            raise ValueError("The encoder-decoder is defined for 256 px inputs (its bottleneck is 1x1).")
        self.register_to_config(**asdict(config))
        self._ptl_config = config
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
        if config.head == "residual":
            self.to_rgb = nn.Conv2d(ch(32), 3, 1)
            last_layers = [self.to_rgb]
        else:
            self.to_params = nn.Conv2d(ch(32), AFFINE_PARAMS, 1)
            # The global part sees the object's mean feature and the prior it corrects.
            self.global_params = nn.Sequential(nn.Linear(ch(32) + AFFINE_PARAMS, ch(64)), nn.ELU(),
                                               nn.Linear(ch(64), AFFINE_PARAMS))
            last_layers = [self.to_params, self.global_params[-1]]
        for layer in last_layers:  # our choice: training starts from the unchanged composite (or prior)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.ltl = LTL(widths[3], config.ltl_heads)  # after the 32x32 block
        self.ptl = PTL(widths[0], config.image_size // 2, config)  # after the 128x128 block
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor, mask: torch.Tensor, prior: torch.Tensor | None = None,
                output_attentions: bool = False) -> PTLOutput:
        """prior: B x 12 global transforms (config.prior "poisson"; None = identity)."""
        normalized = (image - self.mean) / self.std
        x = torch.cat([normalized, mask], dim=1)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        attentions: dict[str, torch.Tensor | None] = {}
        for block in self.decoder:
            x = block(x) + skips.pop()
            if x.shape[-1] == self.config.image_size // 8:
                x, attentions["ltl_attention"] = self.ltl(x, mask, output_attentions)
            elif x.shape[-1] == self.config.image_size // 2:
                x, attentions["ptl_attention"] = self.ptl(x, mask, output_attentions)
        features = self.last(x)
        if self.config.head == "residual":
            out = normalized + self.to_rgb(features) * mask
            return PTLOutput(image=out * self.std + self.mean, **attentions)
        if prior is None:
            prior = image.new_zeros(image.shape[0], AFFINE_PARAMS)
        pooled = (features * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3)).clamp_min(1.0)
        correction = self.to_params(features) + self.global_params(torch.cat([pooled, prior], dim=1))[:, :, None, None]
        correction = correction * self.config.correction_scale
        transform = compose_affine(correction, prior)
        out = image + (apply_affine(transform, image) - image) * mask
        return PTLOutput(image=out, transform=transform, **attentions)

    @property
    def config(self) -> PTLConfig:  # type: ignore[override]
        """The architecture (diffusers' registered dict holds the same values)."""
        return self._ptl_config

    # -- loading and saving, diffusers-style: a folder with config.json + model.safetensors -----

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype = torch.float16) -> None:  # type: ignore[override]
        """config.json (ConfigMixin.save_config) and the weights in `dtype` as model.safetensors."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
                 for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        self.save_config(folder)

    @classmethod
    def from_config(cls, config: dict[str, Any] | None = None, **kwargs: Any) -> PTLNet:  # type: ignore[override]
        """A randomly initialized network from a config dict (a saved config.json's values)."""
        return cls(config_from_dict({**dict(config or {}), **kwargs}))

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu",  # type: ignore[override]
                        dtype: torch.dtype = torch.float32) -> PTLNet:
        """The network saved in `folder` (config.json + model.safetensors, fp16 or fp32), in eval mode."""
        from safetensors.torch import load_file

        folder = Path(folder)
        model = cls.from_config(cls.load_config(folder))
        state = load_file(str(folder / WEIGHTS_NAME))
        model.load_state_dict({k: v.float() for k, v in state.items()})
        # nn.Module.to: diffusers' ModelMixin.to warns about fp32 modules whenever a dtype is given.
        return nn.Module.to(model, device=device, dtype=dtype).eval()



def foreground_mse_loss(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, min_area: float = 100.0) -> torch.Tensor:
    """Eq. 8 per image, averaged over the batch: sum(M (O - GT)^2) / max(A_min, sum M), on 0..255
    values, the squared error summed over the 3 channels as in the paper's ||.||_2^2."""
    error = ((output - target) * 255.0) ** 2 * mask
    area = mask.sum(dim=(1, 2, 3)).clamp_min(min_area)
    return (error.sum(dim=(1, 2, 3)) / area).mean()
