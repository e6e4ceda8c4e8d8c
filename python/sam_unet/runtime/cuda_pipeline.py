"""The CUDA path of ``Engine.segment``: double-buffered slabs with copy/compute overlap.

Host-resident volume, per batch ``i`` using buffer set ``s = i % 2``:

1. host: gather the batch's slices (moved to the front axis) into ``pinned_in[s]``;
2. copy stream: ``dev_in[s] <- pinned_in[s]`` (after compute of batch i-2 released it);
3. compute stream: fused preprocess -> backend -> fused postprocess into ``dev_out[s]``;
4. copy stream: ``pinned_out[s] <- dev_out[s]``;
5. when buffer set ``s`` comes round again, the host scatters ``pinned_out[s]`` into the mask.

Device memory holds two slabs of ``batch`` slices in, two out, one image batch and the backend's
workspace: bounded for any number of slices.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sam_unet.runtime.prompts import SlicePlan
from sam_unet.transforms import resized_shape


def _images_dtype(backend: Any) -> Any:
    import torch

    dt = getattr(backend, "input_dtype", None)
    if dt is not None:
        return dt
    return torch.float16 if backend.precision == "fp16" and backend.name == "torch" else \
        torch.float32


def run_cuda(backend: Any, view: Any, mask: Any, plan: SlicePlan, axis: int, normalize: str,
             window: tuple[float, float] | None, batch: int, stats: Any) -> Any:
    """Fill ``mask`` (host NumPy or device torch uint8 of the volume's shape) and return it."""
    import torch

    from sam_unet import ops
    from sam_unet.runtime.engine import _batches

    device = torch.device(backend.device)
    shape = view.shape
    row_ax, col_ax = [a for a in range(3) if a != axis]
    height, width = shape[row_ax], shape[col_ax]
    resized = resized_shape(height, width)
    batches = _batches(plan, batch)
    compute = torch.cuda.current_stream(device)
    images = torch.empty((batch, 3, 256, 256), dtype=_images_dtype(backend), device=device)
    torch.cuda.reset_peak_memory_stats(device)

    def boxes_for(pieces: list[tuple[int, int, int]]) -> torch.Tensor:
        pos = np.concatenate([np.arange(p, p + n) for p, _s, n in pieces])
        b = ops.scale_boxes(plan.boxes[pos], (height, width), resized)
        return torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)).to(device,
                                                                               non_blocking=True)

    if view.on_cuda:
        # The volume and the mask live on the device: the ops read/write them in place.
        vol = view.array
        out = mask
        for pieces in batches:
            m = sum(p[2] for p in pieces)
            off = 0
            for _pos, start, length in pieces:
                ops.preprocess(vol, images[off:off + length], z0=start, n=length, axis=axis,
                               mode=normalize, window=window, stream=compute.cuda_stream)
                off += length
            logits = backend.run(images[:m], boxes_for(pieces))
            stats.backend_calls += 1
            off = 0
            for _pos, start, length in pieces:
                ops.postprocess(logits[off:off + length], out, z0=start, n=length, axis=axis,
                                resized_hw=resized, stream=compute.cuda_stream)
                off += length
        torch.cuda.synchronize(device)
        stats.peak_device_bytes = torch.cuda.max_memory_allocated(device)
        return out

    # Host-resident volume: slabs through pinned buffers.
    vol = view.array if view.kind == "numpy" else view.array.numpy()
    out_host = mask if isinstance(mask, np.ndarray) else mask.numpy()
    src = np.moveaxis(vol, axis, 0)   # (S, H, W) view, no copy
    dst = np.moveaxis(out_host, axis, 0)
    tdtype = torch.from_numpy(np.empty(0, dtype=vol.dtype)).dtype
    copy = torch.cuda.Stream(device)
    pinned_in = [torch.empty((batch, height, width), dtype=tdtype, pin_memory=True)
                 for _ in range(2)]
    pinned_out = [torch.empty((batch, height, width), dtype=torch.uint8, pin_memory=True)
                  for _ in range(2)]
    dev_in = [torch.empty((batch, height, width), dtype=tdtype, device=device) for _ in range(2)]
    dev_out = [torch.empty((batch, height, width), dtype=torch.uint8, device=device)
               for _ in range(2)]
    h2d_done = [torch.cuda.Event() for _ in range(2)]
    compute_done = [torch.cuda.Event() for _ in range(2)]
    d2h_done = [torch.cuda.Event() for _ in range(2)]
    pending: list[tuple[int, list[tuple[int, int, int]], int] | None] = [None, None]

    def drain(s: int) -> None:
        item = pending[s]
        if item is None:
            return
        _, pieces, _m = item
        d2h_done[s].synchronize()
        res = pinned_out[s].numpy()
        off = 0
        for _pos, start, length in pieces:
            dst[start:start + length] = res[off:off + length]
            off += length
        pending[s] = None

    for i, pieces in enumerate(batches):
        s = i % 2
        m = sum(p[2] for p in pieces)
        drain(s)  # also guarantees pinned_in[s]'s previous H2D copy finished (same stream order)
        h2d_done[s].synchronize()
        host = pinned_in[s].numpy()
        off = 0
        for _pos, start, length in pieces:
            np.copyto(host[off:off + length], src[start:start + length])
            off += length
        with torch.cuda.stream(copy):
            copy.wait_event(compute_done[s])  # dev_in[s] no longer read by batch i-2
            dev_in[s][:m].copy_(pinned_in[s][:m], non_blocking=True)
            h2d_done[s].record(copy)
        compute.wait_event(h2d_done[s])
        ops.preprocess(dev_in[s][:m], images[:m], z0=0, n=m, axis=0, mode=normalize,
                       window=window, stream=compute.cuda_stream)
        logits = backend.run(images[:m], boxes_for(pieces))
        stats.backend_calls += 1
        ops.postprocess(logits, dev_out[s][:m], z0=0, n=m, axis=0, resized_hw=resized,
                        stream=compute.cuda_stream)
        compute_done[s].record(compute)
        with torch.cuda.stream(copy):
            copy.wait_event(compute_done[s])
            pinned_out[s][:m].copy_(dev_out[s][:m], non_blocking=True)
            d2h_done[s].record(copy)
        pending[s] = (i, pieces, m)
    for s in (0, 1):
        if pending[s] is not None:
            drain(s)
    # drain order: both sets hold distinct slices, so order does not matter
    torch.cuda.synchronize(device)
    stats.peak_device_bytes = torch.cuda.max_memory_allocated(device)
    if view.kind == "torch":
        return torch.from_numpy(out_host)
    return out_host
