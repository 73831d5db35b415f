"""DDIM math as pure functions: schedules, predicted x0, the (stochastic) DDIM step, inversion.

Everything takes explicit tensors and generators, so the three diffusion methods can mix these
pieces into their own loops (hspace's asymmetric step, freepih's optimized latents) without a
stateful scheduler object. Conventions:

- ``alphas_cumprod`` is a float64 tensor of length T (1000); ``alpha_at(ac, t)`` returns 1 for t < 0,
  the "clean image" end of the last step.
- Schedules are ascending lists of ints; ``step_pairs`` turns one into the descending (t, t_prev)
  pairs of a generation loop, the last pair ending at t_prev = -1.
- The predicted x0 is never clipped (the DDPM Hub configs say clip_sample=True; hspace must not).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]
"""eps_fn(x_t, t) -> predicted noise, same shape as x_t."""
StepCallback = Callable[[int, int, torch.Tensor], None]
"""callback(step index, timestep just processed, the new x) — to store per-step tensors or report progress."""


def linear_betas(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """The DDPM schedule (Ho et al.): betas linear in [beta_start, beta_end], float64."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """Cumulative product of (1 - beta), float64."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def alphas_cumprod_from_scheduler(scheduler: object) -> torch.Tensor:
    """A diffusers scheduler's alphas_cumprod as float64 (its betas, e.g. SD's scaled_linear, included)."""
    return scheduler.alphas_cumprod.to(torch.float64).clone()


def alphas_cumprod_from_config(config: dict | None) -> torch.Tensor:
    """alpha-bar of a checkpoint's scheduler config (diffusers' scheduler_config.json), float64.

    "linear" (the google/ddpm-* checkpoints) and "scaled_linear" (SD) are computed here in float64;
    trained betas are used as given; any other schedule goes through diffusers' DDPMScheduler.
    No config (None): the DDPM paper's linear 1e-4 .. 0.02 over 1000 steps.
    """
    config = dict(config or {})
    steps = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    schedule = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        return alphas_cumprod_from_betas(torch.tensor(config["trained_betas"], dtype=torch.float64))
    if schedule == "linear":
        return alphas_cumprod_from_betas(linear_betas(steps, start, end))
    if schedule == "scaled_linear":
        return alphas_cumprod_from_betas(torch.linspace(start ** 0.5, end ** 0.5, steps, dtype=torch.float64) ** 2)
    from diffusers import DDPMScheduler

    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
    return alphas_cumprod_from_scheduler(DDPMScheduler(**{k: config[k] for k in keep if k in config}))


def alpha_at(alphas_cumprod: torch.Tensor, t: int) -> float:
    """alpha-bar at t, and 1.0 for t < 0 (the end of the chain)."""
    return 1.0 if t < 0 else float(alphas_cumprod[t])


def evenly_spaced(n_steps: int, num_train_timesteps: int = 1000,
                  kind: Literal["linspace", "leading"] = "linspace") -> list[int]:
    """Ascending timesteps.

    "linspace": int(linspace(0, 1, n) * (T - 1)) — both ends included, 0 ... 999 (the DDIM /
    Asyrp / DiffStyle code's convention; n = T gives every timestep). "leading": k * (T // n), as
    diffusers' DDIMScheduler (0, 20, ..., 980 for 50 steps).
    """
    if not 1 <= n_steps <= num_train_timesteps:
        raise ValueError(f"n_steps must be in [1, {num_train_timesteps}], got {n_steps}")
    if kind == "linspace":
        values = np.linspace(0.0, 1.0, n_steps) * (num_train_timesteps - 1)
        steps = [int(v + 1e-9) for v in values]  # truncation as the authors', robust to 16.9999...
    elif kind == "leading":
        steps = [k * (num_train_timesteps // n_steps) for k in range(n_steps)]
    else:
        raise ValueError(f"unknown schedule kind '{kind}'")
    return sorted(set(steps))


def step_pairs(timesteps: Sequence[int]) -> list[tuple[int, int]]:
    """Descending (t, t_prev) pairs of a generation loop over ascending `timesteps`, ending at -1."""
    ascending = sorted(timesteps)
    previous = [-1] + ascending[:-1]
    return list(zip(reversed(ascending), reversed(previous)))


def noise_level_to_timestep(noise_level: float, timesteps: Sequence[int]) -> tuple[int, list[int]]:
    """SDEdit / img2img start: the last round(noise_level * n) steps of an n-step schedule.

    Returns (start timestep, the descending timesteps to denoise). Like diffusers' img2img
    `strength`, except that we round the number of kept steps (at least 1) where diffusers
    truncates (int(strength * n)); the two agree whenever noise_level * n is whole, e.g. 0.2 on
    the 50-step "leading" schedule (0, 20, ..., 980) keeps the last 10 steps 180, 160, ..., 0, so
    the latent is noised to t = 180 (181 with SD's steps_offset 1), i.e. t ~ 0.2 T.
    """
    if not 0.0 < noise_level <= 1.0:
        raise ValueError(f"noise_level must be in (0, 1], got {noise_level}")
    descending = sorted(timesteps, reverse=True)
    keep = max(1, round(noise_level * len(descending)))
    kept = descending[-keep:]
    return kept[0], kept


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_t: float) -> torch.Tensor:
    """P_t(eps) = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), not clipped."""
    return (x_t - (1.0 - alpha_t) ** 0.5 * eps) / alpha_t ** 0.5


def ddim_sigma(alpha_t: float, alpha_prev: float, eta: float) -> float:
    """DDIM's sigma_t: eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)."""
    if eta == 0.0:
        return 0.0
    return eta * ((1.0 - alpha_prev) / (1.0 - alpha_t)) ** 0.5 * (1.0 - alpha_t / alpha_prev) ** 0.5


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    alpha_t: float,
    alpha_prev: float,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    eps_direction: torch.Tensor | None = None,
    direction_scale: float = 1.0,
) -> torch.Tensor:
    """x_{t_prev} = sqrt(a_prev) P_t(eps) + direction_scale sqrt(1 - a_prev - sigma^2) eps_dir + sigma z.

    eps_direction (default: eps) lets the x0 prediction and the direction use different noise
    predictions (hspace's asymmetric step). With eta > 0 a generator is required; the noise is
    drawn on the generator's device and moved to x_t's, so a CPU generator gives the same noise
    on every device.
    """
    sigma = ddim_sigma(alpha_t, alpha_prev, eta)
    direction = eps if eps_direction is None else eps_direction
    x_prev = alpha_prev ** 0.5 * predict_x0(x_t, eps, alpha_t)
    x_prev = x_prev + direction_scale * max(1.0 - alpha_prev - sigma ** 2, 0.0) ** 0.5 * direction
    if sigma > 0.0:
        if generator is None:
            raise ValueError("a stochastic DDIM step (eta > 0) needs a seeded torch.Generator")
        noise = torch.randn(x_t.shape, generator=generator, device=generator.device, dtype=torch.float32)
        x_prev = x_prev + sigma * noise.to(device=x_t.device, dtype=x_t.dtype)
    return x_prev


def ddim_invert(
    x0: torch.Tensor,
    eps_fn: EpsFn,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Deterministic DDIM inversion (eta 0) up the ascending schedule; returns x at timesteps[-1].

    x0 is taken as the sample at timesteps[0]; each step evaluates eps at (x_t, t) and moves to the
    next timestep: x_next = sqrt(a_next) P_t(eps) + sqrt(1 - a_next) eps. `callback(i, t_next, x)`
    runs after every step; eps_fn may itself record per-step features (hspace stores h_t there).
    """
    ascending = sorted(timesteps)
    x = x0
    for i, (t, t_next) in enumerate(zip(ascending[:-1], ascending[1:])):
        eps = eps_fn(x, t)
        x = ddim_step(x, eps, alpha_at(alphas_cumprod, t), alpha_at(alphas_cumprod, t_next))
        if callback is not None:
            callback(i, t_next, x)
    return x
