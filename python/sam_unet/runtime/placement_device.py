"""Device-resident volume (torch CUDA tensor or CuPy array on the engine's GPU): the fused ops
read the volume and write the mask in place, on the compute stream; nothing crosses to the
host. A dtype the ops cannot read is converted slab by slab into a device buffer first."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from sam_unet.runtime import slab_io
from sam_unet.runtime.placements import Feed, Placement, SlabResult, preprocess_slab, store_result
from sam_unet.runtime.plan import Plan, Slab
from sam_unet.runtime.streams import StreamDevice


def _cupy_stream(handle: int) -> Any:
    """A context that makes CuPy queue its work on the CUDA stream ``handle``."""
    import cupy

    return cupy.cuda.ExternalStream(handle)


class DevicePlacement(Placement):
    """Volume and mask on the device; every step is queued on ``dev.compute``."""

    def __init__(self, dev: StreamDevice, volume: Any, feed: Feed, *, cupy: bool = False) -> None:
        super().__init__(feed)
        self.dev = dev
        self.volume = volume
        self.cupy = cupy
        self.in_place = slab_io.reads_natively(volume)
        self.marks: list[tuple[str, Any, Any]] = []

    def start(self, plan: Plan, slab_size: int) -> None:
        import torch

        d, geo = self.dev, self.feed.geometry
        d.reset_peak()
        self.images = d.device_buffer("images", (slab_size, 3, 256, 256), self.feed.images_dtype)
        buffers = [self.images]
        if not self.in_place:
            dtype = slab_io.torch_dtype(slab_io.convert_dtype(self.volume.dtype))
            self.scratch = d.device_buffer("slab", (slab_size, geo.height, geo.width), dtype)
            buffers.append(self.scratch)
        self.buffer_bytes = sum(b.nbytes for b in buffers)
        mask = d.device_buffer("mask", geo.shape, torch.uint8)
        self.outputs = {"mask": mask}
        if self.feed.scores:
            self.outputs["scores"] = d.device_buffer("scores", geo.shape, torch.float32)
        out = self.outputs
        d.launch(d.compute, "zero outputs", lambda h: [
            b.array.fill_(float("-inf") if name == "scores" else 0) for name, b in out.items()
        ], writes=list(out.values()))

    def _timed(self, stage: str, what: str, fn: Callable[[int], Any], reads: list,
               writes: list) -> Any:
        d = self.dev
        start = d.timer(d.compute)
        value = d.launch(d.compute, what, fn, reads=reads, writes=writes)
        self.marks.append((stage, start, d.timer(d.compute)))
        return value

    def load(self, slab: Slab) -> Any:
        images = self.images.array
        src = self.volume
        if not self.in_place:
            scratch = self.scratch.array

            def gather(h: int) -> None:
                target = scratch
                if self.cupy:
                    import cupy

                    target = cupy.asarray(scratch)
                with _cupy_stream(h) if self.cupy else nullcontext():
                    for off, first, m in slab.runs:
                        slab_io.gather(self.volume, target[off:off + m], z0=first, n=m,
                                       axis=self.feed.geometry.axis)

            self._timed("gather", "gather", gather, [], [self.scratch])
            src = scratch
        self._timed("preprocess", "preprocess",
                    lambda h: preprocess_slab(src, images, slab, self.feed,
                                              in_place=self.in_place, stream=h),
                    [] if self.in_place else [self.scratch], [self.images])
        return images[:slab.n]

    def compute(self, fn: Callable[[], SlabResult]) -> SlabResult:
        return self._timed("model", "model", lambda h: fn(), [self.images], [])

    def store(self, slab: Slab, result: SlabResult) -> None:
        outputs = {name: b.array for name, b in self.outputs.items()}
        self._timed("postprocess", "postprocess",
                    lambda h: store_result(result, outputs, slab, self.feed, in_place=True,
                                           stream=h),
                    [], list(self.outputs.values()))

    def finish(self) -> dict[str, Any]:
        self.dev.synchronize()
        for stage, start, end in self.marks:
            self.stages[stage] += self.dev.elapsed(start, end)
        self.peak_device_bytes = self.dev.peak_bytes()
        return {name: b.array for name, b in self.outputs.items()}

    def close(self) -> None:
        self.dev.synchronize()

