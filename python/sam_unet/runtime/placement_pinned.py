"""Host volume, GPU engine: slabs through pinned double buffers, with copies that overlap
compute. Slab ``i`` uses buffer set ``s = i % 2``:

1. host: wait until the upload of slab i-2 has read ``pinned_in[s]``, gather slab i into it;
2. upload stream: wait until preprocess of slab i-2 has read ``device_in[s]``, copy
   ``device_in[s] <- pinned_in[s]``, record ``uploaded[s]``;
3. compute stream: wait ``uploaded[s]``, preprocess -> images, record ``preprocessed[s]``; the
   model step;
4. host: drain set ``s`` (wait for the download of slab i-2, scatter its masks into the output
   volume), so ``device_out[s]`` and ``pinned_out[s]`` are free;
5. compute stream: postprocess -> ``device_out[s]``, record ``computed[s]``;
6. download stream: wait ``computed[s]``, copy ``pinned_out[s] <- device_out[s]``, record
   ``downloaded[s]``.

Slab buffers are laid out in the volume's own memory order (``slab_io.slab_order``): the host
gather and scatter are row copies at memcpy speed for C-order, Fortran-order and slice-major
volumes alike, and the kernels read and write the slab through its strides (as they do a
device-resident volume). Slab ``n`` is the first ``n * H * W`` elements of its buffer, so it
crosses in one copy; the output volumes share the input's memory order.

Uploads and downloads have their own streams, so the upload of slab i+1 never queues behind
the download of slab i, and no buffer is written before the event of its last reader (checked on
a simulated device by tests/test_pipeline_schedule.py). The host may run up to two slabs ahead
of the device. Device memory: two slabs in, two out, one image batch and the model's own:
bounded for any number of slices. All stream, event and copy operations go through the
:class:`~sam_unet.runtime.streams.StreamDevice`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from sam_unet.runtime import slab_io
from sam_unet.runtime.placements import (
    Feed,
    Placement,
    SlabResult,
    host_outputs,
    preprocess_slab,
    store_result,
)
from sam_unet.runtime.plan import Plan, Slab
from sam_unet.runtime.streams import Buffer, StreamDevice

SETS = (0, 1)


class PinnedPlacement(Placement):
    """Host volume (NumPy or torch CPU) segmented on ``dev``; outputs are host arrays."""

    def __init__(self, dev: StreamDevice, volume: Any, feed: Feed) -> None:
        super().__init__(feed)
        self.dev = dev
        self.volume = volume
        # pinned buffers are torch tensors: no big-endian, and NumPy names no bfloat16, so
        # those slabs are converted on the host (the device op would read them, torch cannot
        # hold them)
        name = str(volume.dtype).replace("torch.", "")
        plain = (slab_io.reads_natively(volume) and name != "bfloat16"
                 and getattr(volume.dtype, "isnative", True))
        self.in_dtype = np.dtype(name) if plain else np.dtype(slab_io.convert_dtype(volume.dtype))
        self.marks: list[tuple[str, Any, Any]] = []

    def start(self, plan: Plan, slab_size: int) -> None:
        import torch

        d, geo = self.dev, self.feed.geometry
        d.reset_peak()
        self.order = slab_io.slab_order(self.volume, geo.axis, geo.row_axis, geo.col_axis)
        self.hw = (geo.height, geo.width)
        hw = (slab_size * geo.height * geo.width,)  # flat: see slab_view
        self.upload, self.download = d.stream("upload"), d.stream("download")
        self.images = d.device_buffer("images", (slab_size, 3, 256, 256), self.feed.images_dtype)
        self.pinned_in = [d.host_buffer(f"pinned_in[{s}]", hw, self.in_dtype) for s in SETS]
        self.device_in = [d.device_buffer(f"device_in[{s}]", hw,
                                          slab_io.torch_dtype(self.in_dtype)) for s in SETS]
        channels = {"mask": (np.uint8, torch.uint8)}
        if self.feed.scores:
            channels["scores"] = (np.float32, torch.float32)
        self.device_out = {c: [d.device_buffer(f"device_{c}[{s}]", hw, t) for s in SETS]
                           for c, (_, t) in channels.items()}
        self.pinned_out = {c: [d.host_buffer(f"pinned_{c}[{s}]", hw, np.dtype(n)) for s in SETS]
                           for c, (n, _) in channels.items()}
        self.outputs = host_outputs(self.volume, geo.shape, scores=self.feed.scores)
        self.uploaded = [d.event(f"uploaded[{s}]") for s in SETS]
        self.preprocessed = [d.event(f"preprocessed[{s}]") for s in SETS]
        self.computed = [d.event(f"computed[{s}]") for s in SETS]
        self.downloaded = [d.event(f"downloaded[{s}]") for s in SETS]
        self.pending: list[Slab | None] = [None, None]
        self.count = 0
        buffers = [self.images, *self.pinned_in, *self.device_in]
        for c in channels:
            buffers += [*self.device_out[c], *self.pinned_out[c]]
        self.buffer_bytes = sum(b.nbytes for b in buffers)

    def _view(self, flat: Any, n: int) -> Any:
        """Slab ``n`` of a flat buffer as an (n, H, W) view in the volume's memory order."""
        return slab_io.slab_view(flat, n, self.hw, self.order)

    def _count(self, n: int) -> int:
        """Elements of a slab of ``n`` slices (the leading part of a flat buffer)."""
        return n * self.hw[0] * self.hw[1]

    # -- host side ---------------------------------------------------------------------------
    def _host_stage(self, stage: str, fn: Callable[[], None], *, reads: list[Buffer] = (),
                    writes: list[Buffer] = ()) -> None:
        t0 = time.perf_counter()
        self.dev.host(stage, fn, reads=reads, writes=writes)
        self.stages[stage] += time.perf_counter() - t0

    def _drain(self, s: int) -> None:
        """Wait for set ``s``'s download and scatter its slab into the output volumes."""
        slab = self.pending[s]
        if slab is None:
            return
        self.dev.host_wait(self.downloaded[s])
        axis = self.feed.geometry.axis

        def scatter() -> None:
            for c, out in self.outputs.items():
                host = self._view(self.pinned_out[c][s].host, slab.n)
                for off, first, m in slab.runs:
                    slab_io.scatter(host[off:off + m], out, z0=first, n=m, axis=axis)

        self._host_stage("scatter", scatter, reads=[b[s] for b in self.pinned_out.values()])
        self.pending[s] = None

    # -- device side -------------------------------------------------------------------------
    def _mark(self, stage: str, stream: Any, fn: Callable[[], Any]) -> Any:
        start = self.dev.timer(stream)
        value = fn()
        self.marks.append((stage, start, self.dev.timer(stream)))
        return value

    def load(self, slab: Slab) -> Any:
        d, s, n = self.dev, self.count % 2, slab.n
        self.set, self.count = s, self.count + 1
        d.host_wait(self.uploaded[s])  # the upload of slab i-2 has read pinned_in[s]
        host, axis = self._view(self.pinned_in[s].host, n), self.feed.geometry.axis

        def gather() -> None:
            for off, first, m in slab.runs:
                slab_io.gather(self.volume, host[off:off + m], z0=first, n=m, axis=axis)

        self._host_stage("gather", gather, writes=[self.pinned_in[s]])
        d.wait(self.upload, self.preprocessed[s])  # preprocess of slab i-2 has read device_in[s]
        self._mark("upload", self.upload, lambda: d.copy(
            self.upload, "upload", self.device_in[s], self.pinned_in[s], self._count(n)))
        d.record(self.uploaded[s], self.upload)
        d.wait(d.compute, self.uploaded[s])
        src, images = self._view(self.device_in[s].array, n), self.images.array
        self._mark("preprocess", d.compute, lambda: d.launch(
            d.compute, "preprocess",
            lambda h: preprocess_slab(src, images, slab, self.feed, in_place=False, stream=h),
            reads=[self.device_in[s]], writes=[self.images]))
        d.record(self.preprocessed[s], d.compute)
        return images[:n]

    def compute(self, fn: Callable[[], SlabResult]) -> SlabResult:
        d = self.dev
        return self._mark("model", d.compute, lambda: d.launch(
            d.compute, "model", lambda h: fn(), reads=[self.images]))

    def store(self, slab: Slab, result: SlabResult) -> None:
        d, s, n = self.dev, self.set, slab.n
        self._drain(s)  # slab i-2's download has read device_out[s]; pinned_out[s] is free
        outs = {c: b[s] for c, b in self.device_out.items()}
        arrays = {c: self._view(b.array, n) for c, b in outs.items()}
        self._mark("postprocess", d.compute, lambda: d.launch(
            d.compute, "postprocess",
            lambda h: store_result(result, arrays, slab, self.feed, in_place=False, stream=h),
            writes=list(outs.values())))
        d.record(self.computed[s], d.compute)
        d.wait(self.download, self.computed[s])

        def download() -> None:
            for c in outs:
                d.copy(self.download, "download", self.pinned_out[c][s], outs[c],
                       self._count(n))

        self._mark("download", self.download, download)
        d.record(self.downloaded[s], self.download)
        self.pending[s] = slab

    def finish(self) -> dict[str, Any]:
        for s in (self.count % 2, (self.count + 1) % 2):  # the older slab first
            self._drain(s)
        self.dev.synchronize()
        for stage, start, end in self.marks:
            self.stages[stage] += self.dev.elapsed(start, end)
        self.peak_device_bytes = self.dev.peak_bytes()
        return self.outputs

    def close(self) -> None:
        self.dev.synchronize()
