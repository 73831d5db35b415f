"""Training of the `ptl` network on composites synthesized on the fly from real photos.

`python -m harmony_core train-ptl --out runs/ptl` trains with the paper's recipe (Adam 1e-3,
betas 0.9/0.999, foreground-normalized MSE with A_min 100, random resized crop + flip, 256 px,
learning rate / 10 after 6/7 of the steps as the paper's epoch 120 of 140) on the project's
training split, validates on held-out photos, and resumes from `OUT/checkpoint.pt` when rerun.
Without a checkpoint, `--init FOLDER` starts from exported weights (e.g. weights/ptl) instead of
a random network, with a fresh optimizer and step count; a folder holding another output head
(`--head`) gives everything but the head, which starts at its identity initialization.

Data parallel: under `accelerate launch --multi_gpu --num_processes N -m harmony_core train-ptl`
(or torchrun) each of the N processes takes batch_size / N consecutive samples of every global
batch, so each sample is still seen once per step; DDP averages the gradients (the mean loss over
the global batch); BatchNorm is synchronized on CUDA (on the CPU, gloo has no SyncBatchNorm, so
each process normalizes its own part). Only the main process validates, writes the curve and
checkpoints, and exports.

Determinism: sample i of the run is synthetic sample i of SyntheticComposites(train photos, seed)
(a pure function of seed and i) and batches take consecutive samples, so a run and a resumed run
see the same data; weights start from torch.manual_seed(seed). On one machine with the same
thread count the run is reproducible; across machines floating-point order may differ.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from harmony_core import atomic
from harmony_core.data import SyntheticComposites, list_photos, select_split
from harmony_core.data.synth import SPEC_TRANSFORMS, SynthConfig, TensorComposites
from harmony_core.errors import InputError
from harmony_core.evaluate import Shard, current_shard
from harmony_core.methods.classical import poisson_affine
from harmony_core.metrics import psnr_from_mse
from harmony_core.models.ptl_net import AFFINE_PARAMS, PTLConfig, PTLNet, foreground_mse_loss

CHECKPOINT = "checkpoint.pt"
CURVE_CSV = "curve.csv"
CURVE_PNG = "curve.png"
CURVE_FIELDS = ("step", "samples", "lr", "train_loss", "val_mse", "val_fmse", "val_psnr", "val_fpsnr", "seconds")


class WithPrior:
    """(composite, mask, real, prior) items: the network's global prior is computed in the
    DataLoader workers with the synthesis (zeros when the network takes none)."""

    def __init__(self, source: TensorComposites, prior: str) -> None:
        self.source, self.prior = source, prior

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        composite, mask, real = self.source[index]
        prior = torch.zeros(AFFINE_PARAMS)
        if self.prior == "poisson":
            pixels = torch.round(composite * 255).to(torch.uint8).permute(1, 2, 0).numpy()
            prior = torch.from_numpy(poisson_affine(pixels, mask[0].numpy() > 0.5))
        return composite, mask, real, prior


def datasets(data: str | Path, seed: int, length: int, val_samples: int,
             recipes: tuple[str, ...] = SPEC_TRANSFORMS) -> tuple[SyntheticComposites, SyntheticComposites]:
    """Training composites recoloured by `recipes`; the curve's held-out ones by the specification's."""
    root = Path(data)
    if not root.is_dir():
        raise InputError(f"Training data folder '{root}' not found (expected images/ and masks/ inside).")
    photos = list_photos(root / "images", root / "masks")
    train = SyntheticComposites(select_split(photos, "train"), seed=seed, length=length, size=256, augment=True,
                                config=SynthConfig(transforms=recipes))
    held_out = select_split(photos, "val")
    val = SyntheticComposites(held_out, seed=0, size=256, length=min(val_samples, len(held_out)))
    return train, val


@torch.no_grad()
def validate(model: PTLNet, loader: DataLoader, device: str) -> dict[str, float]:
    """Mean per-image MSE / fMSE (0..255, the metric protocol at 256 px) and their PSNRs."""
    model.eval()
    mse, fmse = [], []
    for composite, mask, real, prior in loader:
        composite, mask, real, prior = composite.to(device), mask.to(device), real.to(device), prior.to(device)
        # Quantize like a saved image so the curve matches `evaluate`.
        out = torch.round(model(composite, mask, prior).image.clamp(0, 1) * 255.0)
        error = (out - torch.round(real * 255.0)) ** 2
        mse += error.mean(dim=(1, 2, 3)).tolist()
        fmse += ((error * mask).sum(dim=(1, 2, 3)) / (3 * mask.sum(dim=(1, 2, 3)).clamp_min(1))).tolist()
    model.train()
    m, f = float(np.mean(mse)), float(np.mean(fmse))
    return {"val_mse": m, "val_fmse": f, "val_psnr": psnr_from_mse(m), "val_fpsnr": psnr_from_mse(f)}


def plot_curve(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["train_loss"] / 3 for r in rows], label="train loss / 3 (fMSE scale)")
    ax.plot(steps, [r["val_fmse"] for r in rows], marker="o", label="validation fMSE")
    ax.set_xlabel("step")
    ax.set_ylabel("foreground MSE (0..255)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    # The learning rate on a second axis: runs extended across sessions change it more than once.
    lr_axis = ax.twinx()
    rates = [r["lr"] for r in rows]
    lr_axis.step(steps, rates, where="pre", color="gray", linestyle=":", label="learning rate")
    lr_axis.set_yscale("log" if min(rates) > 0 else "linear")
    lr_axis.set_ylabel("learning rate")
    handles, labels = ax.get_legend_handles_labels()
    lr_handles, lr_labels = lr_axis.get_legend_handles_labels()
    ax.legend(handles + lr_handles, labels + lr_labels)
    fig.tight_layout()
    with atomic.atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)


def write_curve(rows: list[dict[str, float]], out: Path) -> None:
    with atomic.atomic_open(out / CURVE_CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    plot_curve(rows, out / CURVE_PNG)


def save_checkpoint(path: Path, model: PTLNet, optimizer: torch.optim.Optimizer, step: int,
                    rows: list[dict[str, float]], args: argparse.Namespace) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "curve": rows, "config": asdict(model.config), "args": vars(args)}
    with atomic.atomic_open(path, "wb") as handle:
        torch.save(state, handle)


def learning_rate(args: argparse.Namespace, step: int) -> float:
    return args.lr * (0.1 if step >= math.floor(args.lr_drop * args.steps) else 1.0)


def shard_indices(step: int, length: int, batch_size: int, shard: Shard) -> range | list[int]:
    """The samples this process trains on from `step` on: its batch_size / world consecutive
    samples of every global batch (all of them in a single process)."""
    if shard.world == 1:
        return range(step * batch_size, length)
    if batch_size % shard.world:
        raise InputError(f"--batch-size {batch_size} must be a multiple of the {shard.world} processes.")
    part = batch_size // shard.world
    return [first + shard.rank * part + i for first in range(step * batch_size, length, batch_size) for i in range(part)]


def all_agree(flag: bool, shard: Shard, device: str) -> bool:
    """True on every process when it is true on any (so all of them stop at the same step)."""
    if shard.world == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value)
    return bool(value.item() > 0)


def train(args: argparse.Namespace) -> Path:
    # A trained network's attention is peaked: softmax tails and their gradients become denormal
    # floats, which the CPU's matrix products handle many times slower (fine-tuning the shipped
    # weights: 1.2-1.3 s a step instead of 0.7-0.76). Flushed to zero first, so that the threads
    # torch starts later inherit the setting.
    torch.set_flush_denormal(True)
    out = Path(args.out)
    shard = current_shard()
    if shard.main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if shard.world > 1 and args.device.startswith("cuda"):
        args.device = str(shard.state.device)
    config = PTLConfig(width=args.width, ptl_write=args.ptl_write, head=args.head, prior=args.prior)
    model = PTLNet(config).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999))
    step, rows = 0, []
    checkpoint = out / CHECKPOINT
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=args.device, weights_only=False)
        if state["config"] != asdict(model.config):
            raise InputError(f"{checkpoint} was trained with {state['config']}; use another --out.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, rows = state["step"], state["curve"]
        print(f"resuming from step {step}")
    elif args.init:
        start = PTLNet.from_pretrained(args.init)
        if replace(start.config, head=config.head, prior=config.prior, correction_scale=1.0) != config:
            raise InputError(f"{args.init} holds a network with {asdict(start.config)}; match --width and --ptl-write.")
        fresh = model.load_state_dict(start.state_dict(), strict=False).missing_keys
        print(f"starting from the weights in {args.init} (fresh optimizer, step 0"
              + (f"; new head layers: {', '.join(fresh)})" if fresh else ")"))
    train_set, val_set = datasets(args.data, args.seed, args.steps * args.batch_size, args.val_samples,
                                  tuple(args.recipes.split(",")) if args.recipes else SPEC_TRANSFORMS)
    loader_options = {"batch_size": args.batch_size // shard.world, "num_workers": args.workers,
                      "persistent_workers": args.workers > 0}
    batches = DataLoader(Subset(WithPrior(train_set.torch_dataset(), config.prior),
                                shard_indices(step, len(train_set), args.batch_size, shard)), **loader_options)
    network = model
    if shard.world > 1:
        if args.device.startswith("cuda"):
            network = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        network = nn.parallel.DistributedDataParallel(network, device_ids=[torch.device(args.device).index]
                                                      if args.device.startswith("cuda") else None)
    val_loader = DataLoader(WithPrior(val_set.torch_dataset(), config.prior), batch_size=8)
    started = time.perf_counter()
    elapsed_before = rows[-1]["seconds"] if rows else 0.0
    running: list[float] = []
    model.train()
    progress = tqdm(total=args.steps, initial=step, desc="train-ptl", unit="step", disable=not shard.main)
    for composite, mask, real, prior in batches:
        composite, mask, real, prior = (t.to(args.device) for t in (composite, mask, real, prior))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args, step)
        loss = foreground_mse_loss(network(composite, mask, prior).image, real, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        running.append(loss.item())
        progress.update()
        progress.set_postfix(loss=f"{np.mean(running[-50:]):.0f}")
        out_of_time = all_agree(args.max_minutes is not None
                                and time.perf_counter() - started > 60 * args.max_minutes, shard, args.device)
        if shard.main and (step % args.val_every == 0 or step == args.steps or out_of_time):
            row = {"step": step, "samples": step * args.batch_size, "lr": learning_rate(args, step - 1),
                   "train_loss": float(np.mean(running)), **validate(model, val_loader, args.device),
                   "seconds": elapsed_before + time.perf_counter() - started}
            rows.append(row)
            running = []
            write_curve(rows, out)
            save_checkpoint(checkpoint, model, optimizer, step, rows, args)
            progress.write(f"step {step}: val fMSE {row['val_fmse']:.1f}, PSNR {row['val_psnr']:.2f}")
        if out_of_time:
            break
    progress.close()
    if shard.main and args.export:
        export(model, rows, args)
    shard.wait()
    return checkpoint


def export(model: PTLNet, rows: list[dict[str, float]], args: argparse.Namespace) -> None:
    """The shipped artifact: fp16 safetensors + config.json + the training curve and recipe."""
    folder = Path(args.export)
    model.save_pretrained(folder)
    write_curve(rows, folder)
    recipe = {key: value for key, value in vars(args).items() if key not in ("func", "export")}
    recipe["data"] = Path(args.data).name
    atomic.write_text(folder / "training.json", json.dumps({"recipe": recipe, "final": rows[-1] if rows else {}},
                                                          indent=2) + "\n")
    print(f"exported {folder}")
