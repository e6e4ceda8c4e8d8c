"""One structure versus several on the same slices: what ``segment_structures`` costs.

Each slice is encoded once and decoded once per structure (when the backend can split the
model), so N structures should cost little more than one: the image encoder is most of the
model. A benchmark, not a test: ``python -m sam_unet.bench.structures`` prints the table::

    python -m sam_unet.bench.structures --variant res34 --slices 8 --structures 1 5
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from sam_unet.bench.pipeline import synthetic_ct
from sam_unet.bench.timing import time_fn


def structure_boxes(shape: tuple[int, int, int], count: int) -> list[list[float]]:
    """``count`` different 3D boxes, each over every slice (axis 2) of ``shape``."""
    x, y, z = shape
    boxes = []
    for i in range(count):
        f = i / max(count, 1)
        x0, y0 = int(x * (0.1 + 0.3 * f)), int(y * (0.15 + 0.25 * f))
        boxes.append([x0, y0, 0, min(x - 1, x0 + x // 3), min(y - 1, y0 + y // 3), z - 1])
    return boxes


def run_structures_bench(engine: Any, shape: tuple[int, int, int] = (256, 256, 8), *,
                         counts: tuple[int, ...] = (1, 5), runs: int = 3) -> list[dict]:
    """Median seconds of ``segment_structures`` with each count of structures on the same
    ``shape[2]`` slices, and the ratio to one structure."""
    from sam_unet.runtime.prompts import StructurePrompt

    vol = synthetic_ct(shape)
    rows = []
    base = None
    for count in counts:
        prompts = [StructurePrompt(name=f"s{i + 1}", label=i + 1, boxes=np.asarray(b))
                   for i, b in enumerate(structure_boxes(shape, count))]
        engine.segment_structures(vol, prompts)  # warm-up
        t = time_fn(lambda p=prompts: engine.segment_structures(vol, p), warmup=0, runs=runs)
        stats = engine.last_stats
        base = base or t.median
        rows.append({
            "structures": count, "slices": shape[2], "seconds": t.median,
            "p10": t.p10, "p90": t.p90, "ratio_to_one": t.median / base,
            "backend_calls": stats.backend_calls,
            "split": bool(getattr(engine.backend, "can_split", False)),
            "stages": {k: round(v, 4) for k, v in stats.stages.items() if v},
        })
    return rows


def split_costs(engine: Any, batch: int, *, runs: int = 3) -> dict[str, float] | None:
    """Median seconds of one encoder pass and one decoder pass on ``batch`` slices (None when
    the backend cannot split): N structures should cost about encode + N * decode."""
    import torch

    backend = engine.backend
    if not getattr(backend, "can_split", False):
        return None
    images = torch.zeros((batch, 3, 256, 256), dtype=torch.float32)
    boxes = torch.tensor([[20.0, 30.0, 180.0, 200.0]] * batch)
    emb, feats = backend.encode(images)
    enc = time_fn(lambda: backend.encode(images), warmup=0, runs=runs).median
    dec = time_fn(lambda: backend.decode(emb, feats, boxes), warmup=1, runs=runs).median
    return {"encode_s": enc, "decode_s": dec, "predicted_5_to_1": (enc + 5 * dec) / (enc + dec)}


def _engine(variant: str, device: str, batch_size: int, seed: int) -> Any:
    import torch

    from sam_unet.models.build import build_model
    from sam_unet.runtime.backends import make_backend
    from sam_unet.runtime.engine import Engine

    torch.manual_seed(seed)  # randomly initialised: the cost does not depend on the weights
    model = build_model(variant).eval()
    backend = make_backend("torch", model=model, device=device, precision="fp32",
                           max_batch=batch_size)
    return Engine(backend, batch_size=batch_size, source=f"random {variant}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="res34")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("X", "Y"))
    parser.add_argument("--structures", type=int, nargs="+", default=(1, 5))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print JSON rows only")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    engine = _engine(args.variant, args.device, args.batch_size, 0)
    rows = run_structures_bench(engine, (*args.size, args.slices),
                                counts=tuple(args.structures), runs=args.runs)
    split = split_costs(engine, min(args.batch_size, args.slices), runs=args.runs)
    if args.json:
        print(json.dumps({"rows": rows, "split": split}, indent=2))
        return 0
    print(f"{engine.describe()}; {args.slices} slices of {args.size[0]}x{args.size[1]}")
    print("structures  seconds (p10-p90)      x one  backend calls  stages")
    for r in rows:
        stages = " ".join(f"{k}={v:.2f}s" for k, v in r["stages"].items())
        print(f"{r['structures']:>10}  {r['seconds']:7.2f} ({r['p10']:.2f}-{r['p90']:.2f})"
              f"  {r['ratio_to_one']:5.2f}  {r['backend_calls']:>13}  {stages}")
    if split is not None:
        print(f"one pass on {min(args.batch_size, args.slices)} slices: encoder "
              f"{split['encode_s']:.3f} s, decoder {split['decode_s']:.3f} s -> 5 structures "
              f"should cost {split['predicted_5_to_1']:.3f}x one")
    else:
        print("the backend cannot split the model: every structure runs the whole model")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
