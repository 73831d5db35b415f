"""Random-weight models: tiny ones for tests, full-size architectures for benchmarks (all offline).

The model builders serve `random_weights` (bench --random-weights, device-check, --tiny); the
`save_tiny_*` folder writers at the end serve tests (tests/support.py holds the rest) and
`bench-studio --overhead`.

Tests need the real diffusers/transformers classes (so the code paths are the production ones) but
cannot download weights; benchmarks need the real architectures' cost without the real weights.
Full-size configs are written from the published config.json files (facts, checked by parameter
count in tests/test_diffusion.py):

- DDPM 256 px (google/ddpm-{celebahq,church,bedroom,cat}-256 and ema- variants): UNet2DModel,
  block_out (128, 128, 256, 256, 512, 512), attention at 16 px, 113.7M parameters.
- SD-1.5 UNet2DConditionModel: block_out (320, 640, 1280, 1280), cross-attention 768, 8 heads;
  859.5M parameters with 9 input channels (inpainting), 859.5M with 4 (text-to-image).
- SD VAE AutoencoderKL: block_out (128, 256, 512, 512), 4 latent channels, scaling 0.18215.
- CLIP ViT-L/14 text encoder: hidden 768, 12 layers, 12 heads, 77 positions, vocab 49408.

Weights are drawn inside `torch.random.fork_rng` from `seed`, so building a model never disturbs
the caller's global RNG and the same seed gives the same model.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

Scale = Literal["tiny", "full"]
M = TypeVar("M", bound=torch.nn.Module)

DDPM_256_UNET: dict[str, Any] = {
    "sample_size": 256, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "flip_sin_to_cos": False, "freq_shift": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "block_out_channels": [128, 128, 256, 256, 512, 512], "layers_per_block": 2,
    "mid_block_scale_factor": 1, "downsample_padding": 0, "act_fn": "silu", "attention_head_dim": None,
    "norm_num_groups": 32, "norm_eps": 1e-6, "add_attention": True,
}
"""google/ddpm-ema-church-256's config.json (the other 256-px DDPMs share it)."""

TINY_DDPM_UNET: dict[str, Any] = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "flip_sin_to_cos": False, "freq_shift": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "block_out_channels": [16, 32, 32], "layers_per_block": 1, "downsample_padding": 0,
    "attention_head_dim": None, "norm_num_groups": 8, "norm_eps": 1e-6, "add_attention": True,
}
"""Same block types as the DDPM, 32 px -> h is 32 x 8 x 8."""

DDPM_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "clip_sample": True, "variance_type": "fixed_small",
}

SD15_UNET: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 768, "attention_head_dim": 8,
}

TINY_SD_UNET: dict[str, Any] = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8,
    "cross_attention_dim": 32, "attention_head_dim": 4,
}
"""Cross-attention transformer blocks in two up blocks (two resolutions), like SD's three."""

SD_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 512,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "act_fn": "silu",
    "norm_num_groups": 32, "scaling_factor": 0.18215,
}

TINY_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 64,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 8,
    "scaling_factor": 0.18215,
}
"""Four blocks, so the latent is H/8 x W/8 as in SD."""

CLIP_L14_TEXT: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "projection_dim": 768,
}

TINY_CLIP_TEXT: dict[str, Any] = {
    "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
    "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 32,
}

SD_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False, "prediction_type": "epsilon",
}
"""SD-1.5's scheduler_config (shared by its DDIM / PNDM / Euler ancestral schedulers)."""


def seeded(build: Callable[[], M], seed: int, device: str | torch.device | None = None,
           dtype: torch.dtype = torch.float32) -> M:
    """`build()` with weights drawn from `seed` (global RNG untouched), on device/dtype, eval, no grad."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    model = model.to(device or "cpu")
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.eval().requires_grad_(False)


def ddpm_unet(scale: Scale = "tiny", seed: int = 0, device: str | torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """UNet2DModel: the 256-px DDPM architecture ("full") or a 32-px one with the same block types."""
    from diffusers import UNet2DModel

    config = DDPM_256_UNET if scale == "full" else TINY_DDPM_UNET
    return seeded(lambda: UNet2DModel(**config), seed, device, dtype)


def sd_unet(scale: Scale = "tiny", in_channels: int = 4, seed: int = 0, device: str | torch.device | None = None,
            dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """UNet2DConditionModel with `in_channels` 4 (text-to-image, freepih) or 9 (inpainting, diffharmony)."""
    from diffusers import UNet2DConditionModel

    config = {**(SD15_UNET if scale == "full" else TINY_SD_UNET), "in_channels": in_channels}
    return seeded(lambda: UNet2DConditionModel(**config), seed, device, dtype)


def sd_vae(scale: Scale = "tiny", seed: int = 0, device: str | torch.device | None = None,
           dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """AutoencoderKL: SD's VAE ("full") or a tiny one with the same 8x downsampling."""
    from diffusers import AutoencoderKL

    config = SD_VAE if scale == "full" else TINY_VAE
    return seeded(lambda: AutoencoderKL(**config), seed, device, dtype)


def clip_text_encoder(scale: Scale = "tiny", seed: int = 0, device: str | torch.device | None = None,
                      dtype: torch.dtype = torch.float32, vocab_size: int | None = None) -> torch.nn.Module:
    """CLIPTextModel: ViT-L/14's text tower ("full") or a 2-layer one sized to the tiny tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel

    if scale == "full":
        config = CLIPTextConfig(**CLIP_L14_TEXT)
    else:
        config = CLIPTextConfig(**TINY_CLIP_TEXT, vocab_size=vocab_size or len(_tiny_vocab()),
                                bos_token_id=len(_tiny_vocab()) - 2, eos_token_id=len(_tiny_vocab()) - 1,
                                pad_token_id=len(_tiny_vocab()) - 1)
    return seeded(lambda: CLIPTextModel(config), seed, device, dtype)


def sd_parts(scale: Scale, unet_in_channels: int, seed: int = 0, device: str | torch.device | None = None,
             dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """SD-1.5's unet / vae / text_encoder (seeds seed, seed+1, seed+2) and the tiny tokenizer, in memory.

    The one recipe behind diffharmony's and freepih's `random_weights`; the seeds are those of
    `save_tiny_sd_pipeline`, so equal seeds give identical weights in memory and on disk.
    """
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = clip_tokenizer(folder)
    return {
        "unet": sd_unet(scale, unet_in_channels, seed, device, dtype),
        "vae": sd_vae(scale, seed + 1, device, dtype),
        "text_encoder": clip_text_encoder(scale, seed + 2, device, dtype),
        "tokenizer": tokenizer,
    }


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte maps to one printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _tiny_vocab() -> dict[str, int]:
    """Every byte character alone and word-final (no merges), then <|startoftext|>, <|endoftext|>."""
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def write_tiny_tokenizer_files(folder: str | os.PathLike) -> Path:
    """vocab.json + merges.txt of a character-level CLIP BPE (516 tokens): CLIPTokenizer loads it offline."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(_tiny_vocab()), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder


def clip_tokenizer(folder: str | os.PathLike) -> Any:
    """A CLIPTokenizer from tiny files written into `folder` (max length 77, like SD's)."""
    from transformers import CLIPTokenizer

    write_tiny_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77, local_files_only=True)


def ddim_scheduler(sd: bool = True) -> Any:
    """DDIMScheduler with SD-1.5's config (sd=True) or the DDPMs' linear 1e-4..0.02 betas."""
    from diffusers import DDIMScheduler

    config = SD_SCHEDULER if sd else {**DDPM_SCHEDULER, "clip_sample": False}
    config = {k: v for k, v in config.items() if k != "variance_type"}
    return DDIMScheduler(**config)


def euler_ancestral_scheduler() -> Any:
    """EulerAncestralDiscreteScheduler with SD-1.5's betas (DiffHarmony's sampler)."""
    from diffusers import EulerAncestralDiscreteScheduler

    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "steps_offset", "prediction_type")
    return EulerAncestralDiscreteScheduler(**{k: SD_SCHEDULER[k] for k in keep})


# --- test support: folders on disk for the tests (the library, the CLI and the studio never call these) ---

def save_tiny_ddpm(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A google/ddpm-*-256-style folder (config.json + weights + scheduler_config.json at the root), tiny."""
    from diffusers import DDPMScheduler

    folder = Path(folder)
    ddpm_unet("tiny", seed).save_pretrained(folder)
    DDPMScheduler(**DDPM_SCHEDULER).save_pretrained(folder)
    return folder


def save_tiny_sd_pipeline(folder: str | os.PathLike, in_channels: int = 4, seed: int = 0,
                          scheduler: Literal["ddim", "euler_ancestral"] = "ddim") -> Path:
    """A diffusers pipeline-style folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/ model_index.json).

    Components use seeds seed, seed+1, seed+2, so two folders saved with the same seed hold
    identical weights (the shared-cache test) and different seeds give different weights.
    """
    folder = Path(folder)
    sd_unet("tiny", in_channels, seed).save_pretrained(folder / "unet")
    sd_vae("tiny", seed + 1).save_pretrained(folder / "vae")
    clip_text_encoder("tiny", seed + 2).save_pretrained(folder / "text_encoder")
    clip_tokenizer(folder / "tokenizer").save_pretrained(folder / "tokenizer")
    sched = ddim_scheduler() if scheduler == "ddim" else euler_ancestral_scheduler()
    sched.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionInpaintPipeline" if in_channels == 9 else "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", type(sched).__name__],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return folder


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
