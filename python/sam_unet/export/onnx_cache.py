"""ONNX exports of in-memory models, kept in a bounded on-disk cache.

``Engine.from_checkpoint(..., backend="onnxruntime")`` needs an ONNX file for the checkpoint's
weights. Exporting takes seconds to a minute, so the file is kept under
``$SAM_UNET_ONNX_CACHE`` (else ``$XDG_CACHE_HOME/sam_unet/onnx``, else
``~/.cache/sam_unet/onnx``), named by a key over the weights' identity
(``checkpoints.weights_sha256``), the model info and the sam_unet version: the same weights map
to the same file and are exported once. The folder is kept under ``$SAM_UNET_ONNX_CACHE_MAX_MB``
(default 4096 MB) by removing the least recently used files. Where the cache folder cannot be
written, the export goes to a private temporary folder that the caller removes
(:class:`CachedOnnx` says which).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "SAM_UNET_ONNX_CACHE"
MAX_MB_ENV = "SAM_UNET_ONNX_CACHE_MAX_MB"
DEFAULT_MAX_MB = 4096
_RECENT_S = 120.0  # files used this recently are never pruned (another process may be loading)


@dataclass(frozen=True)
class CachedOnnx:
    """``path``: the ONNX file; ``weights_sha256``: the identity recorded in it; ``temp_dir``:
    a private temporary folder holding it that the caller must remove (None: the cache owns
    the file)."""

    path: Path
    weights_sha256: str
    temp_dir: Path | None = None


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sam_unet" / "onnx"


def max_cache_bytes() -> int:
    text = os.environ.get(MAX_MB_ENV)
    try:
        mb = float(text) if text else DEFAULT_MAX_MB
    except ValueError:
        raise ValueError(f"${MAX_MB_ENV}={text!r}: expected a number of megabytes") from None
    return int(mb * 1e6)


def cache_key(weights_sha256: str, model_info) -> str:
    from sam_unet import __version__

    text = "\n".join([weights_sha256, model_info.to_json() if model_info else "", __version__])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def prune(root: Path, *, max_bytes: int, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used ``*.onnx`` files of ``root`` until the folder holds at
    most ``max_bytes`` of them; ``keep`` and recently used files stay. Returns those removed."""
    now = time.time()
    files = []
    for p in root.glob("*.onnx"):
        try:
            st = p.stat()
        except OSError:  # removed meanwhile by another process
            continue
        files.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in files)
    removed = []
    for mtime, size, p in sorted(files):
        if total <= max_bytes:
            break
        if (keep is not None and p == keep) or now - mtime < _RECENT_S:
            continue
        try:
            p.unlink()
        except OSError:
            continue
        total -= size
        removed.append(p)
    return removed


def cached_export(model, model_info=None, *, root: str | os.PathLike | None = None) -> CachedOnnx:
    """The ONNX file of ``model`` (a SamUNet) with ``model_info`` in its metadata: from the
    cache when it is there, else exported into it (or into a private temporary folder when the
    cache folder cannot be written)."""
    from sam_unet.checkpoints import weights_sha256
    from sam_unet.export.onnx import export_onnx

    identity = weights_sha256(model)
    folder = Path(root) if root is not None else cache_dir()
    variant = str(getattr(model, "variant", None) or "custom")
    path = folder / f"sam_unet-{variant}-{cache_key(identity, model_info)}.onnx"
    if path.is_file():
        try:
            os.utime(path)  # least recently used order
        except OSError:
            pass
        _ensure_split(model, path)
        return CachedOnnx(path, identity)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        export_onnx(model, path, model_info=model_info)
    except OSError:  # read-only or not ours: a private temporary folder instead
        tmp = Path(tempfile.mkdtemp(prefix="sam_unet_onnx_"))
        try:
            export_onnx(model, tmp / "model.onnx", model_info=model_info)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _ensure_split(model, tmp / "model.onnx")
        return CachedOnnx(tmp / "model.onnx", identity, temp_dir=tmp)
    _ensure_split(model, path)
    prune(folder, max_bytes=max_cache_bytes(), keep=path)
    return CachedOnnx(path, identity)


def _ensure_split(model, path: Path) -> None:
    """The encoder/decoder graphs beside ``path`` (SAM's deployment split: sessions and
    propagation run the encoder once per slice). Best effort: without them, the backend runs
    whole-model passes, which give the same masks."""
    from sam_unet.export.onnx_split import export_split_onnx, split_pair_for

    if split_pair_for(path)[0] is not None:
        return
    try:
        export_split_onnx(model, path)
    except Exception:  # noqa: BLE001 - an optional speed-up; the whole model still serves
        return


def discard(entry: CachedOnnx) -> None:
    """Remove a cached file that turned out unusable (it is exported again next time)."""
    from sam_unet.export.onnx_split import split_paths

    if entry.temp_dir is not None:
        shutil.rmtree(entry.temp_dir, ignore_errors=True)
    else:
        for p in (entry.path, *split_paths(entry.path)):
            p.unlink(missing_ok=True)


__all__ = ["CACHE_ENV", "MAX_MB_ENV", "CachedOnnx", "cache_dir", "cache_key", "cached_export",
           "discard", "max_cache_bytes", "prune"]
