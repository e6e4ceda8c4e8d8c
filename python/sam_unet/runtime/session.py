"""An interactive session on one volume: image embeddings kept, so a new box costs a decoder pass.

``session = engine.session(volume)`` validates the volume once and fixes the slicing axis and
intensity normalisation (from the engine's model info unless given). ``session.predict(k, box)``
encodes slice ``k`` the first time it is asked for (``backend.encode``: the ViT, the ResNet
branch, the bridges and the neck) and keeps its image embedding and multi-scale features in a
least-recently-used cache bounded by ``cache_bytes``; every later box on that slice runs only the
decoder (``backend.decode``). ``session.propagate`` (:mod:`sam_unet.runtime.propagate`) follows a
structure through the volume from one box, reusing and filling the same cache.

Backends that cannot split (``backend.can_split`` false: an ONNX file without its encoder and
decoder graphs, a TensorRT whole-model engine alone) still work: every prediction is then a full
pass (``backend.run``) and nothing is cached.

Frames: a slice ``k`` along ``axis`` is the 2D array whose first axis is the first
remaining volume axis; a 2D box ``(x0, y0, x1, y1)`` has x over that first remaining axis and y
over the second, inclusive voxel corners (axial slices of an (X, Y, Z) volume: x over axis 0,
y over axis 1). Masks come back in the same frame, as arrays of the volume's kind.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam_unet.runtime.plan import SliceGeometry
from sam_unet.runtime.volumes import as_volume, to_caller_kind

DEFAULT_CACHE_BYTES = 512 * 2**20


@dataclass
class SessionStats:
    """Counters since the session was made: backend encode calls and the slices they encoded,
    decode calls (or whole-model runs on a backend that cannot split), cache hits, evictions,
    and seconds spent in each stage."""

    encoder_calls: int = 0
    encoded_slices: int = 0
    decoder_calls: int = 0
    full_runs: int = 0
    cache_hits: int = 0
    evictions: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {
        "preprocess": 0.0, "encode": 0.0, "decode": 0.0, "postprocess": 0.0})

    def add_time(self, stage: str, t0: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


class EmbeddingCache:
    """Per-slice (image embedding, features) pairs, least recently used out once the stored
    bytes exceed ``max_bytes`` (0: nothing is kept)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._items: OrderedDict[int, tuple[Any, Any]] = OrderedDict()

    @staticmethod
    def nbytes(entry: tuple[Any, Any]) -> int:
        return sum(t.numel() * t.element_size() for t in entry)

    def __contains__(self, k: int) -> bool:
        return k in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[int]:
        """Cached slice indices, least recently used first."""
        return list(self._items)

    def get(self, k: int) -> tuple[Any, Any] | None:
        entry = self._items.get(k)
        if entry is not None:
            self._items.move_to_end(k)
        return entry

    def put(self, k: int, entry: tuple[Any, Any]) -> int:
        """Store ``entry`` for slice ``k``; returns how many entries were evicted."""
        size = self.nbytes(entry)
        if size > self.max_bytes:
            return 0
        if k in self._items:
            self.bytes -= self.nbytes(self._items.pop(k))
        self._items[k] = entry
        self.bytes += size
        evicted = 0
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= self.nbytes(old)
            evicted += 1
        return evicted

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


def _check_finite(logits: Any) -> None:
    from sam_unet.runtime.pipeline import FiniteGuard

    guard = FiniteGuard()
    guard.check(logits)
    guard.finish()


class Session:
    """Segment slices of one volume interactively (see the module docstring).

    engine: a :class:`~sam_unet.runtime.engine.Engine` (its backend does the work).
    volume: (X, Y, Z) NumPy array, torch tensor or CuPy array of a real numeric dtype; it is read,
        never written, and must not change while the session lives.
    axis, window, normalize: as for ``Engine.segment``; None takes them from the engine's model
        info (else axis -1, no window, "slice-minmax").
    cache_bytes: bound on the cached embeddings (default 512 MiB; per slice: 768 KiB for the
        res34/res50 variants in float32, 192 KiB for tiny; half in fp16 on a GPU).
    batch_size: most slices per encoder call (default the engine's batch size).
    """

    def __init__(self, engine: Any, volume: Any, *, axis: int | None = None,
                 window: Sequence[float] | None = None, normalize: str | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, batch_size: int | None = None) -> None:
        self.engine = engine
        self.backend = engine.backend
        self.model_info = getattr(engine, "model_info", None)
        self.view = as_volume(volume)
        # The options exactly as Engine.segment resolves them (explicit, else the model's
        # metadata, else the defaults; a value that differs from the metadata is warned about).
        feed = engine._feed(self.view, axis, window, normalize, prompted=True)
        self.geometry: SliceGeometry = feed.geometry
        self.axis = self.geometry.axis
        self.normalize = feed.mode
        self.window = feed.window
        self.images_dtype = feed.images_dtype
        self.batch_size = int(batch_size or engine.batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.cache = EmbeddingCache(cache_bytes)
        self.stats = SessionStats()
        self.can_split = bool(getattr(self.backend, "can_split", False))
        self.on_device = self.view.on_cuda
        if self.on_device and not self.backend.device.startswith("cuda"):
            raise ValueError(
                f"the volume is on {self.view.device} but the engine runs on the CPU; move the "
                "volume to the host (.cpu()) or build the engine with device='cuda'"
            )
        self.last_propagation: Any = None

    # ------------------------------------------------------------------ geometry and prompts
    @property
    def n_slices(self) -> int:
        return self.geometry.n_slices

    @property
    def slice_shape(self) -> tuple[int, int]:
        """(size along the first remaining axis, size along the second): a 2D mask's shape."""
        return self.geometry.height, self.geometry.width

    def check_slice(self, k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"slice index must be an integer, got {k!r}")
        if not 0 <= int(k) < self.n_slices:
            raise ValueError(f"slice {k} is outside the volume: axis {self.axis} has "
                             f"{self.n_slices} slices (0..{self.n_slices - 1})")
        return int(k)

    def check_box(self, box: Any, k: int) -> np.ndarray:
        """A 2D box (x0, y0, x1, y1) in the slice frame, validated -> float64 (4,)."""
        b = np.asarray(box, dtype=np.float64).reshape(-1)
        h, w = self.slice_shape
        if b.shape != (4,):
            raise ValueError(f"box for slice {k} must have 4 numbers (x0, y0, x1, y1), got "
                             f"{b.size}")
        if not np.all(np.isfinite(b)):
            raise ValueError(f"box for slice {k} is not finite: {b.tolist()}")
        if b[2] < b[0] or b[3] < b[1]:
            raise ValueError(f"box for slice {k} has x1 < x0 or y1 < y0: {b.tolist()}")
        if b[0] < 0 or b[1] < 0 or b[2] > h - 1 or b[3] > w - 1:
            raise ValueError(f"box for slice {k} {b.tolist()} lies outside the slice (x in "
                             f"[0, {h - 1}], y in [0, {w - 1}])")
        return b

    def model_box(self, box: np.ndarray | None) -> np.ndarray:
        """Slice-frame box (or None: the full slice) -> float32 (4,) in the model's 256 frame."""
        if box is None:
            return self.geometry.full_slice_box()
        return np.asarray(self.geometry.to_model_frame(box)[0], dtype=np.float32)

    # ------------------------------------------------------------------ images and embeddings
    def _torch_images(self, n: int) -> Any:
        import torch

        device = self.view.device if self.on_device else "cpu"
        return torch.empty((n, 3, 256, 256), dtype=self.images_dtype, device=device)

    def images(self, indices: Sequence[int]) -> Any:
        """Preprocessed images (n, 3, 256, 256) of the given slices, in that order (torch, on
        the volume's device)."""
        from sam_unet import ops
        from sam_unet.runtime import slab_io

        t0 = time.perf_counter()
        idx = np.asarray([int(k) for k in indices], dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]  # contiguous ascending runs are preprocessed in one call each
        buf = self._torch_images(len(idx))
        target = buf if self.on_device else buf.numpy()
        vol = self.view.array
        natively = slab_io.reads_natively(vol)
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        for run in np.split(np.arange(len(ordered)), breaks):
            if not len(run):
                continue
            off, n, start = int(run[0]), len(run), int(ordered[run[0]])
            dst = target[off:off + n]
            if natively:
                ops.preprocess(vol, dst, z0=start, n=n, axis=self.axis, mode=self.normalize,
                               window=self.window)
            else:  # a dtype the native op cannot read: convert this run only
                ops.preprocess(self._converted_slab(start, n), dst, z0=0, n=n, axis=0,
                               mode=self.normalize, window=self.window)
        if np.any(order != np.arange(len(idx))):
            import torch

            # request j sits at sorted position argsort(order)[j]
            buf = buf[torch.from_numpy(np.argsort(order)).to(buf.device)]
        self.stats.add_time("preprocess", t0)
        return buf

    def _converted_slab(self, start: int, n: int) -> Any:
        from sam_unet.runtime import slab_io

        g = self.geometry
        dtype = slab_io.convert_dtype(self.view.array.dtype)
        if self.on_device:
            import torch

            slab = torch.empty((n, g.height, g.width), dtype=slab_io.torch_dtype(dtype),
                               device=self.view.device)
        else:
            slab = np.empty((n, g.height, g.width), dtype=dtype)
        slab_io.gather(self.view.array, slab, z0=start, n=n, axis=self.axis)
        return slab

    def encode(self, indices: Sequence[int]) -> list[tuple[Any, Any]]:
        """(image embedding (1, C, 16, 16), features (1, C/8, 64, 64)) of each slice, from the
        cache where present, the rest encoded in backend calls of at most ``batch_size``
        slices (each result is also offered to the cache)."""
        idx = [self.check_slice(k) for k in indices]
        found: dict[int, tuple[Any, Any]] = {}
        missing = []
        for k in idx:
            entry = self.cache.get(k)
            if entry is not None:
                found[k] = entry
                self.stats.cache_hits += 1
            elif k not in missing:
                missing.append(k)
        missing.sort()  # ascending runs preprocess in one op each, with no reordering copy
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            images = self.images(chunk)
            t0 = time.perf_counter()
            emb, feat = self.backend.encode(images)
            self.stats.add_time("encode", t0)
            self.stats.encoder_calls += 1
            self.stats.encoded_slices += len(chunk)
            for i, k in enumerate(chunk):
                entry = (emb[i:i + 1].clone(), feat[i:i + 1].clone())
                found[k] = entry
                self.stats.evictions += self.cache.put(k, entry)
        return [found[k] for k in idx]

    def decode(self, entry: tuple[Any, Any], model_box: np.ndarray) -> Any:
        """Logits (1, 1, 64, 64) float32 of one box (model frame) on an encoded slice."""
        return self.decode_batch([entry], np.asarray(model_box).reshape(1, 4))

    def decode_batch(self, entries: Sequence[tuple[Any, Any]], model_boxes: np.ndarray) -> Any:
        """Logits (m, 1, 64, 64) float32 of m encoded slices, one box each ((m, 4), model
        frame), in one decoder call."""
        import torch

        t0 = time.perf_counter()
        boxes = torch.from_numpy(np.asarray(model_boxes, dtype=np.float32).reshape(-1, 4))
        emb, feat = entries[0]
        if len(entries) > 1:
            emb = torch.cat([e[0] for e in entries])
            feat = torch.cat([e[1] for e in entries])
        logits = self.backend.decode(emb, feat, boxes.to(emb.device))
        _check_finite(logits)
        self.stats.add_time("decode", t0)
        self.stats.decoder_calls += 1
        return logits

    def run_full(self, k: int, model_box: np.ndarray) -> Any:
        """Logits (1, 1, 64, 64) of one slice and box through the whole model (no split)."""
        return self.run_full_batch([k], np.asarray(model_box).reshape(1, 4))

    def run_full_batch(self, ks: Sequence[int], model_boxes: np.ndarray) -> Any:
        """Logits (m, 1, 64, 64) of slices ``ks``, one box each ((m, 4), model frame), through
        the whole model in one call (a backend that cannot split)."""
        import torch

        images = self.images(ks)
        t0 = time.perf_counter()
        boxes = torch.from_numpy(np.asarray(model_boxes, dtype=np.float32).reshape(-1, 4))
        logits = self.backend.run(images, boxes.to(images.device))
        _check_finite(logits)
        self.stats.add_time("encode", t0)
        self.stats.full_runs += 1
        return logits

    def logits(self, k: int, model_box: np.ndarray) -> Any:
        """Logits of slice ``k`` for a model-frame box: the decoder on the cached (or newly
        encoded) embedding, or a whole-model pass on a backend that cannot split."""
        if not self.can_split:
            return self.run_full(k, model_box)
        (entry,) = self.encode([k])
        return self.decode(entry, model_box)

    # ------------------------------------------------------------------ masks
    def new_mask(self) -> Any:
        """A zero uint8 volume mask where this session writes (NumPy on the host, torch on the
        volume's device)."""
        if self.on_device:
            import torch

            return torch.zeros(self.view.shape, dtype=torch.uint8, device=self.view.device)
        return np.zeros(self.view.shape, dtype=np.uint8)

    def write_slice(self, logits: Any, out: Any, k: int) -> None:
        """Postprocess one slice's logits into ``out`` (a volume mask from :meth:`new_mask`)."""
        from sam_unet import ops

        t0 = time.perf_counter()
        lg = logits if self.on_device else logits.detach().float().cpu().numpy()
        ops.postprocess(lg, out, z0=k, n=1, axis=self.axis,
                        resized_hw=self.geometry.resized)
        self.stats.add_time("postprocess", t0)

    def slice_of(self, volume_mask: Any, k: int) -> Any:
        """The 2D view of slice ``k`` of a volume-shaped array (first remaining axis first)."""
        index: list[Any] = [slice(None)] * 3
        index[self.axis] = k
        return volume_mask[tuple(index)]

    def predict(self, slice_index: int, box: Any = None) -> Any:
        """The uint8 {0, 1} mask (first remaining axis, second remaining axis) of one box on one
        slice; ``box`` None: the full-slice box (for models trained with it). The first call
        on a slice encodes it; later calls on it run only the decoder while it stays cached."""
        k = self.check_slice(slice_index)
        if box is None and self.model_info is not None and self.model_info.prompt_mode == "box":
            raise ValueError(
                "the model was trained with structure boxes (its prompt mode is 'box'), not with "
                "full-slice boxes: give a box (x0, y0, x1, y1)"
            )
        b = None if box is None else self.check_box(box, k)
        # A one-slice volume mask in the slice's own layout: postprocess writes it with the
        # same op (and the same numbers) as a whole-volume pass.
        h, w = self.slice_shape
        if self.on_device:
            import torch

            out = torch.zeros((h, w, 1), dtype=torch.uint8, device=self.view.device)
        else:
            out = np.zeros((h, w, 1), dtype=np.uint8)
        logits = self.logits(k, self.model_box(b))
        from sam_unet import ops

        t0 = time.perf_counter()
        lg = logits if self.on_device else logits.detach().float().cpu().numpy()
        ops.postprocess(lg, out, z0=0, n=1, axis=2, resized_hw=self.geometry.resized)
        self.stats.add_time("postprocess", t0)
        return to_caller_kind(out[:, :, 0], self.view)

    def propagate(self, slice_index: int, prompt: Any, **options: Any) -> Any:
        """Follow a structure from a box (or 2D mask) on one slice through the volume; see
        :func:`sam_unet.runtime.propagate.propagate` for the options. Cached embeddings are
        reused and new ones cached."""
        from sam_unet.runtime.propagate import propagate

        return propagate(self, slice_index, prompt, **options)

    def describe(self) -> str:
        mode = "encoder/decoder split" if self.can_split else "whole-model passes (no split)"
        return (f"session on a {self.view.shape} volume, axis {self.axis}, {mode}, cache "
                f"{len(self.cache)} slices / {self.cache.bytes / 2**20:.1f} of "
                f"{self.cache.max_bytes / 2**20:.0f} MiB")
