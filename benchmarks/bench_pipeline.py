"""End to end: host int16 volume -> host uint8 mask, plus a folder and peak device memory.

    python benchmarks/bench_pipeline.py --device cuda --variant res34 --shape 512 512 300
"""

from __future__ import annotations

import argparse

import torch

from sam_unet.bench.pipeline import peak_memory_row, run_pipeline_bench
from sam_unet.bench.report import markdown_table
from sam_unet.models.build import build_model
from sam_unet.runtime.backends import make_backend
from sam_unet.runtime.engine import Engine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variant", default="tiny")
    p.add_argument("--precision", default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--shape", type=int, nargs=3, default=[128, 128, 16])
    p.add_argument("--folder", type=int, default=0, help="also time a folder of N volumes")
    p.add_argument("--memory-z", type=int, default=0, help="peak memory for a volume of this Z")
    a = p.parse_args()
    cuda = a.device.startswith("cuda")
    torch.manual_seed(0)
    batch = a.batch or (64 if cuda else 8)
    backend = make_backend("torch", model=build_model(a.variant).eval(), device=a.device,
                           precision=a.precision or ("fp16" if cuda else "fp32"), max_batch=batch)
    engine = Engine(backend, batch_size=batch)
    rows = run_pipeline_bench(engine, tuple(a.shape), folder_volumes=a.folder)
    if a.memory_z:
        rows.append(peak_memory_row(engine, (a.shape[0], a.shape[1], a.memory_z)))
    print(engine.describe())
    print(markdown_table(rows, ["what", "backend", "precision", "seconds", "slices_per_s",
                                "peak_device_mib", "stages"]))


if __name__ == "__main__":
    main()
