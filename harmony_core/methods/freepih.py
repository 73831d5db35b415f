"""FreePIH — training-free painterly harmonization on Stable Diffusion 1.5 (issue 6).

The composite is encoded, noised to a small noise level (the last denoising steps carry style,
not layout) and denoised again. Before every DDIM step the foreground latent is optimized with
L-BFGS so that UNet decoder features inside the object have the background's Gram statistics
(style), the VAE-encoder features of the predicted image keep the object's content, and the
predicted clean latent does not drift (stability). The background latent is re-imposed after
every step, so only the object changes. Paper vs our settings: docs/methods.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from harmony_core import imaging
from harmony_core.cost import Cost, Rate, loss_evaluations
from harmony_core.diffusion import components, ddim, hooks
from harmony_core.diffusion.pixels import to_tensor, to_uint8
from harmony_core.errors import InputError
from harmony_core.model_method import ModelMethod
from harmony_core.registry import PROMPT, Progress, register
from harmony_core.types import Availability, HarmonizationRequest, HarmonizationResult

# --- losses (pure functions of feature tensors, so they can be tested without a model) --------


def masked_gram(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Gram matrix of (B, C, H, W) features over the positions that `weights` (B, 1, H, W) selects.

    Weights in [0, 1] let a soft (area-downsampled) mask count partial positions; a binary mask
    uses exactly the masked positions. Normalized by (sum of weights) x channels, so the Gram of
    a small object and of a large background are comparable. Returns (B, C, C).
    """
    batch, channels = features.shape[:2]
    flat = features.reshape(batch, channels, -1).float()  # fp16 sums over 4096 positions overflow
    w = weights.reshape(batch, 1, -1).float()
    gram = torch.bmm(flat * w, flat.transpose(1, 2))
    positions = w.sum(dim=2, keepdim=True).clamp_min(1e-8)
    return gram / (positions * channels)


def style_loss(
    features: list[torch.Tensor], fg_weights: list[torch.Tensor], min_positions: float = 1.0
) -> torch.Tensor:
    """Sum over layers of the mean squared difference between foreground and background Grams.

    The background Gram is detached: the optimization may only move the object towards the
    background's style, never the (re-imposed anyway) background towards the object. Layers where
    the object or the background covers fewer than `min_positions` positions are skipped (a
    Gram over nothing is noise).
    """
    total = features[0].new_zeros(())
    for feat, fg in zip(features, fg_weights):
        bg = 1.0 - fg
        if fg.sum() < min_positions or bg.sum() < min_positions:
            continue
        fg_gram = masked_gram(feat, fg)
        bg_gram = masked_gram(feat.detach(), bg)
        total = total + F.mse_loss(fg_gram.float(), bg_gram.float())
    return total


def masked_mse(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of (B, C, H, W) tensors over the positions `weights` selects."""
    w = weights.to(a.dtype)
    squared = (a.float() - b.float()).pow(2) * w.float()
    denominator = (w.float().sum() * a.shape[1]).clamp_min(1e-8)
    return squared.sum() / denominator


def content_loss(features: list[torch.Tensor], targets: list[torch.Tensor], fg_weights: list[torch.Tensor]) -> torch.Tensor:
    """Sum over the VAE-encoder scales of the foreground MSE to the composite's own features."""
    total = features[0].new_zeros((), dtype=torch.float32)
    for feat, target, fg in zip(features, targets, fg_weights):
        total = total + masked_mse(feat, target.detach(), fg)
    return total


def stability_loss(x0: torch.Tensor, x0_start: torch.Tensor, fg_latent: torch.Tensor) -> torch.Tensor:
    """Foreground MSE between the predicted clean latent and the one this step's optimization began with."""
    return masked_mse(x0, x0_start.detach(), fg_latent)


def mask_weights(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (B, 1, H, W) float mask area-averaged to `size`: the fraction of object in each cell."""
    return F.adaptive_avg_pool2d(mask.float(), size)


# --- the method ------------------------------------------------------------------------------

DEFAULT_WEIGHTS = "stable-diffusion-v1-5/stable-diffusion-v1-5"
WEIGHTS_ENV = "HARMONY_FREEPIH_WEIGHTS"
HOW_TO_SET = f"the environment variable {WEIGHTS_ENV}, `--weights freepih=SOURCE` or FreePIH(weights=...)"
REQUIRED_FILES = (
    "unet/config.json", "unet/*.safetensors|unet/*.bin",
    "vae/config.json", "vae/*.safetensors|vae/*.bin",
    "text_encoder/config.json", "text_encoder/*.safetensors|text_encoder/*.bin",
    "tokenizer/vocab.json", "tokenizer/merges.txt",
    "scheduler/scheduler_config.json",
)
"""An SD-1.5 text-to-image pipeline folder (diffusers layout); checked before anything loads."""
HUB_FILES = (
    "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
)
"""What `load_parts` reads from SD-1.5's repo: the fp16 safetensors of the UNet, VAE and text encoder
(loaded with variant="fp16", cast to the run's dtype), the tokenizer and the scheduler config;
never the .ckpt files, the non-EMA or fp32 copies or the safety checker."""


@dataclass(frozen=True)
class FreePIHSettings:
    """The settings of a run. From the paper: noise only at the end of the schedule (t < 0.2 T),
    L-BFGS on content + style + stability losses. Everything else is our choice (docs/methods.md's table).

    resolution: long side of the working image in px (both sides rounded to multiples of 64).
    num_inference_steps / noise_level: the DDIM schedule and the fraction of it that is re-run.
    guidance_scale: classifier-free guidance of the DDIM step with the prompt.
    w_content / w_style / w_stab: loss weights (starting points, not tuned on real weights).
    lbfgs_max_iter / lbfgs_lr: torch.optim.LBFGS settings (strong-Wolfe line search always).
    optimized_steps: optimize only at the first k denoising steps (None: at every step).
    style_layers: "all" cross-attention transformers of the up blocks, or the "last" of each block.
    latent_mask_threshold: a latent cell is foreground when more than this fraction of its 8x8
        pixels is object (0: any object pixel, so the whole object is free to change).
    """

    resolution: int = 512
    num_inference_steps: int = 50
    noise_level: float = 0.2
    guidance_scale: float = 5.0
    w_content: float = 1.0
    w_style: float = 1e4
    w_stab: float = 10.0
    lbfgs_max_iter: int = 5
    lbfgs_lr: float = 1.0
    optimized_steps: int | None = None
    style_layers: Literal["all", "last"] = "all"
    latent_mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.resolution < 64 or self.resolution % 64:
            raise InputError(f"freepih: resolution must be a positive multiple of 64, got {self.resolution}")
        if not 0.0 < self.noise_level <= 1.0:
            raise InputError(f"freepih: noise_level must be in (0, 1], got {self.noise_level}")
        if self.lbfgs_max_iter < 1 or self.num_inference_steps < 1:
            raise InputError("freepih: lbfgs_max_iter and num_inference_steps must be at least 1")
        if self.style_layers not in ("all", "last"):
            raise InputError(f"freepih: style_layers must be 'all' or 'last', got {self.style_layers!r}")
        if not 0.0 <= self.latent_mask_threshold < 1.0:
            raise InputError(f"freepih: latent_mask_threshold must be in [0, 1), got {self.latent_mask_threshold}")


@dataclass
class SDParts:
    """The Stable Diffusion pieces FreePIH uses (shared instances from components.load)."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    alphas_cumprod: torch.Tensor
    num_train_timesteps: int
    steps_offset: int

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype


def load_parts(source: str, device: str, dtype: torch.dtype) -> SDParts:
    """Load from a pipeline folder or cached Hub id; identical VAE / text-encoder weights are one object."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    scheduler = components.load(DDIMScheduler, source, "scheduler")
    return SDParts(
        unet=components.load(UNet2DConditionModel, source, "unet", dtype, device),
        vae=components.load(AutoencoderKL, source, "vae", dtype, device),
        text_encoder=components.load(CLIPTextModel, source, "text_encoder", dtype, device),
        tokenizer=components.load(CLIPTokenizer, source, "tokenizer", dtype, device),
        alphas_cumprod=ddim.alphas_cumprod_from_scheduler(scheduler),
        num_train_timesteps=int(scheduler.config.num_train_timesteps),
        steps_offset=int(scheduler.config.get("steps_offset", 0)),
    )


def denoising_timesteps(settings: FreePIHSettings, num_train_timesteps: int = 1000, steps_offset: int = 1) -> list[int]:
    """The descending timesteps that are re-run; the first is the one the composite is noised to.

    diffusers' DDIM "leading" spacing plus SD's steps_offset: 50 steps at noise level 0.2 keep the
    last 10 steps, 181, 161, ..., 1 (as img2img's `strength`, see `ddim.noise_level_to_timestep`).
    """
    schedule = ddim.evenly_spaced(settings.num_inference_steps, num_train_timesteps, "leading")
    _, kept = ddim.noise_level_to_timestep(settings.noise_level, [t + steps_offset for t in schedule])
    return kept


def working_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) with the long side `resolution`, aspect kept, both multiples of 64 (UNet strides)."""
    factor = resolution / max(width, height)
    return tuple(max(64, int(round(side * factor / 64)) * 64) for side in (width, height))  # type: ignore[return-value]


def encode_image(parts: SDParts, image: torch.Tensor) -> torch.Tensor:
    """z0: the posterior mean (not a sample: no extra randomness) times the VAE scaling factor."""
    with torch.no_grad():
        posterior = parts.vae.encode(image.to(parts.dtype)).latent_dist
    return posterior.mean.float() * parts.vae.config.scaling_factor


def decode_latent(parts: SDParts, z: torch.Tensor) -> torch.Tensor:
    """The image in [-1, 1] (not clamped: the content loss needs gradients everywhere)."""
    return parts.vae.decode((z / parts.vae.config.scaling_factor).to(parts.dtype)).sample.float()


def shared_noise(shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """eps, drawn on the CPU from the seed so that every device gets the same noise."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


def noised(z0: torch.Tensor, eps: torch.Tensor, alpha: float) -> torch.Tensor:
    """q(z_t | z0) with the given noise: sqrt(a) z0 + sqrt(1 - a) eps (z0 itself at alpha 1)."""
    return alpha ** 0.5 * z0 + (1.0 - alpha) ** 0.5 * eps


def style_module_names(unet: torch.nn.Module, which: Literal["all", "last"]) -> list[str]:
    """The cross-attention transformers of the UNet's up blocks (16, 32, 64 latent px in SD-1.5)."""
    names = []
    for i, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        if attentions:
            indices = range(len(attentions)) if which == "all" else [len(attentions) - 1]
            names += [f"up_blocks.{i}.attentions.{j}" for j in indices]
    return names


def content_module_names(vae: torch.nn.Module) -> list[str]:
    """The VAE encoder's down blocks: low-level features at 1, 1/2, 1/4, 1/8 of the image size."""
    return [f"down_blocks.{i}" for i in range(len(vae.encoder.down_blocks))]


def content_features(parts: SDParts, image: torch.Tensor) -> list[torch.Tensor]:
    """The VAE-encoder multi-scale features of an image in [-1, 1] (differentiable)."""
    names = content_module_names(parts.vae)
    with hooks.capture(parts.vae.encoder, names) as captured:
        parts.vae.encoder(image.to(parts.dtype))
    return [captured[n] for n in names]


@dataclass
class StepObjective:
    """L(delta) = w_c L_content + w_s L_style + w_st L_stab at one denoising step.

    The first evaluation (delta = 0, where L-BFGS starts) fixes the x0 anchor of L_stab.
    """

    parts: SDParts
    settings: FreePIHSettings
    z_t: torch.Tensor
    t: int
    alpha_t: float
    m_lat: torch.Tensor
    mask: torch.Tensor
    cond: torch.Tensor
    content_targets: list[torch.Tensor]
    style_names: list[str]
    x0_start: torch.Tensor | None = None

    def __call__(self, delta: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        z = self.z_t + self.m_lat * delta
        with hooks.capture(self.parts.unet, self.style_names) as captured:
            eps = self.parts.unet(z.to(self.parts.dtype), self.t, encoder_hidden_states=self.cond).sample
        x0 = ddim.predict_x0(z, eps.float(), self.alpha_t)
        if self.x0_start is None:
            self.x0_start = x0.detach()
        style_feats = [captured[n] for n in self.style_names]
        l_style = style_loss(style_feats, [mask_weights(self.mask, f.shape[-2:]) for f in style_feats])
        content = content_features(self.parts, decode_latent(self.parts, x0))
        l_content = content_loss(content, self.content_targets, [mask_weights(self.mask, f.shape[-2:]) for f in content])
        l_stab = stability_loss(x0, self.x0_start, self.m_lat)
        s = self.settings
        total = s.w_content * l_content + s.w_style * l_style + s.w_stab * l_stab
        values = {"total": total.item(), "content": l_content.item(), "style": l_style.item(), "stab": l_stab.item()}
        return total, values


@dataclass
class OptimizationReport:
    """What one step's L-BFGS did: iterations, loss evaluations, the losses before and after."""

    iterations: int
    evaluations: int
    start: dict[str, float]
    end: dict[str, float]


def optimize_delta(objective: StepObjective, settings: FreePIHSettings,
                   on_iteration: Callable[[int], None] | None = None) -> tuple[torch.Tensor, OptimizationReport]:
    """The foreground update delta after L-BFGS (strong-Wolfe line search) from delta = 0."""
    delta = torch.zeros_like(objective.z_t, dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.LBFGS([delta], lr=settings.lbfgs_lr, max_iter=settings.lbfgs_max_iter,
                                  line_search_fn="strong_wolfe")
    evaluations: list[tuple[dict[str, float], torch.Tensor]] = []
    seen_iteration = [-1]

    def closure() -> torch.Tensor:
        iteration = optimizer.state[delta].get("n_iter", 0)
        if iteration != seen_iteration[0] and on_iteration is not None:
            on_iteration(iteration)
        seen_iteration[0] = iteration
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            total, values = objective(delta)
            total.backward()
        evaluations.append((values, delta.detach().clone()))
        return total.detach()

    optimizer.step(closure)
    final = delta.detach()
    # L-BFGS leaves delta at a point it evaluated (bit for bit); its losses are the step's result.
    end = next((values for values, point in reversed(evaluations) if torch.equal(point, final)), evaluations[-1][0])
    state = optimizer.state[delta]
    report = OptimizationReport(int(state.get("n_iter", 0)), len(evaluations), evaluations[0][0], end)
    return final, report


StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
"""on_step(step index, t_prev, the latent after the step, its re-imposed background target)."""


@dataclass
class Outcome:
    """run_freepih's result: the decoded image in [-1, 1] and the run's metadata."""

    image: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)


def run_freepih(parts: SDParts, image: torch.Tensor, mask: torch.Tensor, prompt: str, seed: int,
                settings: FreePIHSettings, progress: Progress, on_step: StepCallback | None = None) -> Outcome:
    """FreePIH on a (1, 3, H, W) image in [-1, 1] and a (1, 1, H, W) 0/1 mask (H, W multiples of 64).

    Returns the decoded image in [-1, 1] (background pixels still need pasting back) and the
    per-step timings, L-BFGS iterations and losses.
    """
    device = parts.device
    image, mask = image.to(device), mask.to(device).float()
    timesteps = denoising_timesteps(settings, parts.num_train_timesteps, parts.steps_offset)
    pairs = ddim.step_pairs(timesteps)
    n_steps = len(pairs)

    z0 = encode_image(parts, image)
    eps_bg = shared_noise(tuple(z0.shape), seed, device)
    m_lat = (mask_weights(mask, z0.shape[-2:]) > settings.latent_mask_threshold).float()
    uncond, cond = components.encode_prompts(parts.tokenizer, parts.text_encoder, ["", prompt]).chunk(2)
    with torch.no_grad():
        targets = [f.detach() for f in content_features(parts, image)]
    style_names = style_module_names(parts.unet, settings.style_layers)

    def alpha(t: int) -> float:
        return ddim.alpha_at(parts.alphas_cumprod, t)

    z = noised(z0, eps_bg, alpha(timesteps[0]))
    progress(0.02, f"freepih: noised to t={timesteps[0]}, {n_steps} denoising steps")

    per_step: list[dict[str, Any]] = []
    for i, (t, t_prev) in enumerate(pairs):
        start = time.perf_counter()
        optimize = settings.optimized_steps is None or i < settings.optimized_steps
        if optimize:
            objective = StepObjective(parts, settings, z, t, alpha(t), m_lat, mask, cond, targets, style_names)

            def on_iteration(k: int, i: int = i, t: int = t) -> None:
                fraction = 0.02 + 0.94 * (i + min(k, settings.lbfgs_max_iter) / (settings.lbfgs_max_iter + 1)) / n_steps
                what = f"L-BFGS iteration {k}" if k else "L-BFGS initial loss"
                progress(fraction, f"freepih: step {i + 1}/{n_steps} (t={t}), {what}")

            delta, report = optimize_delta(objective, settings, on_iteration)
            z = z + m_lat * delta
        with torch.no_grad():
            eps = guided_eps(parts, z, t, uncond, cond, settings.guidance_scale)
            z = ddim.ddim_step(z, eps, alpha(t), alpha(t_prev))
            background = noised(z0, eps_bg, alpha(t_prev))
            z = m_lat * z + (1.0 - m_lat) * background
        if on_step is not None:
            on_step(i, t_prev, z, background)
        components.synchronize(device)  # honest per-step timings
        record: dict[str, Any] = {"t": t, "seconds": time.perf_counter() - start}
        if optimize:
            record |= {"lbfgs_iterations": report.iterations, "loss_evaluations": report.evaluations,
                       "loss_start": report.start, "loss_end": report.end}
        per_step.append(record)
        progress(0.02 + 0.94 * (i + 1) / n_steps, f"freepih: step {i + 1}/{n_steps} done in {record['seconds']:.1f} s")

    with torch.no_grad():
        result = decode_latent(parts, z).clamp(-1.0, 1.0)
    metadata = {
        "start_timestep": timesteps[0],
        "timesteps": timesteps,
        "seconds_per_step": [r["seconds"] for r in per_step],
        "lbfgs_iterations": [r.get("lbfgs_iterations", 0) for r in per_step],
        "steps": n_steps,
        "step_log": per_step,
    }
    return Outcome(result, metadata)


def guided_eps(parts: SDParts, z: torch.Tensor, t: int, uncond: torch.Tensor, cond: torch.Tensor,
               guidance_scale: float) -> torch.Tensor:
    """Classifier-free guided noise prediction (one conditional pass when the scale is 1)."""
    if guidance_scale == 1.0:
        return parts.unet(z.to(parts.dtype), t, encoder_hidden_states=cond).sample.float()
    batch = torch.cat([z, z]).to(parts.dtype)
    eps_u, eps_c = parts.unet(batch, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.float().chunk(2)
    return eps_u + guidance_scale * (eps_c - eps_u)


@register
class FreePIH(ModelMethod):
    """FreePIH (Wang et al. 2023) on SD-1.5: see the module docstring and methods.md section 2."""

    name = "freepih"
    family = "diffusion"
    inputs = frozenset({PROMPT})
    quick_settings = {"resolution": 128, "num_inference_steps": 10, "lbfgs_max_iter": 1}
    title = "FreePIH (training-free painterly harmonization)"
    summary = "SD-1.5 latents of the object optimized with L-BFGS for the background's style at the last denoising steps"
    cost = Cost(gpu=True, on_cpu=Rate(120.0, 80.0), on_gpu=Rate(5.0, 1.0), units=loss_evaluations,
                source="CPU: 529 s measured for 1 optimized step at 512 px; GPU: conservative, not measured (target: 30 s)")
    weights_env = WEIGHTS_ENV
    default_weights = DEFAULT_WEIGHTS
    required_files = REQUIRED_FILES
    hub_files = HUB_FILES
    how_to_set = HOW_TO_SET
    settings_class = FreePIHSettings

    @classmethod
    def random_weights(cls, scale: str = "full", device: str | None = None, **overrides: Any) -> FreePIH:
        """An instance on randomly initialized SD-1.5 components (benchmarks; the output is noise).

        "full": the real architectures (859.5M-parameter text-to-image UNet, SD VAE, CLIP ViT-L/14
        text tower), so time and memory are those of the real model; "tiny": the test-sized ones.
        """
        from harmony_core.diffusion import tiny

        size = "full" if scale == "full" else "tiny"
        device = device or components.default_device()
        dtype = components.default_dtype(device)
        method = cls(device=device, dtype=dtype, **overrides)
        scheduler = tiny.ddim_scheduler()
        method.adopt(SDParts(
            **tiny.sd_parts(size, 4, seed=0, device=device, dtype=dtype),
            alphas_cumprod=ddim.alphas_cumprod_from_scheduler(scheduler),
            num_train_timesteps=int(scheduler.config.num_train_timesteps),
            steps_offset=int(scheduler.config.steps_offset),
        ), f"random-{size}")
        return method

    def _check(self, folder: Path, found: Availability) -> Availability:
        """SD-1.5's text-to-image parts (an inpainting UNet has 9 input channels, not 4)."""
        for config, class_name, fields in (("unet/config.json", "UNet2DConditionModel", {"in_channels": 4}),
                                           ("vae/config.json", "AutoencoderKL", None),
                                           ("text_encoder/config.json", "CLIPTextModel", None)):
            problem = components.config_problem(folder, config, class_name, fields)
            if problem:
                return self.unloadable(problem)
        return found

    def _load(self, source: str) -> SDParts:
        return load_parts(source, self.device, self.dtype)

    def parts(self) -> SDParts:
        """The loaded components (loaded on first use, shared with other methods through the cache)."""
        return self.load()

    def harmonize(self, request: HarmonizationRequest, progress: Progress) -> HarmonizationResult:
        width, height = request.size
        size = working_size(width, height, self.settings.resolution)
        progress(0.0, "freepih: loading Stable Diffusion" if self.loaded() is None else "freepih: preparing")
        parts = self.parts()
        image = to_tensor(imaging.resize_rgb(request.composite, size))
        mask = torch.tensor(imaging.resize_mask(request.mask, size))[None, None].float()
        outcome = run_freepih(parts, image, mask, request.prompt, request.seed, self.settings, progress)
        output = imaging.resize_rgb(to_uint8(outcome.image), (width, height))
        metadata = outcome.metadata | {"working_resolution": f"{size[0]}x{size[1]}", "prompt": request.prompt,
                                       "dtype": components.dtype_name(parts.dtype)}
        tokens, kept = len(parts.tokenizer(request.prompt).input_ids), parts.tokenizer.model_max_length
        if tokens > kept:
            metadata["prompt_note"] = f"the prompt is {tokens} tokens long; the text encoder read only its first {kept}"
        return HarmonizationResult(image=output, metadata=metadata)
