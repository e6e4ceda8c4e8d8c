#!/usr/bin/env python
"""Build (or reuse) a TensorRT FP16 engine for an exported SAM-UNet ONNX file, then time it.

    python export/build_engine.py model.onnx [model.engine] [--profiles 1:1:1,1:32:64]
        [--timing-cache trt.cache] [--bench]

Needs TensorRT (``pip install tensorrt`` or ``pip install "sam-unet[trt]"``) and a GPU.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("onnx")
    p.add_argument("engine", nargs="?", default=None, help="default: the engine cache")
    p.add_argument("--profiles", default="1:1:1,1:32:64")
    p.add_argument("--timing-cache", default=None)
    p.add_argument("--no-fp16", action="store_true")
    p.add_argument("--bench", action="store_true", help="time batches 1 and 32 after building")
    args = p.parse_args(argv)

    from sam_unet.export.tensorrt import TensorRTUnavailableError, build_or_reuse

    try:
        path, spec, built = build_or_reuse(
            args.onnx, args.engine, profiles=args.profiles, fp16=not args.no_fp16,
            timing_cache=args.timing_cache,
        )
    except TensorRTUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'built' if built else 'reused'} {path} (key {spec.key()})")
    if args.bench:
        import torch

        from sam_unet.export.onnx import example_inputs
        from sam_unet.runtime.backends import make_backend

        backend = make_backend("tensorrt", engine_path=path, device="cuda")
        print(backend.describe())
        for batch in (1, 32):
            images, boxes = example_inputs(batch, device="cuda")
            for _ in range(3):
                backend.run(images, boxes)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(20):
                backend.run(images, boxes)
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end) / 20
            print(f"batch {batch}: {ms:.2f} ms, {batch / ms * 1e3:.0f} slices/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
