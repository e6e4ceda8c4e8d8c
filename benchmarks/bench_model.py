"""Model throughput vs the published-style eager fp32 baseline, in one process.

    python benchmarks/bench_model.py --device cuda --variant res34 --batches 1 32 64
"""

from __future__ import annotations

import argparse

from sam_unet.bench.ceilings import matmul_tflops
from sam_unet.bench.model import run_model_bench
from sam_unet.bench.report import markdown_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variant", default="tiny")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--configs", nargs="+", default=None,
                   help="backend:precision pairs, e.g. torch:fp16 torch:bf16")
    p.add_argument("--runs", type=int, default=10)
    a = p.parse_args()
    cuda = a.device.startswith("cuda")
    configs = tuple(tuple(c.split(":")) for c in a.configs) if a.configs else (
        (("torch", "fp16"), ("torch", "bf16")) if cuda else (("torch", "fp32"),))
    ceiling = matmul_tflops(a.device)
    rows = run_model_bench(a.variant, a.device, batches=tuple(a.batches), configs=configs,
                           runs=a.runs)
    for r in rows:
        r["pct_of_ceiling"] = 100 * r["tflops"] / ceiling["tflops"]
    print(f"ceiling: {ceiling['what']} {ceiling['tflops']:.1f} TFLOP/s")
    print(markdown_table(rows, ["variant", "backend", "precision", "batch", "slices_per_s",
                                "gflop_per_slice", "tflops", "pct_of_ceiling"]))


if __name__ == "__main__":
    main()
