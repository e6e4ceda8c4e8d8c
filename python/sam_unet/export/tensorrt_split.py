"""TensorRT engines for SAM's split: one from ``NAME.encoder.onnx``, one from ``NAME.decoder.onnx``.

Built with the same builder, precision rules, profiles and timing cache as the whole model
(:func:`sam_unet.export.tensorrt_build.build_engine`), beside the whole model's engine
``X.engine`` as ``X.encoder.engine`` and ``X.decoder.engine``, each with its JSON sidecar. Each
split sidecar also records ``whole_onnx_sha256``, the hash of the whole-model ONNX file the
pair belongs to; the runtime uses the pair with ``X.engine`` only when that hash is the one
``X.engine``'s own sidecar records (``runtime.tensorrt_backend.matching_split_engines``), so a
pair left from another model is never used. ``tensorrt`` is imported only when building.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sam_unet.export.onnx_split import split_pair_for
from sam_unet.runtime.tensorrt_backend import WHOLE_ONNX_KEY, split_engine_paths

__all__ = ["build_split_engines", "split_engine_paths"]


def _tag_sidecar(engine_path: Path, whole_sha256: str) -> None:
    """Add ``whole_onnx_sha256`` to an engine's sidecar (atomically; its key is unchanged)."""
    from sam_unet.atomic import write_bytes_atomic
    from sam_unet.runtime.tensorrt_sidecar import read_sidecar, sidecar_path

    _, doc = read_sidecar(engine_path)
    if doc.get(WHOLE_ONNX_KEY) == whole_sha256:
        return
    doc[WHOLE_ONNX_KEY] = whole_sha256
    write_bytes_atomic(sidecar_path(engine_path),
                       (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def build_split_engines(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    force: bool = False,
    device: int = 0,
    **build_kwargs: Any,
) -> tuple[Path, Path] | None:
    """Build (or reuse, when their sidecars match) the encoder and decoder engines beside the
    whole model's ``engine_path`` from the split graphs beside ``onnx_path``; ``build_kwargs``
    as for the whole engine (profiles, fp16, timing_cache, ...). Returns their paths, or None
    when the ONNX file has no (current) split graphs."""
    from sam_unet.export.engine_cache import build_or_reuse
    from sam_unet.export.onnx import sha256_file

    pair, _why = split_pair_for(onnx_path)
    if pair is None:
        return None
    whole_sha = sha256_file(onnx_path)
    out = split_engine_paths(engine_path)
    for onnx_part, engine_part in zip((pair.encoder, pair.decoder), out, strict=True):
        build_or_reuse(onnx_part, engine_part, force=force, device=device, **build_kwargs)
        _tag_sidecar(engine_part, whole_sha)
    return out
