"""``sam-unet bench``: the benchmark suite, printed as a table and saved as JSON/Markdown/PNG."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--size", choices=["small", "full"], default=None,
                        help="small (CPU smoke sizes) or full (PERFORMANCE.md sizes); "
                             "default: full on a GPU, small on the CPU")
    parser.add_argument("--parts", default="ceilings,model,ops,pipeline",
                        help="comma-separated subset of ceilings,model,ops,pipeline")
    parser.add_argument("--variant", default=None, help="model variant (default by size)")
    parser.add_argument("-o", "--output", default="bench-results", help="output folder")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--debug", action="store_true")


def run(args: argparse.Namespace) -> int:
    from sam_unet.bench.report import render_markdown, write_all
    from sam_unet.bench.suite import run_suite
    from sam_unet.runtime.engine import _resolve_device

    device = _resolve_device(args.device)
    size = args.size or ("full" if device.startswith("cuda") else "small")
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = set(parts) - {"ceilings", "model", "ops", "pipeline"}
    if unknown:
        raise ValueError(f"unknown --parts {sorted(unknown)}")
    results = run_suite(device=device, size=size, parts=parts, variant=args.variant,
                        quiet=args.quiet)
    paths = write_all(results, Path(args.output))
    print(render_markdown(results))
    print(f"\nwritten: {', '.join(str(p) for p in paths.values())}")
    return 0
