"""DiffHarmony — an SD-1.5 inpainting UNet fine-tuned on iHarmony4 (Zhou et al., ICMR 2024).

Stage 1 treats harmonization as conditional generation in latent space: the UNet sees the noisy
latent, the object mask and the latent of the *whole* composite (9 channels, the SD-inpainting
layout) and, with the empty prompt and no guidance, denoises pure noise in 5 Euler-ancestral
steps into the harmonized image. Stage 2 (optional, `refinement/`) repairs the VAE's
reconstruction loss at 256 px with a residual UNet; the optional Harmony-VAE (`condition_vae/`,
DiffHarmony++) decodes with the composite and mask as extra input. Every detail of the math is
in docs/methods.md ("DiffHarmony: paper vs our defaults"); the weights layout is the authors' archive.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harmony_core import imaging
from harmony_core.cost import Cost, Rate, diffusion_steps
from harmony_core.diffusion.pixels import to_tensor, to_uint8
from harmony_core.errors import InputError
from harmony_core.model_method import ModelMethod
from harmony_core.registry import Progress, register
from harmony_core.types import Availability, HarmonizationRequest, HarmonizationResult

WEIGHTS_ENV = "HARMONY_DIFFHARMONY_WEIGHTS"
HOW_TO_SET = (f"the environment variable {WEIGHTS_ENV}, the command-line flag `--weights diffharmony=SOURCE` "
              "or DiffHarmony(weights=...) / set_weights")
DOWNLOAD_HELP = (
    "DiffHarmony's weights are not on the Hugging Face Hub. Download the authors' archive (the "
    "'Pretrained Models' link of https://github.com/nicecv/DiffHarmony: Baidu pan "
    "https://pan.baidu.com/s/1IkF6YP4C3fsEAi0_9eCESg, extraction code aqqd) and unpack it into one folder "
    "that holds base/ (a diffusers pipeline: unet/, vae/, text_encoder/, tokenizer/, scheduler/) and, "
    "optionally, refinement/ (config.json + diffusion_pytorch_model.safetensors) and condition_vae/; then "
    f"point {HOW_TO_SET} at that folder (or at a Hub repo id you mirrored it to)"
)
BASE_REQUIRED = (
    "base/unet/config.json|unet/config.json",
    "base/unet/*.safetensors|base/unet/*.bin|unet/*.safetensors|unet/*.bin",
    "base/vae/config.json|vae/config.json",
    "base/vae/*.safetensors|base/vae/*.bin|vae/*.safetensors|vae/*.bin",
    "base/text_encoder/config.json|text_encoder/config.json",
    "base/text_encoder/*.safetensors|base/text_encoder/*.bin|text_encoder/*.safetensors|text_encoder/*.bin",
    "base/tokenizer/vocab.json|tokenizer/vocab.json",
    "base/scheduler/scheduler_config.json|scheduler/scheduler_config.json",
)
"""What `base/` must hold; the `|` alternatives also accept a SOURCE that is the base folder itself."""

UNET_IN_CHANNELS = 9


@dataclass(frozen=True)
class DiffHarmonySettings:
    """resolution: the square working size (512 or 1024; a multiple of 8). steps: Euler-ancestral
    steps. use_refinement / use_condition_vae: use those parts when the weights have them."""

    resolution: int = 512
    steps: int = 5
    use_refinement: bool = True
    use_condition_vae: bool = True

    def __post_init__(self) -> None:
        resolution, steps = self.resolution, self.steps
        if isinstance(resolution, bool) or int(resolution) != resolution or resolution < 64 or resolution % 8:
            raise InputError(f"diffharmony: resolution must be a multiple of 8 (512 or 1024), got {resolution}")
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise InputError(f"diffharmony: steps must be a positive integer, got {steps}")
        for name, value in (("resolution", int(resolution)), ("steps", int(steps)),
                            ("use_refinement", bool(self.use_refinement)),
                            ("use_condition_vae", bool(self.use_condition_vae))):
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class WeightsLayout:
    """Where the parts of the authors' archive are (refinement / condition_vae may be missing)."""

    base: Path
    refinement: Path | None
    condition_vae: Path | None

    @classmethod
    def of(cls, folder: Path) -> WeightsLayout:
        """`folder/base` when present (the archive's layout), else `folder` itself as the base pipeline."""
        base = folder / "base" if (folder / "base").is_dir() else folder

        def optional(name: str) -> Path | None:
            return folder / name if (folder / name / "config.json").is_file() else None

        return cls(base, optional("refinement"), optional("condition_vae"))


@dataclass
class DiffHarmonyModels:
    """Everything one run needs, on one device; models may be shared with other methods (read-only)."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict[str, Any]
    refinement: Any | None = None
    condition_vae: Any | None = None
    empty_prompt: Any | None = None
    fingerprint: str = ""
    """components.fingerprint of base/unet's files (recorded in the results' metadata)."""

    def prompt_embedding(self) -> Any:
        """CLIP's encoding of "" (the authors' text input; not a zero tensor), computed once."""
        from harmony_core.diffusion import components

        if self.empty_prompt is None:
            hidden = components.encode_prompts(self.tokenizer, self.text_encoder, [""])
            self.empty_prompt = hidden.to(self.unet.dtype)
        return self.empty_prompt


def stage1(models: DiffHarmonyModels, composite: Any, mask: Any, steps: int, generator: Any,
           use_condition_vae: bool = True, progress: Progress | None = None,
           timings: dict[str, float] | None = None) -> Any:
    """The diffusion stage: (1, 3, R, R) composite in [-1, 1] and (1, 1, R, R) mask -> image in [0, 1].

    Random numbers are drawn from `generator` in the authors' order (initial noise, composite
    latent sample, the scheduler's ancestral noise, the Harmony-VAE's conditional sample), so a
    seed reproduces a run exactly. The Harmony-VAE, when loaded and `use_condition_vae`, replaces
    the plain VAE for encoding and decoding (as in the authors' pipeline).
    """
    import torch
    import torch.nn.functional as F
    from diffusers import EulerAncestralDiscreteScheduler
    from diffusers.utils.torch_utils import randn_tensor

    from harmony_core.diffusion.components import synchronize

    timings = {} if timings is None else timings
    unet, device, dtype = models.unet, models.unet.device, models.unet.dtype
    condition_vae = models.condition_vae if use_condition_vae else None
    vae = condition_vae if condition_vae is not None else models.vae
    scaling = vae.config.scaling_factor
    height, width = composite.shape[-2:]
    if height % 8 or width % 8:
        raise ValueError(f"the working resolution must be a multiple of 8, got {width}x{height}")
    scheduler = EulerAncestralDiscreteScheduler.from_config(models.scheduler_config)
    scheduler.set_timesteps(steps, device=device)
    prompt = models.prompt_embedding()
    start = time.perf_counter()
    with torch.inference_mode():
        latents = randn_tensor((1, unet.config.out_channels, height // 8, width // 8), generator=generator,
                               device=device, dtype=dtype) * scheduler.init_noise_sigma
        image = composite.to(device=device, dtype=vae.dtype)
        composite_latent = vae.encode(image).latent_dist.sample(generator=generator) * scaling
        binary = (mask >= 0.5).to(device=device, dtype=dtype)
        mask_latent = F.interpolate(binary, size=(height // 8, width // 8), mode="nearest")
        synchronize(device)
        timings["encode_s"] = time.perf_counter() - start
        start = time.perf_counter()
        for index, t in enumerate(scheduler.timesteps):
            model_input = torch.cat(
                [scheduler.scale_model_input(latents, t), mask_latent, composite_latent.to(dtype)], dim=1)
            noise = unet(model_input, t, encoder_hidden_states=prompt).sample
            latents = scheduler.step(noise, t, latents, generator=generator).prev_sample
            if progress is not None:
                progress(0.1 + 0.7 * (index + 1) / steps, f"diffharmony: step {index + 1}/{steps}")
        synchronize(device)
        timings["denoise_s"] = time.perf_counter() - start
        start = time.perf_counter()
        latents = latents.to(vae.dtype) / scaling
        if condition_vae is not None:
            cond = torch.cat([image, binary.to(vae.dtype)], dim=1)
            decoded = condition_vae.decode_with_cond(latents, cond, generator=generator)
        else:
            decoded = vae.decode(latents).sample
        result = (decoded.float() / 2 + 0.5).clamp(0, 1)
        synchronize(device)
        timings["decode_s"] = time.perf_counter() - start
    return result


def refine(model: Any, stage1_image: Any, composite: Any, mask: Any) -> Any:
    """Stage 2: the refinement network at its resolution; all (1, C, S, S), returns [0, 1].

    `stage1_image` in [0, 1] at any size is resized (bilinear, antialiased) to the size of
    `composite` (in [-1, 1]) and `mask` ({0, 1}), the size the network was trained at.
    """
    import torch
    import torch.nn.functional as F

    from harmony_core.models.refinement import stage2_input

    with torch.inference_mode():
        harmonized = stage1_image.to(device=model.device, dtype=torch.float32) * 2 - 1
        size = tuple(composite.shape[-2:])
        if tuple(harmonized.shape[-2:]) != size:
            harmonized = F.interpolate(harmonized, size=size, mode="bilinear", antialias=True,
                                       align_corners=False).clamp(-1, 1)
        inputs = stage2_input(harmonized, mask.to(harmonized), composite.to(harmonized), model.config.in_channels)
        refined = model(inputs.to(model.dtype)).float().clamp(-1, 1)
    return (refined + 1) / 2


@register
class DiffHarmony(ModelMethod):
    name = "diffharmony"
    family = "diffusion"
    title = "DiffHarmony"
    summary = "SD-1.5 inpainting UNet fine-tuned for harmonization, 5 Euler-ancestral steps + refinement (ICMR 2024)"
    cost = Cost(gpu=True, on_cpu=Rate(150.0, 70.0), on_gpu=Rate(5.0, 0.25), units=diffusion_steps,
                source="CPU: 218 s measured for 1 step at 512 px; GPU: conservative, not measured (target: 1 s for 5 steps)")
    weights_env = WEIGHTS_ENV
    required_files = BASE_REQUIRED
    how_to_set = HOW_TO_SET
    missing_help = DOWNLOAD_HELP
    settings_class = DiffHarmonySettings
    quick_settings = {"steps": 1}

    @property
    def weights_source(self) -> str:  # type: ignore[override]
        models = self.loaded()
        source = super().weights_source
        fingerprint = models.fingerprint if models is not None else ""
        return f"{source} (unet fingerprint {fingerprint[:12]})" if fingerprint else source

    def parameters(self) -> dict[str, Any]:
        models, s = self.loaded(), self.settings
        return {
            "resolution": s.resolution, "steps": s.steps, "scheduler": "EulerAncestralDiscreteScheduler",
            "guidance_scale": 1.0, "prompt": "", "use_refinement": s.use_refinement,
            "use_condition_vae": s.use_condition_vae,
            "refinement": bool(models and models.refinement is not None and s.use_refinement),
            "condition_vae": bool(models and models.condition_vae is not None and s.use_condition_vae),
        }

    # --- availability and loading ---------------------------------------------------------------

    def _check(self, folder: Path, found: Availability) -> Availability:
        config = json.loads((WeightsLayout.of(folder).base / "unet" / "config.json").read_text())
        if config.get("in_channels") != UNET_IN_CHANNELS:
            return Availability(False, f"'{folder}' holds a UNet with {config.get('in_channels')} input channels, "
                                       f"not DiffHarmony's {UNET_IN_CHANNELS} (latent, mask, composite latent). "
                                       f"{DOWNLOAD_HELP}")
        return found

    def _load(self, source: str) -> DiffHarmonyModels:
        """Load through the shared cache: the VAE / text encoder are one object with freepih's when
        their files are identical."""
        from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        from harmony_core.diffusion import components
        from harmony_core.models.condition_vae import ConditionVAE
        from harmony_core.models.refinement import RefinementUNet

        folder = components.resolve(source)
        layout = WeightsLayout.of(folder)
        device, dtype = self.device, self.dtype
        return DiffHarmonyModels(
            unet=components.load(UNet2DConditionModel, layout.base, "unet", dtype, device),
            vae=components.load(AutoencoderKL, layout.base, "vae", dtype, device),
            text_encoder=components.load(CLIPTextModel, layout.base, "text_encoder", dtype, device),
            tokenizer=components.load(CLIPTokenizer, layout.base, "tokenizer", dtype, device),
            scheduler_config=dict(components.load(EulerAncestralDiscreteScheduler, layout.base, "scheduler").config),
            refinement=(components.load(RefinementUNet, layout.refinement.parent, layout.refinement.name, dtype, device)
                        if layout.refinement else None),
            condition_vae=(components.load(ConditionVAE, layout.condition_vae.parent, layout.condition_vae.name,
                                           dtype, device) if layout.condition_vae else None),
            fingerprint=components.fingerprint(layout.base / "unet"),
        )

    @classmethod
    def random_weights(cls, scale: str = "full", device: str | None = None, **options: Any) -> DiffHarmony:
        """An instance with randomly initialized components of the real architectures (benchmarks).

        "full": SD-1.5 inpainting UNet (859.5M), SD VAE, CLIP ViT-L/14 text tower, the authors'
        `base` refinement UNet; "tiny": the same classes, a few channels wide. Speed does not
        depend on the weights' values; the output is noise. `options`: constructor settings
        (e.g. steps=1, resolution=1024).
        """
        from harmony_core.diffusion import components, tiny
        from harmony_core.models.refinement import FULL_CONFIG, RefinementUNet

        device = device or components.default_device()
        dtype = components.default_dtype(device)
        size = "full" if scale == "full" else "tiny"
        refinement_config = FULL_CONFIG if size == "full" else {
            **FULL_CONFIG, "block_out_channels": [8, 16, 16, 16], "norm_num_groups": 8, "layers_per_block": 1}
        method = cls(device=device, **options)
        method.adopt(DiffHarmonyModels(
            **tiny.sd_parts(size, UNET_IN_CHANNELS, seed=0, device=device, dtype=dtype),
            scheduler_config=dict(tiny.euler_ancestral_scheduler().config),
            refinement=tiny.seeded(lambda: RefinementUNet(**refinement_config), 3, device, dtype),
        ), f"random-{size}")
        return method

    # --- inference ------------------------------------------------------------------------------

    def harmonize(self, request: HarmonizationRequest, progress: Progress) -> HarmonizationResult:
        import torch

        from harmony_core.diffusion.components import dtype_name, synchronize
        from harmony_core.models.refinement import STAGE2_RESOLUTION

        timings: dict[str, float] = {}
        start = time.perf_counter()
        s = self.settings
        fresh = self.loaded() is None
        progress(0.02, "diffharmony: loading weights" if fresh else "diffharmony: preparing")
        models = self.load()
        if fresh:
            timings["load_s"] = time.perf_counter() - start
        refinement = models.refinement if s.use_refinement else None
        condition_vae = models.condition_vae if s.use_condition_vae else None
        device = models.unet.device
        size = (s.resolution, s.resolution)
        composite = to_tensor(imaging.resize_rgb(request.composite, size), device)
        mask = to_tensor(imaging.resize_mask(request.mask, size), device)
        generator = torch.Generator(device=device).manual_seed(request.seed)
        image = stage1(models, composite, mask, s.steps, generator, s.use_condition_vae, progress, timings)
        if refinement is not None:
            progress(0.85, "diffharmony: refinement")
            start = time.perf_counter()
            small = (STAGE2_RESOLUTION, STAGE2_RESOLUTION)
            image = refine(refinement, image, to_tensor(imaging.resize_rgb(request.composite, small), device),
                           to_tensor(imaging.resize_mask(request.mask, small), device))
            synchronize(device)
            timings["refinement_s"] = time.perf_counter() - start
        output = imaging.resize_rgb(to_uint8(image * 2 - 1), request.size)
        metadata = {
            "steps": s.steps, "working_resolution": s.resolution,
            "output_resolution": STAGE2_RESOLUTION if refinement is not None else s.resolution,
            "dtype": dtype_name(models.unet.dtype), "refinement": refinement is not None,
            "condition_vae": condition_vae is not None, "stage_seconds": timings,
        }
        return HarmonizationResult(image=output, metadata=metadata)
