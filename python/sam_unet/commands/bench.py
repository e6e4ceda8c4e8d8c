"""``sam-unet bench``: the benchmark suite, printed as a table and saved as JSON/Markdown/PNG
(``EXAMPLES`` below, shown by ``--help``)."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """\
  sam-unet bench                                   everything, sized for the device
  sam-unet bench --parts ceilings,model --variant res34 --batches 1 32 64
  sam-unet bench --parts model --configs tensorrt:fp16 --engine model.engine
  sam-unet bench --parts pipeline --volume 512 512 300"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda when torch sees one, else cpu)")
    parser.add_argument("--size", choices=["small", "full"], default=None,
                        help="small (CPU smoke sizes) or full (res34, batches 1/32/64, "
                             "512x512x300 volumes) (default: full on a GPU, small on the CPU)")
    parser.add_argument("--parts", default="ceilings,model,ops,pipeline",
                        help="comma-separated subset of ceilings,model,ops,pipeline")
    parser.add_argument("--variant", default=None, help="model variant (default: by --size)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, metavar="B",
                        help="model batch sizes (default: by --size)")
    parser.add_argument("--configs", nargs="+", default=None, metavar="BACKEND:PRECISION",
                        help="model configurations, e.g. torch:fp16 torch-compile:fp16 "
                             "onnxruntime:fp32 tensorrt:fp16 (default: torch fp16 and bf16 on "
                             "a GPU; torch and onnxruntime fp32 on the CPU)")
    parser.add_argument("--engine", default=None,
                        help="TensorRT engine file for a tensorrt configuration")
    parser.add_argument("--volume", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                        help="end-to-end volume shape (default: by --size)")
    parser.add_argument("--runs", type=int, default=None,
                        help="timed runs per figure, the median is reported (default: by --size)")
    parser.add_argument("-o", "--output", default="bench-results", help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    from sam_unet.bench.report import render_markdown, write_all
    from sam_unet.bench.suite import run_suite
    from sam_unet.runtime.devices import resolve_device

    device = resolve_device(args.device)
    size = args.size or ("full" if device.startswith("cuda") else "small")
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = set(parts) - {"ceilings", "model", "ops", "pipeline"}
    if unknown:
        raise ValueError(f"unknown --parts {sorted(unknown)}")
    configs = _configs(args.configs) if args.configs else None
    if configs and any(b == "tensorrt" for b, _ in configs) and not args.engine:
        raise ValueError("--configs tensorrt:...: pass the engine to time with --engine "
                         "(sam-unet build-engine makes one)")
    for name, values in (("--batches", args.batches), ("--volume", args.volume),
                         ("--runs", [args.runs] if args.runs is not None else None)):
        if values is not None and min(values) < 1:
            raise ValueError(f"{name} {' '.join(map(str, values))}: must be positive")
    results = run_suite(device=device, size=size, parts=parts, variant=args.variant,
                        configs=configs, engine_path=args.engine,
                        batches=tuple(args.batches) if args.batches else None,
                        volume=tuple(args.volume) if args.volume else None, runs=args.runs,
                        quiet=args.quiet)
    paths = write_all(results, Path(args.output))
    print(render_markdown(results))
    print(f"\nwritten: {', '.join(str(p) for p in paths.values())}")
    return 0


def _configs(items: list[str]) -> tuple[tuple[str, str], ...]:
    """["torch:fp16", "onnxruntime:fp32"] -> (("torch", "fp16"), ("onnxruntime", "fp32"))."""
    backends = ("torch", "torch-compile", "onnxruntime", "tensorrt")
    out = []
    for item in items:
        backend, sep, precision = item.partition(":")
        if not sep or backend not in backends or precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"--configs {item!r}: expected BACKEND:PRECISION with BACKEND one "
                             f"of {', '.join(backends)} and PRECISION fp32, fp16 or bf16")
        out.append((backend, precision))
    return tuple(out)
