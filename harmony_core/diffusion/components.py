"""Loading diffusers / transformers parts by Hub id or local folder, into one shared cache.

Where weights come from (the policy every diffusion method follows):

- A **local folder** (any existing directory) is used as is; nothing is copied or downloaded.
- A **Hub id** (``owner/name``) is resolved from the local Hugging Face cache only
  (``snapshot_download(..., local_files_only=True)``; ``HF_HOME`` / ``HF_HUB_CACHE`` say where that
  cache is). Only when the environment variable ``HARMONY_ALLOW_DOWNLOAD=1`` is set (the Space and
  the Dockerfile set it) may missing files be downloaded, and then only the exact files the method
  loads (`harmony_core.diffusion.hub`). Tests and CI never download.
- A folder whose weights are published as fp16 variants only (``*.fp16.safetensors``, what the
  exact downloads fetch for Stable Diffusion 1.5) is loaded with ``variant="fp16"``.

Why one cache keyed by content: Stable Diffusion 1.5's VAE and DiffHarmony's ``base/vae`` are the
same weights reached through different folders; keying by a fingerprint of the files (not by path)
makes them ONE module in memory. The fingerprint never reads a whole weight file (a Hub snapshot
holds gigabytes): see `fingerprint`.
Models come back in eval mode with ``requires_grad`` False; they are shared, so callers must not
modify them (no in-place weight edits, no ``.train()``). Schedulers are small and stateful
(``set_timesteps``), so every call returns a fresh one instead of a shared instance.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from harmony_core import config
from harmony_core.types import Availability

ALLOW_DOWNLOAD_ENV = "HARMONY_ALLOW_DOWNLOAD"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
HASHED_SUFFIXES = WEIGHT_SUFFIXES + (".json", ".txt", ".model")
"""Files that define a component (weights, configs, tokenizer vocabularies); README etc. are ignored."""
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

T = TypeVar("T")

_LOCK = threading.RLock()
_MODELS: dict[tuple[str, str, str, str], Any] = {}
_FILE_KEYS: dict[tuple[str, int, int], str] = {}
SAMPLES = 16
WINDOW = 1 << 16


def downloads_allowed() -> bool:
    """True when HARMONY_ALLOW_DOWNLOAD=1 lets a missing Hub snapshot be fetched."""
    return config.current().allow_download


def is_hub_id(source: str) -> bool:
    """An ``owner/name`` string that is not an existing path."""
    return bool(_HUB_ID.match(source)) and not Path(source).expanduser().exists()


def resolve(source: str | os.PathLike, allow_patterns: Sequence[str] | None = None,
            method: str | None = None) -> Path:
    """The local folder holding `source` (a folder, or a Hub id from the cache / a permitted download).

    `allow_patterns`: the exact files to fetch when downloads are allowed and the cache lacks any of
    them (a method's `hub_files`); without it nothing is ever downloaded, so no call can pull a
    whole repository (.ckpt, non-EMA and safety-checker files included). With downloads off, a
    cached snapshot is returned as it is and the caller's required files decide. `method` names the method in the
    "how to fetch" message. Raises FileNotFoundError saying what is missing and how to provide it.
    """
    from harmony_core.diffusion import hub

    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if not is_hub_id(text):
        raise FileNotFoundError(f"folder '{text}' does not exist (and it is not a Hub id of the form owner/name)")
    files = tuple(allow_patterns or ())
    cached = _cached_snapshot(text)
    if cached is not None and (not downloads_allowed() or all((cached / name).exists() for name in files)):
        return cached  # a cache made otherwise (e.g. plain instead of fp16 files) is used as it is
    if downloads_allowed() and files:
        try:
            return hub.fetch(text, files)
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f"could not download '{text}' from the Hub ({type(exc).__name__}: {exc})") from exc
    raise FileNotFoundError(f"'{text}' is not in the local Hugging Face cache and downloads are off; "
                            f"{hub.fetch_hint(text, files, method)}, or pass a local folder instead")


def _missing(folder: Path, requirement: str) -> bool:
    """True when no alternative of `requirement` ('a/config.json' or 'a/*.safetensors|a/*.bin') exists."""
    for pattern in requirement.split("|"):
        if any(ch in pattern for ch in "*?["):
            parent = (folder / pattern).parent
            if parent.is_dir() and any(fnmatch.fnmatch(p.name, Path(pattern).name) for p in parent.iterdir()):
                return False
        elif (folder / pattern).exists():
            return False
    return True


def check(source: str | os.PathLike | None, required: Sequence[str], how_to_set: str,
          files: Sequence[str] = (), method: str | None = None) -> Availability:
    """Can `source` be loaded here? Never downloads; the reason says exactly what to do.

    required: paths relative to the folder; '|' separates alternatives, globs are allowed, e.g.
    ``("unet/config.json", "unet/*.safetensors|unet/*.bin")``. how_to_set: where the user sets the
    source (e.g. "the env var HARMONY_HSPACE_WEIGHTS or the `weights` argument"). files / method:
    the exact Hub files the method loads and its name (what a permitted download would fetch).
    """
    if source is None or not os.fspath(source).strip():
        return Availability(False, f"no weights configured; set {how_to_set} to a local folder or Hub id")
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        folder = path
    elif is_hub_id(text):
        cached = _cached_snapshot(text)
        complete = cached is not None and all((cached / name).exists() for name in files)
        if not complete and downloads_allowed() and files:
            return Availability(True, f"'{text}' will be downloaded from the Hub on first use "
                                      f"({ALLOW_DOWNLOAD_ENV}=1; {len(files)} files)")
        try:
            folder = resolve(text, files, method)
        except FileNotFoundError as exc:
            return Availability(False, f"{exc}; {how_to_set} chooses another source")
    else:
        return Availability(False, f"folder '{text}' does not exist; set {how_to_set} to an existing folder or a Hub id")
    missing = [r for r in required if _missing(folder, r)]
    if missing:
        return Availability(False, f"'{folder}' lacks {', '.join(missing)}; put the complete weights there "
                                   f"or set {how_to_set} to a folder that has them")
    return Availability(True)


def matching_files(folder: Path, required: Sequence[str]) -> list[Path]:
    """The files of `folder` that the requirements name (every alternative, globs expanded)."""
    found: list[Path] = []
    for requirement in required:
        for pattern in requirement.split("|"):
            parent = (folder / pattern).parent
            if parent.is_dir():
                found += sorted(p for p in parent.iterdir() if p.is_file() and fnmatch.fnmatch(p.name, Path(pattern).name))
    return list(dict.fromkeys(found))


MAX_HEADER_BYTES = 100_000_000
"""safetensors' own limit on the JSON header."""


def safetensors_problem(path: Path, label: str | None = None) -> str | None:
    """Why a .safetensors file cannot be loaded, judged from its header alone (a few KB read), or
    None: the 8-byte header length, the JSON header, and tensors that end where the file ends.
    label: how the reason names the file (default: its name)."""
    label = label or path.name
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or length > min(size - 8, MAX_HEADER_BYTES):
            return f"{label} is cut short or is not a safetensors file ({size} bytes)"
        try:
            header = json.loads(handle.read(length))
            ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return f"{label} has an unreadable header (not a safetensors file)"
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        return f"{label} is cut short: its header describes {needed} bytes, the file has {size}"
    return None


def read_config(path: Path) -> dict[str, Any]:
    """A JSON config as a dict; ValueError in words when it is not one."""
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path.name} is not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return config


def files_problem(folder: Path, required: Sequence[str]) -> str | None:
    """Why the required files in `folder` cannot be loaded, from what can be read without loading
    them (configs parse as JSON objects, safetensors headers fit their files), or None."""
    for path in matching_files(folder, required):
        label = path.relative_to(folder).as_posix()
        if path.suffix == ".json":
            try:
                read_config(path)
            except ValueError as exc:
                return f"{label}: {exc}"
        elif path.suffix == ".safetensors":
            problem = safetensors_problem(path, label)
            if problem:
                return problem
    return None


def config_problem(folder: Path, config: str, class_name: str, fields: dict[str, Any] | None = None) -> str | None:
    """Why `folder/config` is not the config of a `class_name` (diffusers / transformers name the
    class in it) with the given field values, or None."""
    path = folder / config
    try:
        values = read_config(path)
    except ValueError as exc:
        return f"{config}: {exc}"
    named = values.get("_class_name") or next(iter(values.get("architectures") or []), None)
    if named is not None and named != class_name:
        return f"{config} describes a {named}, not the {class_name} this method needs"
    for key, expected in (fields or {}).items():
        if values.get(key) != expected:
            return f"{config} has {key} = {values.get(key)!r}, not {expected!r}"
    return None


def _cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot of `repo_id`, or None (never downloads, even when downloads are allowed)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def configured_source(explicit: str | os.PathLike | None, env: str) -> str | None:
    """The weights a method is pointed at: `explicit` (its argument / set_weights), else $env, else None.

    One rule for every diffusion method, so the API, the CLI and the env vars agree; blank means unset.
    """
    for candidate in (explicit, config.current().weights.get(env)):
        text = os.fspath(candidate).strip() if candidate is not None else ""
        if text:
            return text
    return None


def default_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp16 on CUDA (half the memory, tensor cores), fp32 on the CPU (fp16 matmuls are slow or missing there)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """"float16" for torch.float16: how settings and reports name a dtype."""
    return str(dtype).removeprefix("torch.")


def encode_prompts(tokenizer: Any, text_encoder: Any, prompts: Sequence[str]) -> torch.Tensor:
    """CLIP's last hidden states of the prompts, padded to the tokenizer's length: SD-1.5's text
    conditioning (an empty prompt is encoded too, never replaced by zeros). no_grad, not
    inference_mode: FreePIH back-propagates through cross-attention that reads these states."""
    tokens = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    with torch.no_grad():
        return text_encoder(tokens.input_ids.to(text_encoder.device))[0]


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work, so stage timings measure the work and not the launch (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _file_key(path: Path) -> str:
    """What identifies one file's content without reading it whole.

    A file in a Hugging Face cache is a link to ``blobs/<etag>``, and a weight file's etag is the
    sha256 of its content: that name is the key, nothing is read. Any other file: its size and
    the sha256 of `SAMPLES` evenly spaced windows of `WINDOW` bytes (the whole file when it is
    that small), memoized by (real path, size, mtime_ns). Identical files in two folders share a
    key; a same-sized file that differs only between the windows would not be told apart, which
    weight files written by training never are (every tensor changes).
    """
    real = path.resolve()
    if real.parent.name == "blobs" and real.name != path.name:
        return f"etag:{real.name}"
    stat = real.stat()
    memo = (str(real), stat.st_size, stat.st_mtime_ns)
    with _LOCK:
        if memo in _FILE_KEYS:
            return _FILE_KEYS[memo]
    digest = hashlib.sha256()
    with open(real, "rb") as handle:
        if stat.st_size <= SAMPLES * WINDOW:
            digest.update(handle.read())
        else:
            for i in range(SAMPLES):
                handle.seek((stat.st_size - WINDOW) * i // (SAMPLES - 1))
                digest.update(handle.read(WINDOW))
    key = f"{stat.st_size}:{digest.hexdigest()}"
    with _LOCK:
        _FILE_KEYS[memo] = key
    return key


def fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over the (name, `_file_key`) of the folder's weight/config files (not recursive);
    reads at most SAMPLES x WINDOW bytes of each file, nothing of a Hub cache's weights."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in HASHED_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"'{folder}' holds no weight or config files")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{_file_key(path)}\n".encode())
    return digest.hexdigest()


def weights_variant(folder: Path) -> str | None:
    """"fp16" when the folder's weights are published as fp16 variants only (what the exact Hub
    downloads fetch for Stable Diffusion 1.5), else None (the plain files)."""
    if not folder.is_dir():
        return None
    names = [p.name for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    plain = [n for n in names if n.count(".") == 1]
    return "fp16" if not plain and any(n.endswith(".fp16.safetensors") for n in names) else None


def _is_scheduler(cls: type) -> bool:
    from diffusers import SchedulerMixin

    return issubclass(cls, SchedulerMixin)


def load(cls: type[T], source: str | os.PathLike, subfolder: str | None = None,
         dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> T:
    """The shared instance of `cls` loaded from `source`/`subfolder` (see the module docstring).

    Works for diffusers models (UNet2DModel, UNet2DConditionModel, AutoencoderKL), transformers
    models and tokenizers (CLIPTextModel, CLIPTokenizer) and schedulers (a fresh one every call).
    dtype / device default to `default_dtype(device)` / `default_device()`.
    """
    folder = resolve(source)
    if _is_scheduler(cls):
        return cls.from_pretrained(folder, subfolder=subfolder)
    device = torch.device(device or default_device())
    dtype = dtype or default_dtype(device)
    part = folder / subfolder if subfolder else folder
    key = (f"{cls.__module__}.{cls.__qualname__}", fingerprint(part), str(dtype), str(device))
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
        obj = _from_pretrained(cls, folder, subfolder, dtype)
        if isinstance(obj, torch.nn.Module):
            obj = obj.to(device).eval().requires_grad_(False)
        _MODELS[key] = obj
        return obj


def _from_pretrained(cls: type, folder: Path, subfolder: str | None, dtype: torch.dtype) -> Any:
    kwargs: dict[str, Any] = {"local_files_only": True}
    if subfolder:
        kwargs["subfolder"] = subfolder
    if issubclass(cls, torch.nn.Module):
        variant = weights_variant(folder / subfolder if subfolder else folder)
        if variant:
            kwargs["variant"] = variant
        from diffusers import ModelMixin

        # diffusers names the argument torch_dtype, transformers 5 names it dtype.
        kwargs["torch_dtype" if issubclass(cls, ModelMixin) else "dtype"] = dtype
    return cls.from_pretrained(folder, **kwargs)


def release(model: Any) -> int:
    """Evict `model` from the cache (a loaded part, or a dataclass of parts: every field that the
    cache holds), so that its memory goes once the method that loaded it drops it too; a part
    another method still holds stays in that method. Returns the number of entries evicted."""
    parts = [getattr(model, f.name) for f in dataclasses.fields(model)] if dataclasses.is_dataclass(model) else [model]
    held = {id(part) for part in parts}
    with _LOCK:
        stale = [key for key, value in _MODELS.items() if id(value) in held]
        for key in stale:
            del _MODELS[key]
    return len(stale)


def cache_size() -> int:
    """Test support: number of shared models and tokenizers held (the tests check sharing with it)."""
    with _LOCK:
        return len(_MODELS)


def clear_cache() -> None:
    """Test support: drop every shared model, so the next `load` reads the files again (the
    library never calls it; tests use it between cases)."""
    with _LOCK:
        _MODELS.clear()
