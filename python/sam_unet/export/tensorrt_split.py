"""TensorRT engines for SAM's split: one from ``NAME.encoder.onnx``, one from ``NAME.decoder.onnx``.

Built with the same builder, precision rules, profiles and caches as the whole model
(:func:`sam_unet.export.tensorrt.build_engine`); the engines sit beside the whole model's
``X.engine`` as ``X.encoder.engine`` and ``X.decoder.engine`` (each with its JSON sidecar), or in
the engine cache keyed by their ONNX hash. ``tensorrt`` is imported only when building.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sam_unet.export.onnx_split import split_pair_for


def split_engine_paths(engine_path: str | os.PathLike) -> tuple[Path, Path]:
    """(``X.encoder.engine``, ``X.decoder.engine``) beside ``X.engine``."""
    p = Path(engine_path)
    stem = p.name[: -len(".engine")] if p.name.endswith(".engine") else p.name
    return p.with_name(f"{stem}.encoder.engine"), p.with_name(f"{stem}.decoder.engine")


def existing_split_engines(engine_path: str | os.PathLike) -> tuple[Path, Path] | None:
    """The split engines beside ``engine_path`` when both are there (with sidecars)."""
    from sam_unet.export.tensorrt import sidecar_path

    pair = split_engine_paths(engine_path)
    if all(p.is_file() and sidecar_path(p).is_file() for p in pair):
        return pair
    return None


def build_split_engines(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    force: bool = False,
    device: int = 0,
    **build_kwargs: Any,
) -> tuple[Path, Path] | None:
    """Build (or reuse, when their sidecars match) the encoder and decoder engines beside
    ``engine_path`` from the split graphs beside ``onnx_path``. Returns their paths, or None
    when the ONNX file has no (current) split graphs."""
    from sam_unet.export.tensorrt import build_or_reuse

    pair, _why = split_pair_for(onnx_path)
    if pair is None:
        return None
    enc_engine, dec_engine = split_engine_paths(engine_path)
    build_or_reuse(pair.encoder, enc_engine, force=force, device=device, **build_kwargs)
    build_or_reuse(pair.decoder, dec_engine, force=force, device=device, **build_kwargs)
    return enc_engine, dec_engine


def build_split_engines_cached(
    onnx_path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    device: int = 0,
    **build_kwargs: Any,
) -> tuple[Path, Path] | None:
    """The encoder and decoder engines for ``onnx_path``'s split graphs from the engine cache,
    built on first use; None when the file has no (current) split graphs."""
    from sam_unet.export.tensorrt import build_engine_cached

    pair, _why = split_pair_for(onnx_path)
    if pair is None:
        return None
    return (
        build_engine_cached(pair.encoder, cache_dir=cache_dir, device=device, **build_kwargs),
        build_engine_cached(pair.decoder, cache_dir=cache_dir, device=device, **build_kwargs),
    )
