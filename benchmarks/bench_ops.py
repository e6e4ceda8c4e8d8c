"""Time the pre/postprocessing ops: reference (NumPy/PyTorch per slice), PIL per slice, C++ CPU op,
and the CUDA op when a device exists (CUDA events, against a device-to-device copy ceiling).

    python benchmarks/bench_ops.py                       # CPU, 512x512x64 int16
    python benchmarks/bench_ops.py --device cuda         # GPU, 512x512x300 int16
    python benchmarks/bench_ops.py --size 512 512 64 --layout f --json out.json
    python benchmarks/bench_ops.py --slabs               # gather/scatter vs memcpy, 3 layouts

Prints a Markdown table; ``--json PATH`` writes the rows too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from sam_unet import ops, transforms
from sam_unet.bench.timing import time_fn


def median_time(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
    """Median wall time (s) of fn over `runs` calls after `warmup` calls."""
    return time_fn(fn, warmup=warmup, runs=runs).median


def cuda_median_time(fn: Callable[[], object], runs: int, warmup: int = 5) -> float:
    """Median device time (s) of fn with CUDA events, after warm-up."""
    return time_fn(fn, device="cuda", warmup=warmup, runs=runs).median


def make_volume(shape, dtype, layout: str, seed: int = 0) -> tuple[np.ndarray, int]:
    """(volume, slicing axis): c = C order (X, Y, Z) sliced along the contiguous Z; f = nibabel's
    Fortran order; s = slice-major (Z, X, Y), as the engine's device slabs, sliced along axis 0."""
    rng = np.random.default_rng(seed)
    vol = rng.integers(-1024, 3000, shape).astype(dtype)
    if layout == "s":
        return np.ascontiguousarray(np.moveaxis(vol, 2, 0)), 0
    return (np.asfortranarray(vol) if layout == "f" else np.ascontiguousarray(vol)), 2


def pil_preprocess(vol: np.ndarray, n: int, out: np.ndarray, axis: int) -> None:
    """Per-slice path of the published code: to uint8, PIL resize, normalise, pad."""
    for k in range(n):
        index = [slice(None)] * 3
        index[axis] = k
        u8 = transforms.to_uint8(vol[tuple(index)])
        h2, w2 = transforms.resized_shape(*u8.shape)
        img = np.asarray(Image.fromarray(u8).resize((w2, h2), Image.BILINEAR))
        out[k] = transforms.normalize_pad(img, out.dtype)


def reference_postprocess(logits: np.ndarray, hw, out: np.ndarray, axis: int) -> None:
    """Reference per slice: transforms.postprocess_batch of one map, written into the volume."""
    H, W = transforms.slice_shape(out.shape, axis)
    for k in range(logits.shape[0]):
        idx = [slice(None)] * 3
        idx[axis] = k
        out[tuple(idx)] = transforms.postprocess_batch(logits[k : k + 1], hw, (H, W))[0]


def run(args: argparse.Namespace) -> list[dict]:
    rows: list[dict] = []
    X, Y, Z = args.size
    dtype = np.dtype(args.dtype)
    out_dtype = np.dtype(args.out_dtype)
    hw = transforms.resized_shape(X, Y)
    vol, axis = make_volume((X, Y, Z), dtype, args.layout)
    logits = np.random.default_rng(1).normal(0, 4, (Z, 1, 64, 64)).astype(np.float32)
    pre_bytes = vol.nbytes + Z * 3 * 256 * 256 * out_dtype.itemsize
    post_bytes = logits.nbytes + X * Y * Z

    def add(op, path, device, seconds, nbytes, ref=None):
        row = {
            "op": op,
            "path": path,
            "device": device,
            "size": f"{X}x{Y}x{Z}",
            "dtype": dtype.name,
            "layout": args.layout,
            "ms": seconds * 1e3,
            "slices_per_s": Z / seconds,
            "GB_per_s": nbytes / seconds / 1e9,
            "speedup_vs_reference": (ref / seconds) if ref else 1.0,
        }
        rows.append(row)
        return seconds

    if args.device in ("cpu", "all"):
        out = np.empty((Z, 3, 256, 256), out_dtype)
        mask = np.zeros(vol.shape, np.uint8, order="F" if args.layout == "f" else "C")
        runs = max(1, args.runs // 5)
        ref_pre = add(
            "preprocess",
            "reference (transforms.preprocess_slices)",
            "cpu",
            median_time(
                lambda: transforms.preprocess_slices(vol, 0, Z, axis=axis, dtype=out_dtype), runs, 0
            ),
            pre_bytes,
        )
        add(
            "preprocess",
            "PIL per slice",
            "cpu",
            median_time(lambda: pil_preprocess(vol, Z, out, axis), runs, 0),
            pre_bytes,
            ref_pre,
        )
        add(
            "preprocess",
            "C++ CPU op",
            "cpu",
            median_time(lambda: ops.preprocess(vol, out, z0=0, n=Z, axis=axis), args.runs),
            pre_bytes,
            ref_pre,
        )
        ref_post = add(
            "postprocess",
            "reference (postprocess_batch per slice)",
            "cpu",
            median_time(lambda: reference_postprocess(logits, hw, mask, axis), runs, 0),
            post_bytes,
        )
        add(
            "postprocess",
            "C++ CPU op",
            "cpu",
            median_time(
                lambda: ops.postprocess(logits, mask, z0=0, n=Z, axis=axis, resized_hw=hw),
                args.runs,
            ),
            post_bytes,
            ref_post,
        )

    if args.device in ("cuda", "all"):
        if not torch.cuda.is_available():
            print("no CUDA device: skipping the CUDA rows", file=sys.stderr)
            return rows
        dev = torch.device("cuda")
        dvol = torch.from_numpy(np.ascontiguousarray(vol)).to(dev)
        if args.layout == "f":
            dvol = torch.from_numpy(np.ascontiguousarray(vol.T)).to(dev).permute(2, 1, 0)
        tdt = torch.float16 if out_dtype == np.float16 else torch.float32
        dout = torch.empty((Z, 3, 256, 256), dtype=tdt, device=dev)
        dlog = torch.from_numpy(logits).to(dev)
        dmask = torch.zeros(tuple(vol.shape), dtype=torch.uint8, device=dev)
        if args.layout == "f":
            dmask = torch.zeros((Z, Y, X), dtype=torch.uint8, device=dev).permute(2, 1, 0)
        stream = torch.cuda.current_stream().cuda_stream
        # memory ceiling: device-to-device copy of the same order of bytes
        src = torch.empty(max(pre_bytes, 1 << 28) // 2, dtype=torch.int16, device=dev)
        dst = torch.empty_like(src)
        t_copy = cuda_median_time(lambda: dst.copy_(src), args.runs)
        ceiling = 2 * src.numel() * 2 / t_copy / 1e9
        rows.append(
            {"op": "copy", "path": "device-to-device copy (ceiling)", "device": "cuda",
             "size": f"{src.numel() * 2 / 1e6:.0f} MB", "dtype": "int16", "layout": "-",
             "ms": t_copy * 1e3, "slices_per_s": float("nan"), "GB_per_s": ceiling,
             "speedup_vs_reference": float("nan")}
        )  # fmt: skip
        ref_pre = next((r["ms"] / 1e3 for r in rows if r["path"].startswith("reference (t")), None)
        ref_post = next((r["ms"] / 1e3 for r in rows if r["path"].startswith("reference (p")), None)
        add(
            "preprocess",
            "CUDA op",
            "cuda",
            cuda_median_time(
                lambda: ops.preprocess(dvol, dout, z0=0, n=Z, axis=axis, stream=stream), args.runs
            ),
            pre_bytes,
            ref_pre,
        )
        add(
            "postprocess",
            "CUDA op",
            "cuda",
            cuda_median_time(
                lambda: ops.postprocess(
                    dlog, dmask, z0=0, n=Z, axis=axis, resized_hw=hw, stream=stream
                ),
                args.runs,
            ),
            post_bytes,
            ref_post,
        )
        for r in rows:
            if r["device"] == "cuda":
                r["fraction_of_copy_ceiling"] = r["GB_per_s"] / ceiling
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| op | path | device | volume | ms (median) | slices/s | GB/s | speedup vs reference |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        sp = r["speedup_vs_reference"]
        lines.append(
            f"| {r['op']} | {r['path']} | {r['device']} | {r['size']} {r['dtype']} "
            f"({r['layout']}) | {r['ms']:.3f} | {r['slices_per_s']:.0f} | {r['GB_per_s']:.2f} | "
            f"{'' if sp != sp else f'{sp:.1f}x'} |"
        )
    return "\n".join(lines)


def slab_markdown(rows: list[dict]) -> str:
    lines = [
        "| volume | slab layout | op | volume | slab | ms (median) | slices/s | GB/s | memcpy GB/s "
        "| of memcpy |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layout']} | {r['slab_layout']} | {r['op']} | {r['shape']} | {r['slab']} "
            f"| {r['seconds'] * 1e3:.1f} "
            f"| {r['slices_per_s']:.0f} | {r['gbps']:.2f} | {r['memcpy_gbps']:.2f} "
            f"| {r['fraction_of_memcpy']:.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="cpu")
    p.add_argument(
        "--size", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None,
        help="volume size (default 512 512 64 on CPU, 512 512 300 with CUDA)",
    )  # fmt: skip
    p.add_argument("--dtype", default="int16")
    p.add_argument("--out-dtype", default="float16", choices=("float16", "float32"))
    p.add_argument(
        "--layout", choices=("c", "f", "s"), default=None,
        help="c: (X, Y, Z) C order, slices along the contiguous Z (CPU default); f: nibabel's "
        "Fortran order; s: slice-major (Z, X, Y) like the engine's device slabs (CUDA default)",
    )  # fmt: skip
    p.add_argument(
        "--slabs", action="store_true",
        help="instead: ops.gather_slices (int16) and ops.scatter_slices (uint8 masks) slab by slab "
        "over C-order, Fortran-order and slice-major volumes against memcpy of the same bytes "
        "(default volume 512 512 192)",
    )  # fmt: skip
    p.add_argument("--slab", type=int, default=64, help="slices per slab with --slabs")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = p.parse_args(argv)
    if args.slabs:
        from sam_unet.bench.ops_bench import run_slab_copy_bench

        rows = run_slab_copy_bench(tuple(args.size or (512, 512, 192)), args.slab, runs=args.runs)
        print(slab_markdown(rows))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "rows": rows}, f, indent=2, default=str)
        return 0
    if args.size is None:
        args.size = (512, 512, 64) if args.device == "cpu" else (512, 512, 300)
    if args.layout is None:
        args.layout = "c" if args.device == "cpu" else "s"
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
