"""The one gate every image a client sends passes before a handler reads it.

Gradio accepts `{"path": "/any/file"}` without its upload metadata and would open that file, so
the app takes image inputs raw (`preprocess=False`) and lets only files under the allowed roots
(Gradio's upload/cache folder, the app's own examples) through, and never a file under a denied
root (the blind study set: its manifest and stored outputs are only ever served as per-round
blind encodings). Whatever a handler hands back comes from a path that passed here, so the gate
guards the way out too. The refusal is the same whether or not the path exists: a reply never
tells what is on the server's disk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harmony_core.errors import InputError

MAX_LAYERS = 8
"""Painted layers read from one ImageEditor value (the app's editor has one)."""
NOT_AN_UPLOAD = ("The {what} was not uploaded to this server: send the image file itself (in gradio_client: "
                 "handle_file(path)), not a path on the server.")


def upload_path(payload: Any, roots: Sequence[str | os.PathLike], what: str,
                denied: Sequence[str | os.PathLike] = ()) -> Path | None:
    """The real path of an image input (a Gradio FileData dict or a path string), None when the
    input is empty; InputError when it lies outside every root or inside a denied one (symlinks,
    `..` and relative paths resolved)."""
    if payload is None or payload == "":
        return None
    raw = payload.get("path") if isinstance(payload, dict) else payload
    if not isinstance(raw, (str, os.PathLike)) or not str(raw) or "\x00" in str(raw):
        raise InputError(NOT_AN_UPLOAD.format(what=what))
    real = Path(os.path.realpath(raw))
    if (not any(real.is_relative_to(os.path.realpath(root)) for root in roots)
            or any(real.is_relative_to(os.path.realpath(root)) for root in denied)):
        raise InputError(NOT_AN_UPLOAD.format(what=what))
    return real


def editor_paths(payload: Any, roots: Sequence[str | os.PathLike],
                 denied: Sequence[str | os.PathLike] = ()) -> dict[str, Any] | None:
    """An ImageEditor value ({"background", "layers", ...}) with every image passed through the gate."""
    if not isinstance(payload, dict):
        return None
    layers = payload.get("layers") or []
    if not isinstance(layers, list):
        raise InputError(NOT_AN_UPLOAD.format(what="painted layer"))
    return {"background": upload_path(payload.get("background"), roots, "composite", denied),
            "layers": [upload_path(layer, roots, "painted layer", denied) for layer in layers[:MAX_LAYERS]]}
