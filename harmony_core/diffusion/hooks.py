"""Capture intermediate module outputs by name with forward hooks that are always removed.

freepih reads the SD UNet's cross-attention transformer outputs (up blocks) and the VAE encoder's
down-block outputs inside an L-BFGS closure, so features stay differentiable by default (no
detach). The hooks are removed when the block exits, also after an exception, so a failed run never
leaves a shared model (components.load returns shared instances) with stray hooks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch


def _first_tensor(output: Any) -> torch.Tensor:
    """Modules return tensors, tuples or output dataclasses; the first tensor is the feature map."""
    if torch.is_tensor(output):
        return output
    if isinstance(output, (tuple, list)):
        return _first_tensor(output[0])
    sample = getattr(output, "sample", None)
    if torch.is_tensor(sample):
        return sample
    raise TypeError(f"cannot find a tensor in a {type(output).__name__} output")


@contextmanager
def capture(model: torch.nn.Module, names: Sequence[str], detach: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, `features[name]` is the latest output of each named submodule.

    Names are exact `named_modules()` names; an unknown name raises
    KeyError listing close ones before any hook is attached. A module called several times keeps
    its last output.
    """
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        prefix = unknown[0].split(".")[0]
        near = [n for n in modules if n.startswith(prefix)][:8]
        raise KeyError(f"no submodule named {unknown}; e.g. {near}")
    features: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            def hook(_module: torch.nn.Module, _inputs: Any, output: Any, name: str = name) -> None:
                tensor = _first_tensor(output)
                features[name] = tensor.detach() if detach else tensor

            handles.append(modules[name].register_forward_hook(hook))
        yield features
    finally:
        for handle in handles:
            handle.remove()
