"""``Engine``: a backend, the model's metadata, and ``segment`` / ``segment_structures``.

``segment`` reads validate -> plan -> run -> return: the volume is validated (runtime/volumes.py),
the options resolved against ``model_info``, the prompt turned into a plan of slices with
model-frame boxes (runtime/prompts.py, runtime/plan.py), and the plan run slab by slab through
the placement for where the volume lives (runtime/pipeline.py, runtime/placements.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from sam_unet.model_info import ModelInfo
from sam_unet.runtime.devices import resolve_device
from sam_unet.runtime.pipeline import (
    FiniteGuard,
    SegmentStats,
    StructuresStep,
    WholeModelStep,
    make_placement,
    run_plan,
)
from sam_unet.runtime.placements import Feed
from sam_unet.runtime.plan import Plan, SliceGeometry, merge_prompts
from sam_unet.runtime.prompts import check_structures, slice_prompts
from sam_unet.runtime.volumes import VolumeView, as_volume, host_array, to_caller_kind
from sam_unet.transforms import check_window


class Engine:
    """Segment whole volumes with a backend (torch, onnxruntime or tensorrt).

    Build with :meth:`from_checkpoint`, :meth:`from_onnx` or :meth:`from_engine_file`.
    """

    def __init__(self, backend: Any, *, batch_size: int | None = None,
                 source: str | None = None, picked_because: str = "",
                 model_info: ModelInfo | None = None, load_report: Any = None) -> None:
        """``model_info``: how the model must be fed (None: unknown, the generic defaults
        apply); ``load_report``: the checkpoint's ``LoadReport`` (integrity check) if any."""
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.backend = backend
        self.batch_size = int(batch_size or getattr(backend, "max_batch", 16) or 16)
        self.source = source
        self.picked_because = picked_because
        self.model_info = model_info
        self.load_report = load_report
        self.last_stats = SegmentStats()
        self._cleanup: Any = None  # weakref.finalize removing a private temporary export

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | Path, *, backend: str = "auto", device: str | None = None,
                        precision: str | None = None, batch_size: int | None = None,
                        variant: str | None = None) -> Engine:
        """Engine from a SAM-UNet checkpoint. backend: "auto", "torch" or "onnxruntime".

        The weights are checked (content hash when the file has one, finite values); the
        checkpoint's model info becomes ``engine.model_info``. "onnxruntime" runs an ONNX export
        of the weights kept in the ONNX cache (``sam_unet.export.onnx_cache``): exported once
        per checkpoint content, never left in the temporary folder.
        """
        from sam_unet.checkpoints import load_model_with_report
        from sam_unet.runtime.backends import make_backend

        device = resolve_device(device)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        model, report = load_model_with_report(path, variant=variant)
        reason = ""
        if backend == "auto":
            backend = "torch"
            reason = (f"torch on {device}: a checkpoint runs directly in PyTorch"
                      + (" (fp16 on CUDA)" if device.startswith("cuda") else " (fp32 on CPU)"))
        if backend in ("onnxruntime", "ort", "onnx"):
            engine = cls._from_model_via_onnx(model, report, device=device, precision=precision,
                                              batch_size=batch_size)
            engine.source = str(path)
            return engine
        precision = precision or ("fp16" if device.startswith("cuda") else "fp32")
        b = make_backend(backend, model=model, device=device, precision=precision,
                         max_batch=batch_size or _default_batch(device))
        return cls(b, batch_size=batch_size, source=str(path), picked_because=reason,
                   model_info=report.model_info, load_report=report)

    @classmethod
    def _from_model_via_onnx(cls, model: Any, report: Any, *, device: str,
                             precision: str | None, batch_size: int | None) -> Engine:
        """ONNX Runtime engine for a loaded checkpoint through the ONNX cache; a cached file
        that cannot be used is exported again once."""
        import weakref

        from sam_unet.export.onnx import InvalidOnnxError
        from sam_unet.export.onnx_cache import cached_export, discard
        from sam_unet.model_info import ModelMismatchError

        for attempt in (0, 1):
            entry = cached_export(model, report.model_info)
            try:
                engine = cls.from_onnx(entry.path, backend="onnxruntime", device=device,
                                       precision=precision, batch_size=batch_size,
                                       weights_sha256=entry.weights_sha256)
            except (InvalidOnnxError, ModelMismatchError):
                discard(entry)
                if attempt:
                    raise
                continue
            if entry.temp_dir is not None:
                import shutil

                engine._cleanup = weakref.finalize(engine, shutil.rmtree, str(entry.temp_dir),
                                                   True)
            engine.load_report = report
            engine.picked_because = "onnxruntime: the checkpoint's ONNX export (cached)"
            return engine
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Release the backend and remove any private temporary export (also done when the
        engine is garbage-collected or the interpreter exits)."""
        if self._cleanup is not None:
            self._cleanup()
        self.backend = None

    @classmethod
    def from_onnx(cls, path: str | Path, *, backend: str = "auto", device: str | None = None,
                  precision: str | None = None, batch_size: int | None = None,
                  variant: str | None = None, checkpoint: str | Path | None = None,
                  weights_sha256: str | None = None, force: bool = False) -> Engine:
        """Engine from an exported ONNX file: TensorRT when it is installed and a GPU is
        there (engine built and cached), else ONNX Runtime.

        The file's model metadata (``sam_unet.model_info``) becomes ``engine.model_info``. A file
        without it, or one whose metadata names another model than expected (``variant``
        differs; weights other than those of ``checkpoint`` or of ``weights_sha256``), is
        refused with ``ModelMismatchError`` (a ValueError) unless ``force``. A file ONNX cannot
        read raises ``InvalidOnnxError`` (a ValueError).
        """
        from sam_unet.model_info import check_onnx_metadata
        from sam_unet.runtime.backends import make_backend

        device = resolve_device(device)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        expected_from = "the expected weights"
        if checkpoint is not None:
            from sam_unet.checkpoints import load_model
            from sam_unet.checkpoints import weights_sha256 as model_weights_sha256

            weights_sha256 = model_weights_sha256(load_model(checkpoint, variant=variant))
            expected_from = f"checkpoint {checkpoint}"

        def checked(metadata: dict[str, str]) -> ModelInfo | None:
            return check_onnx_metadata(metadata, f"ONNX file {path}", variant=variant,
                                       weights_sha256=weights_sha256,
                                       expected_from=expected_from, force=force)

        reason = ""
        if backend == "auto":
            if device.startswith("cuda") and _tensorrt_available():
                from sam_unet.export.onnx import read_metadata
                from sam_unet.export.tensorrt import build_engine_cached

                info = checked(read_metadata(path))  # before a build of minutes
                engine_path = build_engine_cached(path)
                from sam_unet.export.tensorrt_split import build_split_engines

                build_split_engines(path, engine_path)  # found beside it by the backend
                return cls.from_engine_file(engine_path, device=device, batch_size=batch_size,
                                            model_info=info)
            backend = "onnxruntime"
            reason = ("onnxruntime: TensorRT is not installed" if device.startswith("cuda")
                      else "onnxruntime on the CPU")
        b = make_backend(backend, onnx_path=path, device=device,
                         precision=precision or "fp32", max_batch=batch_size or
                         _default_batch(device))
        metadata = getattr(b, "metadata", None)
        if metadata is None:
            from sam_unet.export.onnx import read_metadata

            metadata = read_metadata(path)
        return cls(b, batch_size=batch_size, source=str(path), picked_because=reason,
                   model_info=checked(metadata))

    @classmethod
    def from_engine_file(cls, path: str | Path, *, device: str | None = None,
                         batch_size: int | None = None,
                         model_info: ModelInfo | None = None) -> Engine:
        """Engine from a serialised TensorRT engine (checked against this GPU and TensorRT).

        ``engine.model_info``: ``model_info`` if given, else what the engine's sidecar records
        (its own ``model_info`` entry, or the metadata of the ONNX file it was built from when
        that file is still there), else None."""
        from sam_unet.runtime.backends import make_backend

        device = resolve_device(device or "cuda")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {path}")
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        b = make_backend("tensorrt", engine_path=path, device=device, precision="fp16",
                         max_batch=batch_size or _default_batch(device))
        if model_info is None:
            model_info = _engine_model_info(path)
        return cls(b, batch_size=batch_size, source=str(path), picked_because="tensorrt engine",
                   model_info=model_info)

    def describe(self) -> str:
        """One line: backend, device, precision, batch size, and why it was picked."""
        b = self.backend
        text = (f"backend={b.name} device={b.device} precision={b.precision} "
                f"batch={self.batch_size}")
        if self.source:
            text += f" source={self.source}"
        if self.picked_because:
            text += f" ({self.picked_because})"
        return text

    # ------------------------------------------------------------------ sessions, propagation
    def session(self, volume: Any, **options: Any) -> Any:
        """An interactive :class:`~sam_unet.runtime.session.Session` on ``volume``: image
        embeddings are cached (LRU, ``cache_bytes``), so a new box on a slice seen before runs
        only the decoder. Options: axis, window, normalize, cache_bytes, batch_size."""
        from sam_unet.runtime.session import Session

        return Session(self, volume, **options)

    def propagate(self, volume: Any, slice_index: int, box: Any, *, axis: int | None = None,
                  window: Any = None, normalize: str | None = None,
                  batch_size: int | None = None, **options: Any) -> Any:
        """Follow the structure boxed on one slice through the volume -> uint8 mask of the
        volume's shape and kind. ``box``: a 2D box (x0, y0, x1, y1) (x over the first remaining
        axis, y over the second) or a 2D mask of the slice; options: margin (voxels, default 3),
        min_area (voxels, default 16), direction ("both", "forward", "backward"), lookahead.
        See :mod:`sam_unet.runtime.propagate`; ``engine.last_propagation`` is its report."""
        session = self.session(volume, axis=axis, window=window, normalize=normalize,
                               batch_size=batch_size, cache_bytes=0)
        mask = session.propagate(slice_index, box, **options)
        self.last_propagation = session.last_propagation
        return mask

    # ------------------------------------------------------------------ segmentation
    def segment(self, volume: Any, *, axis: int | None = None, window: Any = None,
                normalize: str | None = None, boxes: Any = None, box_mask: Any = None,
                batch_size: int | None = None) -> Any:
        """Segment a 3D volume slice by slice -> uint8 {0, 1} mask of the volume's shape, of the
        same array kind (NumPy, torch, CuPy) and device; a host mask is laid out in the
        volume's memory order (a Fortran-order volume gets a Fortran-order mask).

        volume: (X, Y, Z) NumPy array, torch tensor (CPU or CUDA) or CuPy array, any strides, of
            any real dtype: uint8, int16, uint16, int32, float32, float64 are read in place;
            int8, uint32, int64, uint64, float16, bfloat16, bool and byte-swapped arrays are
            converted slab by slab (never as a whole volume).
        axis: the slicing axis; window: optional (lo, hi) intensity clip; normalize:
            "slice-minmax" or "window". None (the default) takes the value from
            ``engine.model_info`` (else axis -1, no window, "slice-minmax"); a value that differs
            from the model's metadata is used but warned about (UserWarning).
        boxes: None (full-slice box), a 3D box (x0, y0, z0, x1, y1, z1) in voxels over axes
            0, 1, 2, per-slice 2D boxes (S, 4) (NaN rows skipped) or a dict {slice: box} with
            x over the first remaining axis and y over the second, or a coarse mask
            volume (also as ``box_mask``): each slice gets its largest component's box.
            A model whose metadata says prompt mode "box" needs one (ValueError otherwise).
        batch_size: slices per slab (default ``engine.batch_size``; buffers never exceed the
            slices to compute).
        ``engine.last_stats`` says what ran (slices, stage seconds, peak device memory).
        """
        view = as_volume(volume)
        feed = self._feed(view, axis, window, normalize,
                          prompted=boxes is not None or box_mask is not None)
        indices, model_boxes = slice_prompts(feed.geometry, host_array(boxes),
                                             box_mask=host_array(box_mask))
        plan = Plan(feed.geometry, indices, model_boxes[None])
        outputs = self._run(view, plan, feed, WholeModelStep, batch_size)
        return to_caller_kind(outputs["mask"], view)

    def segment_structures(self, volume: Any, structures: Any, *, axis: int | None = None,
                           window: Any = None, normalize: str | None = None,
                           batch_size: int | None = None, return_scores: bool = False) -> Any:
        """Segment several structures of one volume into a uint8 label map (0 = background).

        structures: a sequence of :class:`~sam_unet.runtime.prompts.StructurePrompt` (name,
            label 1..255, boxes / box_mask as for :meth:`segment`, in the volume's voxel frame,
            or a ``propagate`` seed: the structure is first followed from it, see
            :meth:`propagate`, then decoded with the boxes of that walk).
        A slice needed by several structures is preprocessed once; where the backend can split
        the model (``backend.can_split``) it is encoded once and decoded per structure, else the
        whole model runs per structure. Where structures overlap, the one with the higher logit
        (at slice resolution) wins; a voxel is background unless its winning logit is > 0.
        Other options as :meth:`segment`. Returns the label map (same array kind and device as
        the volume), or (labels, scores) with ``return_scores``: float32 winning logits,
        -inf on slices no structure computed.
        """
        view = as_volume(volume)
        items = check_structures(structures)
        if any(s.propagate is not None for s in items):
            from sam_unet.runtime.propagate import walked_structures

            items = walked_structures(self, volume, items, axis=axis, window=window,
                                      normalize=normalize, batch_size=batch_size)
        prompted = all(s.boxes is not None or s.box_mask is not None for s in items)
        feed = self._feed(view, axis, window, normalize, prompted=prompted,
                          scores=return_scores)
        prompts = [slice_prompts(feed.geometry, host_array(s.boxes),
                                 box_mask=host_array(s.box_mask)) for s in items]
        plan = merge_prompts(feed.geometry, prompts, tuple(int(s.label) for s in items))

        def step(backend: Any, plan: Plan, guard: FiniteGuard, stats: SegmentStats) -> Any:
            return StructuresStep(backend, plan, guard, stats, scores=return_scores)

        outputs = self._run(view, plan, feed, step, batch_size)
        labels = to_caller_kind(outputs["mask"], view)
        return (labels, to_caller_kind(outputs["scores"], view)) if return_scores else labels

    def _feed(self, view: VolumeView, axis: int | None, window: Any, normalize: str | None, *,
              prompted: bool, scores: bool = False) -> Feed:
        """Options (explicit, else the model's metadata, else the defaults) -> the Feed."""
        info = getattr(self, "model_info", None)
        axis = _option("axis", axis, info and info.axis, -1, lambda a, b: a % 3 == b % 3)
        normalize = _option("normalize", normalize, info and info.normalize, "slice-minmax")
        window = _option("window", _window_pair(window), info and info.window, None)
        win = check_window(normalize, window)
        if info is not None and info.prompt_mode == "box" and not prompted:
            raise ValueError(
                "the model was trained with structure boxes (its prompt mode is 'box'), not with "
                "full-slice boxes: give boxes (a 3D box, per-slice boxes or a box_mask)"
            )
        return Feed(SliceGeometry.of(view.shape, axis), normalize, win,
                    _images_dtype(self.backend), scores)

    def _run(self, view: VolumeView, plan: Plan, feed: Feed, make_step: Any,
             batch_size: int | None) -> dict[str, Any]:
        """validate the batch -> placement + step -> the one loop; sets ``last_stats``."""
        batch = self.batch_size if batch_size is None else batch_size
        if isinstance(batch, bool) or int(batch) != batch or int(batch) < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        placement = make_placement(view, self.backend.device, feed)
        stats, guard = SegmentStats(), FiniteGuard()
        step = make_step(self.backend, plan, guard, stats)
        outputs = run_plan(plan, placement, step, guard, int(batch), stats)
        self.last_stats = stats
        return outputs


def _option(name: str, given: Any, model: Any, default: Any, same: Any = None) -> Any:
    """``given`` if set (warning when it differs from the model's metadata), else the model's
    value, else ``default``."""
    if given is None:
        return default if model is None else model
    if model is not None and not (same(given, model) if same else given == model):
        warnings.warn(
            f"{name}={given!r} differs from the model's {name}={model!r} (how its file says it "
            f"was trained); using {name}={given!r}", UserWarning, stacklevel=4,
        )
    return given


def _window_pair(window: Any) -> tuple[float, float] | None:
    """An explicit window as (lo, hi) floats (its order is checked by check_window)."""
    if window is None:
        return None
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be two numbers (lo, hi), got {window!r}") from None
    return lo, hi


def _images_dtype(backend: Any) -> Any:
    """What the preprocess op writes for this backend: float16 for an fp16 model, else float32
    (a bf16 model gets float32 images, cast once by the backend: no double rounding)."""
    import torch

    dt = getattr(backend, "input_dtype", None)
    if dt is None:
        dt = torch.float16 if getattr(backend, "precision", "fp32") == "fp16" else torch.float32
    return torch.float16 if dt == torch.float16 else torch.float32


def _engine_model_info(engine_path: Path) -> ModelInfo | None:
    """The model info recorded for a TensorRT engine: its sidecar's "model_info" entry, else
    the metadata of the ONNX file it was built from (when still there), else None."""
    import json

    from sam_unet.model_info import ONNX_METADATA_KEY

    sidecar = engine_path.with_name(engine_path.name + ".json")
    try:
        doc = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    text = doc.get("model_info") if isinstance(doc, dict) else None
    if text is None and isinstance(doc, dict) and doc.get("onnx_path"):
        try:
            from sam_unet.export.onnx import read_metadata

            text = read_metadata(doc["onnx_path"]).get(ONNX_METADATA_KEY)
        except (OSError, ValueError):
            text = None
    if text is None:
        return None
    try:
        return ModelInfo.from_json(text) if isinstance(text, str) else ModelInfo.from_dict(text)
    except ValueError:
        return None


def _default_batch(device: str) -> int:
    return 32 if device.startswith("cuda") else 8


def _tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to import means unusable
        return False
    return True
