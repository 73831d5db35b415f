"""Exact Hub downloads: each method's list of the files it loads, and the one function that fetches them.

A method that loads from a Hub repo declares `hub_files` (the paths, relative to the repo, that
its loading code reads) next to its `default_weights`. That one list is used three ways, so they
cannot drift apart:

- the Space card's `preload_from_hub` (`preload_entries`; a test compares it with README.md),
- `fetch` — what `components.resolve` downloads when HARMONY_ALLOW_DOWNLOAD=1 and what
  `python -m harmony_core fetch-weights METHOD` runs,
- the "how to fetch" message (`fetch_hint`).

Nothing else of a repo is ever fetched: Stable Diffusion 1.5's repo also holds .ckpt files, non-EMA
and fp32 copies and the safety checker, about 47 GB in all; the list takes its fp16 safetensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath


def fetch(repo_id: str, files: Sequence[str], revision: str | None = None) -> Path:
    """Download exactly `files` of `repo_id` into the Hugging Face cache; returns the snapshot folder.

    The repo's listing is read first, so a file the repo does not publish is named before anything
    is downloaded (ValueError). Files already in the cache are not fetched again.
    """
    import huggingface_hub

    if not files:
        raise ValueError(f"no file list for '{repo_id}': nothing to download")
    published = set(huggingface_hub.list_repo_files(repo_id, revision=revision))
    absent = [name for name in files if name not in published]
    if absent:
        raise ValueError(f"'{repo_id}' does not publish {', '.join(absent)}")
    paths = [Path(huggingface_hub.hf_hub_download(repo_id, name, revision=revision)) for name in files]
    return paths[0].parents[len(PurePosixPath(files[0]).parts) - 1]


def fetch_hint(repo_id: str, files: Sequence[str], method: str | None = None) -> str:
    """How a user gets exactly these files by hand (quoted when the cache lacks them)."""
    from harmony_core.diffusion.components import ALLOW_DOWNLOAD_ENV

    if not files:
        return (f"download '{repo_id}' (`hf download {repo_id} --local-dir DIR`) on a machine with internet "
                f"and point the method at DIR")
    command = f"python -m harmony_core fetch-weights {method}" if method else f"hf download {repo_id} {' '.join(files)}"
    return (f"run `{command}` on a machine with internet (it fetches only the {len(files)} files the method "
            f"loads), or set {ALLOW_DOWNLOAD_ENV}=1 to let the studio download them")


def method_files() -> dict[str, tuple[str, tuple[str, ...]]]:
    """{method name: (default Hub repo, the files it loads)} for every registered method that
    loads from the Hub, by name (the card lists them in that order)."""
    from harmony_core.registry import method_class, weighted_methods

    classes = {name: method_class(name) for name in sorted(weighted_methods())}
    return {name: (cls.default_weights, tuple(cls.hub_files))
            for name, cls in classes.items() if cls.hub_files and cls.default_weights}


def preload_entries() -> list[str]:
    """The Space card's `preload_from_hub` items: "repo file1,file2,..." per method."""
    return [f"{repo} {','.join(files)}" for repo, files in method_files().values()]
