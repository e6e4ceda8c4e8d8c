"""``sam-unet segment``: NIfTI file(s) in, uint8 label NIfTI file(s) out.

Under torchrun (RANK / WORLD_SIZE set) the file list is sharded by rank, so several GPUs or
nodes share one input folder; each rank uses the GPU of its LOCAL_RANK when ``--device cuda``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True, help="a .nii/.nii.gz file or a folder")
    parser.add_argument("-o", "--output", required=True,
                        help="output file (for one input) or folder (created if missing)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="SAM-UNet checkpoint (.pt)")
    src.add_argument("--onnx", help="exported ONNX model")
    src.add_argument("--engine", help="TensorRT engine file")
    parser.add_argument("--backend", default="auto",
                        choices=["auto", "torch", "onnxruntime", "tensorrt"])
    parser.add_argument("--variant", default=None,
                        help="model variant if the checkpoint lacks it (default: the "
                             "checkpoint's); with --onnx, the variant the file must hold")
    parser.add_argument("--force", action="store_true",
                        help="use an ONNX file that lacks SAM-UNet model metadata (or carries "
                             "another model's) anyway, with the default settings")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda when torch sees one)")
    parser.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--window", nargs=2, type=float, metavar=("LO", "HI"))
    parser.add_argument("--normalize", default=None, choices=["slice-minmax", "window"],
                        help="intensity to 8 bits: per-slice min-max (default, the "
                             "published recipe) or the fixed --window")
    parser.add_argument("--axis", type=int, default=-1, help="slicing axis after reorientation")
    parser.add_argument("--box", nargs=6, type=float, metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"),
                        help="3D box in voxels of the canonical (RAS) volume")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="skip inputs whose output already exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _rank() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sam_unet.runtime.engine import Engine
    from sam_unet.runtime.files import list_inputs, output_for, segment_file, shard

    rank, world, local_rank = _rank()
    device = args.device
    if device == "cuda" and world > 1:
        device = f"cuda:{local_rank}"
    inputs = list_inputs(args.input)
    out = Path(args.output)
    many = Path(args.input).is_dir() or len(inputs) > 1
    if many:
        out.mkdir(parents=True, exist_ok=True)
    mine = shard(inputs, rank, world)
    todo = [(f, output_for(f, out, many)) for f in mine]
    if args.resume:
        todo = [(f, o) for f, o in todo if not o.exists()]
    if not todo:
        if not args.quiet:
            print(f"[rank {rank}] nothing to do")
        _report(rank, world, 0, 0)
        return 0

    if args.checkpoint:
        engine = Engine.from_checkpoint(args.checkpoint, backend=args.backend, device=device,
                                        precision=args.precision, batch_size=args.batch_size,
                                        variant=args.variant)
    elif args.onnx:
        engine = Engine.from_onnx(args.onnx, backend=args.backend, device=device,
                                  precision=args.precision, batch_size=args.batch_size,
                                  variant=args.variant, force=args.force)
    else:
        engine = Engine.from_engine_file(args.engine, device=device, batch_size=args.batch_size)
    if not args.quiet:
        print(f"[rank {rank}/{world}] {engine.describe()}", file=sys.stderr)

    normalize = args.normalize or "slice-minmax"
    done = 0
    failures = 0
    bar = tqdm(todo, disable=args.quiet, unit="vol", desc=f"segment[{rank}]")
    for in_file, out_file in bar:
        try:
            segment_file(in_file, out_file, engine, axis=args.axis, window=args.window,
                         normalize=normalize, boxes=args.box, batch_size=args.batch_size)
        except (ValueError, OSError, RuntimeError) as exc:
            if args.debug:
                raise
            failures += 1
            print(f"sam-unet segment: error: {in_file}: {exc}", file=sys.stderr)
            continue
        done += 1
        s = engine.last_stats
        bar.set_postfix_str(f"{s.slices / max(s.seconds, 1e-9):.0f} slices/s")
    _report(rank, world, done, failures)
    return 1 if failures else 0


def _report(rank: int, world: int, done: int, failures: int) -> None:
    """Under torchrun, gather every rank's counts over a gloo group and print them on rank 0."""
    if world == 1:
        return
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo")
    try:
        counts: list = [None] * world
        dist.all_gather_object(counts, (rank, done, failures))
        if rank == 0:
            for r, d, f in counts:
                print(f"rank {r} segmented {d} file(s), {f} failed", file=sys.stderr)
    finally:
        if owned:
            dist.destroy_process_group()
