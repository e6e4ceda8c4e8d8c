"""The native ops against their references: seconds, slices/s and GB/s vs the copy ceiling."""

from __future__ import annotations

from typing import Any

import numpy as np

from sam_unet.bench.pipeline import synthetic_ct
from sam_unet.bench.timing import time_fn


def _bytes(shape: tuple[int, int, int], in_itemsize: int, out_per_slice: int) -> tuple[int, int]:
    x, y, z = shape
    return x * y * z * in_itemsize, z * out_per_slice


def run_ops_bench(shape: tuple[int, int, int], device: str, *, reference: bool = True,
                  runs: int = 5) -> list[dict]:
    """Preprocess (int16 volume -> (Z,3,256,256) float16/32) and postprocess ((Z,1,64,64) ->
    uint8 volume) for the per-slice reference, the C++ CPU op and, on a GPU, the CUDA op."""
    from sam_unet import ops, transforms

    vol = synthetic_ct(shape)
    z = shape[2]
    h2, w2 = transforms.resized_shape(shape[0], shape[1])
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(z, 1, 64, 64)).astype(np.float32)
    rows: list[dict] = []

    def add(op: str, path: str, seconds: float, nbytes: int) -> None:
        rows.append({"op": op, "path": path, "shape": "x".join(map(str, shape)),
                     "seconds": seconds, "slices_per_s": z / seconds,
                     "gbps": nbytes / seconds / 1e9})

    pre_bytes = vol.nbytes + z * 3 * 256 * 256 * 4
    post_bytes = logits.nbytes + vol.size
    if reference:
        t = time_fn(lambda: transforms.preprocess_slices(vol, 0, z, axis=2), runs=1, warmup=0)
        add("preprocess", "reference (NumPy, per slice)", t.median, pre_bytes)
        out = np.zeros(shape, np.uint8)

        def ref_post() -> None:
            out[...] = np.moveaxis(
                transforms.postprocess_batch(logits, (h2, w2), (shape[0], shape[1])), 0, 2)

        t = time_fn(ref_post, runs=1, warmup=0)
        add("postprocess", "reference (PyTorch, per slice)", t.median, post_bytes)

    images = np.empty((z, 3, 256, 256), np.float32)
    t = time_fn(lambda: ops.preprocess(vol, images, z0=0, n=z, axis=2), runs=runs)
    add("preprocess", "C++ CPU", t.median, pre_bytes)
    out = np.zeros(shape, np.uint8)
    t = time_fn(lambda: ops.postprocess(logits, out, z0=0, n=z, axis=2, resized_hw=(h2, w2)),
                runs=runs)
    add("postprocess", "C++ CPU", t.median, post_bytes)

    if device.startswith("cuda"):
        import torch

        dvol = torch.from_numpy(vol).to(device)
        for dt, size in ((torch.float16, 2), (torch.float32, 4)):
            dimg = torch.empty((z, 3, 256, 256), dtype=dt, device=device)
            stream = torch.cuda.current_stream().cuda_stream
            t = time_fn(lambda dimg=dimg, stream=stream: ops.preprocess(
                dvol, dimg, z0=0, n=z, axis=2, stream=stream), device=device, runs=50)
            add("preprocess", f"CUDA {str(dt)[6:]}", t.median, vol.nbytes + dimg.numel() * size)
        dlog = torch.from_numpy(logits).to(device)
        dout = torch.zeros(shape, dtype=torch.uint8, device=device)
        t = time_fn(lambda: ops.postprocess(dlog, dout, z0=0, n=z, axis=2, resized_hw=(h2, w2),
                                            stream=torch.cuda.current_stream().cuda_stream),
                    device=device, runs=50)
        add("postprocess", "CUDA", t.median, post_bytes)
    return rows


def speedups(rows: list[dict]) -> dict[str, Any]:
    """Speed-up of each path over the reference of the same op."""
    out: dict[str, Any] = {}
    for op in ("preprocess", "postprocess"):
        ref = [r for r in rows if r["op"] == op and r["path"].startswith("reference")]
        if not ref:
            continue
        for r in rows:
            if r["op"] == op and not r["path"].startswith("reference"):
                out[f"{op} {r['path']}"] = ref[0]["seconds"] / r["seconds"]
    return out


def run_slab_copy_bench(shape: tuple[int, int, int] = (512, 512, 192), slab: int = 64, *,
                        runs: int = 7, transposing: bool = True) -> list[dict]:  # fmt: skip
    """The host side of the GPU pipeline: gather int16 slices into a pinned-sized slab
    (``ops.gather_slices``) and scatter uint8 mask slabs back (``ops.scatter_slices``), slab by
    slab over the whole volume, for C-order (sliced along the contiguous Z), Fortran-order
    (nibabel's) and slice-major (Z, X, Y) volumes; each against the same run's memcpy of the
    same bytes (``np.copyto`` of contiguous slab-sized buffers, slab by slab over a volume-sized
    contiguous array, so both miss the cache alike). Median seconds of ``runs``.

    Slabs and the mask volume are laid out as the pinned placement lays them out: in the input
    volume's memory order (``slab_io.slab_order`` / ``slab_io.empty_in_order``). With
    ``transposing``, also into a C-contiguous (n, H, W) slab and a C-order mask (a tiled
    transpose for C and Fortran order), for comparison."""
    from sam_unet import ops
    from sam_unet.runtime import slab_io

    x, y, z = shape
    rng = np.random.default_rng(0)
    c_vol = rng.integers(-1024, 3000, size=shape, dtype=np.int16)
    layouts = {
        "C order (X, Y, Z), axis 2": c_vol,
        "Fortran order (X, Y, Z), axis 2": np.asfortranarray(c_vol),
        "slice-major (Z, X, Y), axis 2": np.moveaxis(
            np.ascontiguousarray(np.moveaxis(c_vol, 2, 0)), 0, 2),
    }
    starts = list(range(0, z, slab))
    # the pinned staging slabs of the pipeline (page-aligned, as cudaHostAlloc's are)
    flat_in = slab_io.page_aligned_empty(slab * x * y, np.int16)
    flat_in.fill(1)
    flat_out = slab_io.page_aligned_empty(slab * x * y, np.uint8)
    flat_out[:] = rng.integers(0, 2, size=slab * x * y, dtype=np.uint8)
    # memcpy sources/targets, written so that their pages exist (untouched zero pages would all
    # read the same physical page from cache)
    slab_i16 = np.ones((slab, x, y), np.int16)
    slab_u8 = rng.integers(0, 2, size=(slab, x, y), dtype=np.uint8)
    flat_i16 = np.ones((len(starts), slab, x, y), np.int16)
    flat_u8 = np.ones((len(starts), slab, x, y), np.uint8)
    rows: list[dict] = []

    def memcpy_in() -> None:
        for k, z0 in enumerate(starts):
            n = min(slab, z - z0)
            np.copyto(slab_i16[:n], flat_i16[k, :n])

    def memcpy_out() -> None:
        for k, z0 in enumerate(starts):
            n = min(slab, z - z0)
            np.copyto(flat_u8[k, :n], slab_u8[:n])

    cases = [(name, vol, "volume order") for name, vol in layouts.items()]
    if transposing:
        cases += [(name, vol, "C-contiguous (n, H, W)") for name, vol in layouts.items()
                  if not name.startswith("slice-major")]
    for name, vol, slab_layout in cases:
        if slab_layout == "volume order":
            order = slab_io.slab_order(vol, 2, 0, 1)
            mask = slab_io.empty_in_order(vol.shape, slab_io.memory_order(vol.strides, vol.shape),
                                          np.uint8, 1)
        else:
            order, mask = (0, 1, 2), np.ones(vol.shape, np.uint8)

        def gather(vol=vol, order=order) -> None:
            for z0 in starts:
                n = min(slab, z - z0)
                ops.gather_slices(vol, slab_io.slab_view(flat_in, n, (x, y), order), z0=z0, n=n,
                                  axis=2)

        def scatter(mask=mask, order=order) -> None:
            for z0 in starts:
                n = min(slab, z - z0)
                ops.scatter_slices(slab_io.slab_view(flat_out, n, (x, y), order), mask, z0=z0,
                                   n=n, axis=2)

        for op, fn, ref, nbytes in (("gather int16", gather, memcpy_in, c_vol.nbytes),
                                    ("scatter uint8", scatter, memcpy_out, c_vol.size)):
            t_ref = time_fn(ref, runs=runs).median  # fmt: skip
            t_op = time_fn(fn, runs=runs).median
            rows.append({"layout": name, "slab_layout": slab_layout, "op": op,
                         "shape": "x".join(map(str, shape)), "slab": slab, "seconds": t_op,
                         "slices_per_s": z / t_op, "gbps": nbytes / t_op / 1e9,
                         "memcpy_gbps": nbytes / t_ref / 1e9,
                         "fraction_of_memcpy": t_ref / t_op})  # fmt: skip
    return rows
