"""hspace — content injection in the h-space of an unconditional DDPM (DiffStyle / InjectFusion).

The bottleneck h of the UNet (mid block output, 512 x 8 x 8 at 256 px) carries content, the skip
connections carry style (Jeong et al., "Training-free Style Transfer Emerges from h-space in
Diffusion models"). For harmonization the style image is the background (the composite when no
separate background is given) and the content is the composite: we generate from the style's
DDIM-inverted noise and blend the composite's h into the generation inside the object's area, so
the object keeps its content and takes the background's style. Every setting below is a
parameter; docs/methods.md ("hspace: paper vs our defaults") says which defaults are the paper's.

Works at the DDPM's resolution (256 px, `unet.config.sample_size`); the output is resized back to
the input size and `Method.run` pastes it into the object only.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from harmony_core import imaging
from harmony_core.cost import Cost, Rate, ddpm_calls
from harmony_core.diffusion import components, ddim, ddpm_ckpt
from harmony_core.diffusion.pixels import to_tensor, to_uint8
from harmony_core.errors import InputError, MethodUnavailable
from harmony_core.model_method import ModelMethod
from harmony_core.registry import STYLE, Progress, register
from harmony_core.types import Availability, HarmonizationRequest, HarmonizationResult

WEIGHTS_ENV = "HARMONY_HSPACE_WEIGHTS"
DEFAULT_WEIGHTS = "google/ddpm-ema-church-256"
KNOWN_WEIGHTS: tuple[str, ...] = tuple(
    f"google/ddpm-{ema}{domain}-256" for domain in ("church", "celebahq", "bedroom", "cat") for ema in ("ema-", "")
)
"""Hub ids with the 256-px DDPM architecture that hspace runs on (the UI lists them)."""
HOW_TO_SET = (f"the env var {WEIGHTS_ENV}, `--weights hspace=SOURCE` or HSpace(weights=...) "
              f"(a diffusers folder, an SDEdit / InjectFusion DDPM .ckpt file, or a Hub id: "
              f"{', '.join(KNOWN_WEIGHTS[:2])}, ...)")
REQUIRED_FILES = ("config.json|unet/config.json", "*.safetensors|*.bin|unet/*.safetensors|unet/*.bin")
HUB_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json")
"""What `_load` reads from a google/ddpm-*-256 repo: the UNet's config and weights, the betas."""
CACHE_ENTRIES = 8


@dataclass(frozen=True)
class HSpaceSettings:
    """Defaults are the authors' unless marked "ours"."""

    n_inv: int = 50          # DDIM inversion steps (1000 for out-of-domain styles)
    n_gen: int = 1000        # generation steps (authors: 1000; 50-200 are much faster)
    n_inject: int = 50       # size of the evenly spaced injection schedule
    t_edit: int = 400        # inject only at schedule steps with t >= t_edit
    gamma: float = 0.3       # slerp weight of the content's h (0.4 for artwork styles)
    omega: float = 0.0       # skip calibration strength; 0 = asymmetric step only
    t_boost: int = 200       # quality boosting: eta = 1 at schedule steps with t <= t_boost
    dt_lambda: float = 1.0   # direction-term scale for t >= dt_lambda_from (0.9985 in face presets)
    dt_lambda_from: int = 950

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        checks = [
            (2 <= self.n_inv <= 1000, "n_inv must be in [2, 1000]"),
            (1 <= self.n_gen <= 1000, "n_gen must be in [1, 1000]"),
            (1 <= self.n_inject <= 1000, "n_inject must be in [1, 1000]"),
            (0.0 <= self.gamma <= 1.0, "gamma must be in [0, 1]"),
            (0.0 <= self.omega <= 1.0, "omega must be in [0, 1]"),
            (self.dt_lambda > 0, "dt_lambda must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"hspace: {message}")


# --- pure math -----------------------------------------------------------------------------------

def slerp(a: torch.Tensor, b: torch.Tensor, gamma: float) -> torch.Tensor:
    """Spherical interpolation per sample (flattened), cosine clamped to [-1, 1] before acos.

    Nearly parallel vectors (sin(theta) < 1e-6, identical ones included) fall back to the linear
    interpolation, which is then exact and free of 0/0.
    """
    flat_a, flat_b = a.flatten(1).double(), b.flatten(1).double()
    cos = (flat_a * flat_b).sum(1) / (flat_a.norm(dim=1) * flat_b.norm(dim=1)).clamp_min(1e-30)
    theta = torch.acos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    parallel = sin < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    wa = torch.where(parallel, torch.full_like(sin, 1.0 - gamma), torch.sin((1.0 - gamma) * theta) / safe)
    wb = torch.where(parallel, torch.full_like(sin, gamma), torch.sin(gamma * theta) / safe)
    shape = (-1,) + (1,) * (a.ndim - 1)
    return (wa.view(shape) * a.double() + wb.view(shape) * b.double()).to(a.dtype)


def norm_match(c: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """c' = c * ||h|| / ||c|| per sample, so the blend keeps h's norm (the distribution the decoder expects)."""
    ratio = h.flatten(1).norm(dim=1) / c.flatten(1).norm(dim=1).clamp_min(1e-12)
    return c * ratio.view((-1,) + (1,) * (c.ndim - 1))


def inject(h: torch.Tensor, content: torch.Tensor, gamma: float, mask: torch.Tensor) -> torch.Tensor:
    """h~ = m * slerp(h, c'; gamma) + (1 - m) * h, written as h + m (slerp - h) so m = 0 leaves h bit-exact."""
    blended = slerp(h, norm_match(content, h), gamma)
    return h + mask * (blended - h)


def calibrate(x_t: torch.Tensor, eps: torch.Tensor, eps_tilde: torch.Tensor, alpha_t: float, omega: float) -> torch.Tensor:
    """Skip calibration: x_t + sqrt(a_t)(P~' - P) + omega sqrt(1 - a_t)(eps~ - eps), P~' = P~ with P's std."""
    p, p_tilde = ddim.predict_x0(x_t, eps, alpha_t), ddim.predict_x0(x_t, eps_tilde, alpha_t)
    dims = tuple(range(1, x_t.ndim))
    mean = p_tilde.mean(dim=dims, keepdim=True)
    p_tilde = (p_tilde - mean) * p.std(dim=dims, keepdim=True) / p_tilde.std(dim=dims, keepdim=True).clamp_min(1e-12) + mean
    return x_t + alpha_t ** 0.5 * (p_tilde - p) + omega * (1.0 - alpha_t) ** 0.5 * (eps_tilde - eps)


def schedule_steps(generation: list[int], n_inject: int, num_train_timesteps: int = 1000) -> set[int]:
    """The generation timesteps nearest to n_inject evenly spaced ones: where injection and boosting may happen."""
    targets = ddim.evenly_spaced(min(n_inject, num_train_timesteps), num_train_timesteps)
    return {min(generation, key=lambda g: (abs(g - s), g)) for s in targets}


def mask_grid(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The object mask area-averaged onto the h grid (rows, cols), soft values in [0, 1]."""
    return cv2.resize(mask.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA).clip(0.0, 1.0)


# --- the method ----------------------------------------------------------------------------------

@dataclass
class Inversion:
    """x_T of one image and its h at every inversion timestep."""

    x_T: torch.Tensor
    h: dict[int, torch.Tensor]


@dataclass
class DDPM:
    """The loaded model: the UNet and the alpha-bar of its checkpoint's scheduler config."""

    unet: torch.nn.Module
    alphas_cumprod: torch.Tensor
    num_train_timesteps: int = 1000

    @classmethod
    def of(cls, unet: torch.nn.Module, scheduler_config: dict[str, Any] | None = None) -> DDPM:
        ac = ddim.alphas_cumprod_from_config(scheduler_config)
        return cls(unet, ac, len(ac))


def scheduler_config(folder: Path) -> dict[str, Any] | None:
    """The checkpoint's scheduler config (root or scheduler/ subfolder), None when it has none."""
    for path in (folder / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json"):
        if path.is_file():
            return json.loads(path.read_text())
    return None


@register
class HSpace(ModelMethod):
    name = "hspace"
    family = "diffusion"
    inputs = frozenset({STYLE})
    maps = ("hspace injection mask", "hspace |h~-h|")
    quick_settings = {"n_inv": 5, "n_gen": 5}
    title = "h-space content injection (DiffStyle)"
    summary = "training-free: the object's h-space content injected into a DDPM generation of the background's style"
    cost = Cost(gpu=True, on_cpu=Rate(10.0, 10.3), on_gpu=Rate(5.0, 0.06), units=ddpm_calls,
                source="CPU: 10.3 s per UNet call measured; GPU (fp32): conservative, not measured (target: 3 s at n_gen 50)")
    weights_env = WEIGHTS_ENV
    default_weights = DEFAULT_WEIGHTS
    required_files = REQUIRED_FILES
    hub_files = HUB_FILES
    how_to_set = HOW_TO_SET
    settings_class = HSpaceSettings

    def __init__(self, *, settings: HSpaceSettings | None = None, weights: str | os.PathLike | None = None,
                 device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                 unet: torch.nn.Module | None = None, weights_label: str | None = None, **overrides: Any) -> None:
        """settings, or any of its fields as keyword arguments (`HSpace(n_gen=200)`).

        weights: a local folder or Hub id (default: $HARMONY_HSPACE_WEIGHTS, else google/ddpm-ema-church-256).
        unet: an already-built UNet2DModel (tests, random-weight benchmarks); weights are then not
        loaded and the DDPM paper's linear betas are used.
        dtype: float32 by default on every device — DDIM inversion accumulates rounding over 50+ steps.
        """
        super().__init__(settings=settings, weights=weights, device=device or (unet.device if unet is not None else None),
                         dtype=dtype, **overrides)
        self._cache: OrderedDict[str, Inversion] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.cache_hits = 0
        if unet is not None:
            unet = unet.to(self.device) if unet.dtype == dtype else unet.to(self.device, dtype)
            self.adopt(DDPM.of(unet), weights_label or "injected model")

    def default_dtype(self, device: str) -> torch.dtype:
        return torch.float32  # DDIM inversion accumulates rounding over 50+ steps

    def set_weights(self, source: str | os.PathLike | None) -> None:
        """Load from `source` (folder or Hub id; None: back to the default) on the next run."""
        super().set_weights(source)
        with self._cache_lock:
            self._cache.clear()

    @classmethod
    def random_weights(cls, scale: str = "full", device: str | torch.device | None = None, **options: Any) -> HSpace:
        """The 256-px DDPM architecture ("full", 113.7M parameters) or the tiny one, random weights (seed 0)."""
        from harmony_core.diffusion import tiny

        unet = tiny.ddpm_unet("full" if scale == "full" else "tiny", seed=0, device=device)
        label = f"random weights ({'google/ddpm-*-256 architecture' if scale == 'full' else 'tiny'})"
        return cls(unet=unet, device=device, weights_label=label, **options)

    def available(self) -> Availability:
        """A checkpoint file (SDEdit / InjectFusion .ckpt) is checked by its presence here and by its
        tensors when it loads; folders and Hub ids as every ModelMethod's."""
        source = self.source()
        if source is None or not ddpm_ckpt.is_checkpoint(source) or self.loaded() is not None:
            return super().available()
        if not Path(source).expanduser().is_file():
            return Availability(False, f"checkpoint '{source}' does not exist; set {HOW_TO_SET}")
        failed = self._state.failed
        return Availability(False, failed[1]) if failed is not None and failed[0] == source else Availability(True)

    def _check(self, folder: Path, found: Availability) -> Availability:
        """An unconditional UNet2DModel (a text-to-image pipeline's UNet needs a prompt it never gets)."""
        config = "unet/config.json" if (folder / "unet" / "config.json").is_file() else "config.json"
        problem = components.config_problem(folder, config, "UNet2DModel")
        return self.unloadable(problem) if problem else found

    def _load(self, source: str) -> DDPM:
        from diffusers import UNet2DModel

        if ddpm_ckpt.is_checkpoint(source):
            # The original DDPM's network and betas (linear 1e-4..0.02 over 1000 steps): a .ckpt has no scheduler config.
            try:
                unet = ddpm_ckpt.load_unet(Path(source).expanduser(), self.dtype, self.device)
            except (ValueError, RuntimeError, OSError) as exc:
                raise MethodUnavailable(f"hspace cannot use '{source}': {exc}") from exc
            return DDPM.of(unet, None)
        folder = components.resolve(source)
        subfolder = "unet" if (folder / "unet" / "config.json").is_file() else None
        unet = components.load(UNet2DModel, folder, subfolder, self.dtype, self.device)
        return DDPM.of(unet, scheduler_config(folder))

    def unet(self) -> torch.nn.Module:
        """The UNet2DModel, loaded once through the shared cache."""
        return self.load().unet

    # --- inversion with a bounded cache ------------------------------------------------------

    def _cache_key(self, image: np.ndarray) -> str:
        """The image's bytes and every setting of the run, n_gen too: a run with other generation
        settings inverts afresh, so its time (say, a benchmark row's) always includes inversion."""
        digest = hashlib.sha256(image.tobytes())
        digest.update(repr((image.shape, self.weights_source, id(self.unet()), self.settings.n_inv,
                            self.settings.n_gen, self.device, str(self.dtype))).encode())
        return digest.hexdigest()

    def invert(self, image: np.ndarray, on_step: Callable[[], None] | None = None) -> tuple[Inversion, bool]:
        """DDIM inversion (eta 0) of an image, from the cache when the same bytes were inverted before."""
        key = self._cache_key(image)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return self._cache[key], True
        result = self._invert(image, on_step)
        with self._cache_lock:
            self._cache[key] = result
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return result, False

    @torch.no_grad()
    def _invert(self, image: np.ndarray, on_step: Callable[[], None] | None) -> Inversion:
        from harmony_core.diffusion import unet_parts

        ddpm = self.load()
        unet, ac = ddpm.unet, ddpm.alphas_cumprod
        steps = ddim.evenly_spaced(self.settings.n_inv, ddpm.num_train_timesteps)
        x0 = to_tensor(imaging.resize_rgb(image, (unet.config.sample_size,) * 2), self.device)
        h: dict[int, torch.Tensor] = {}

        def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
            enc = unet_parts.encode(unet, x.to(self.dtype), t)
            h[t] = enc.h
            if on_step is not None:
                on_step()
            return unet_parts.decode(unet, enc.h, enc.skips, enc.emb).float()

        x_T = ddim.ddim_invert(x0, eps_fn, steps, ac)
        h[steps[-1]] = unet_parts.encode(unet, x_T.to(self.dtype), steps[-1]).h  # injection may start at T
        return Inversion(x_T=x_T, h=h)

    # --- generation with injection -----------------------------------------------------------

    @torch.no_grad()
    def generate(self, style: Inversion, content: Inversion, mask: torch.Tensor, seed: int,
                 on_step: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """DDIM generation from the style's x_T with the content's h injected; returns (x0, sum |h~-h|, injections)."""
        from harmony_core.diffusion import unet_parts

        s = self.settings
        ddpm = self.load()
        unet, ac = ddpm.unet, ddpm.alphas_cumprod
        generation = ddim.evenly_spaced(s.n_gen, ddpm.num_train_timesteps)
        schedule = schedule_steps(generation, s.n_inject, ddpm.num_train_timesteps)
        content_steps = sorted(content.h)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        x = style.x_T.clone()
        change = torch.zeros(mask.shape[-2:], dtype=torch.float32, device=x.device)
        injections = 0
        for t, t_prev in ddim.step_pairs(generation):
            a_t, a_prev = ddim.alpha_at(ac, t), ddim.alpha_at(ac, t_prev)
            eta = 1.0 if (t in schedule and t <= s.t_boost) else 0.0
            scale = s.dt_lambda if t >= s.dt_lambda_from else 1.0
            enc = unet_parts.encode(unet, x.to(self.dtype), t)
            eps = unet_parts.decode(unet, enc.h, enc.skips, enc.emb).float()
            if t in schedule and t >= s.t_edit:
                c = content.h[min(content_steps, key=lambda k: (abs(k - t), k))]
                h_tilde = inject(enc.h, c, s.gamma, mask.to(enc.h.dtype))
                eps_tilde = unet_parts.decode(unet, h_tilde, enc.skips, enc.emb).float()  # the SAME skips
                change += (h_tilde - enc.h).float().norm(dim=1)[0]
                injections += 1
                if s.omega > 0.0:
                    x = calibrate(x, eps, eps_tilde, a_t, s.omega)
                    eps = unet_parts.forward(unet, x.to(self.dtype), t).float()
                    x = ddim.ddim_step(x, eps, a_t, a_prev, eta=eta, generator=generator, direction_scale=scale)
                else:
                    x = ddim.ddim_step(x, eps_tilde, a_t, a_prev, eta=eta, generator=generator,
                                       eps_direction=eps, direction_scale=scale)
            else:
                x = ddim.ddim_step(x, eps, a_t, a_prev, eta=eta, generator=generator, direction_scale=scale)
            if on_step is not None:
                on_step()
        return x, change, injections

    def harmonize(self, request: HarmonizationRequest, progress: Progress) -> HarmonizationResult:
        style_image = request.background if request.background is not None else request.composite
        images = [request.composite] if style_image is request.composite else [request.composite, style_image]
        total = sum(self.settings.n_inv - 1 for _ in images) + self.settings.n_gen
        done = 0

        def tick(what: str, steps: int) -> Callable[[], None]:
            """progress: the fraction of all UNet steps of the run, the count within this phase."""
            phase = 0

            def step() -> None:
                nonlocal done, phase
                done, phase = done + 1, phase + 1
                progress(min(done / total, 0.99), f"hspace: {what} {min(phase, steps)}/{steps}")
            return step

        start = time.perf_counter()
        content, content_hit = self.invert(request.composite, tick("inverting the composite", self.settings.n_inv - 1))
        if len(images) == 2:
            style, style_hit = self.invert(style_image, tick("inverting the style image", self.settings.n_inv - 1))
        else:
            style, style_hit = content, content_hit
        done = total - self.settings.n_gen
        inverted = time.perf_counter()
        grid = next(iter(content.h.values())).shape[-2:]
        soft = mask_grid(request.mask, (grid[0], grid[1]))
        mask = torch.from_numpy(soft).to(self.device)[None, None]
        x0, change, injections = self.generate(style, content, mask, request.seed, tick("generating", self.settings.n_gen))
        image = imaging.resize_rgb(to_uint8(x0), request.size)
        width, height = request.size
        change_map = change.cpu().numpy()
        change_map = change_map / change_map.max() if change_map.max() > 0 else change_map
        maps = {
            "hspace injection mask": cv2.resize(soft, (width, height), interpolation=cv2.INTER_NEAREST),
            "hspace |h~-h|": cv2.resize(change_map.astype(np.float32), (width, height), interpolation=cv2.INTER_NEAREST),
        }
        metadata = {
            "style": "background" if len(images) == 2 else "composite",
            "inversion_cache_hits": int(content_hit) + (int(style_hit) if len(images) == 2 else 0),
            "inversion_seconds": inverted - start,
            "generation_seconds": time.perf_counter() - inverted,
            "steps": self.settings.n_gen,
            "inversion_steps": self.settings.n_inv,
            "injection_steps": injections,
            "working_size": int(self.unet().config.sample_size),
            "dtype": components.dtype_name(self.dtype),
        }
        return HarmonizationResult(image=image, maps=maps, metadata=metadata)
