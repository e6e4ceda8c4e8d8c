"""Propagation and interactive sessions: what one box on one slice costs.

On the bundled MNI152 T1 with the demo model (or a checkpoint you name):

- propagation: ``engine.propagate(volume, k, box)`` from the white matter's box on axial slice
  ``k`` through the N slices of the structure, against segmenting the same N slices with given
  per-slice boxes (``engine.segment(volume, boxes={slice: box})``, the pipeline's batched
  whole-model pass), timed in alternated pairs: the median ratio should stay at or under 1.2;
- a session: the first ``predict`` on a slice (encoder + decoder) and a cached one (decoder
  only), in milliseconds.

With ``--variant res34`` (or res50) the same cost comparison runs on random weights of a
deployment variant, whose encoder dominates as it does in practice (the masks mean nothing
there, so the walk goes to the crop's edges).

A benchmark, not a test::

    python -m sam_unet.bench.propagation --backend onnxruntime --threads 2 --runs 3
    python -m sam_unet.bench.propagation --backend torch --variant res34 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sam_unet.bench.timing import time_fn


def _box(mask2d: np.ndarray) -> tuple[int, int, int, int] | None:
    xs, ys = np.flatnonzero(mask2d.any(1)), np.flatnonzero(mask2d.any(0))
    if not len(xs):
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])


def _dice(a: Any, b: Any) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def make_engine(backend: str, checkpoint: Path, workdir: Path, batch_size: int,
                threads: int | None = None) -> Any:
    """The engine to measure: torch from the checkpoint, or ONNX Runtime (``threads`` intra-op
    threads) from a fresh export of the whole model and its encoder/decoder graphs."""
    from sam_unet.runtime.engine import Engine

    if backend == "torch":
        return Engine.from_checkpoint(checkpoint, device="cpu", backend="torch",
                                      batch_size=batch_size)
    from sam_unet.checkpoints import load_model
    from sam_unet.export.onnx import export_onnx
    from sam_unet.export.onnx_split import export_split_onnx

    model = load_model(checkpoint)
    path = workdir / "model.onnx"
    export_onnx(model, path, checkpoint=checkpoint)
    export_split_onnx(model, path)
    from sam_unet.export.onnx import read_metadata
    from sam_unet.model_info import ONNX_METADATA_KEY, ModelInfo
    from sam_unet.runtime.backends import make_backend

    b = make_backend("onnxruntime", onnx_path=path, max_batch=batch_size, threads=threads)
    info = ModelInfo.from_json(read_metadata(path)[ONNX_METADATA_KEY])
    return Engine(b, batch_size=batch_size, source=str(path), model_info=info)


def run_propagation_bench(engine: Any, volume: np.ndarray, reference: np.ndarray, k: int, *,
                          runs: int = 3, predict_runs: int = 30) -> dict[str, Any]:
    """Median seconds of propagation vs given boxes on the same slices, session latencies,
    and the Dice figures."""
    import time

    box = _box(reference[:, :, k])
    mask = engine.propagate(volume, k, box)  # warm-up, and the slices it walks
    report = engine.last_propagation
    # the same slices with given boxes: each slice's mask box grown by the walk's margin
    from sam_unet.runtime.propagate import DEFAULT_MARGIN, grow_box

    given = {}
    for z in report.slices:
        b = _box(mask[:, :, z])
        if b is not None:
            given[z] = grow_box(np.asarray(b, float), DEFAULT_MARGIN, mask.shape[:2]).tolist()
    engine.segment(volume, boxes=given)
    # alternated pairs, so a slow spell of a shared machine weighs on both sides alike
    prop_s, given_s = [], []
    for _ in range(runs):
        prop_s.append(time_fn(lambda: engine.propagate(volume, k, box), warmup=0, runs=1).median)
        given_s.append(time_fn(lambda: engine.segment(volume, boxes=given), warmup=0,
                               runs=1).median)
    pair_ratios = [p / g for p, g in zip(prop_s, given_s, strict=True)]
    full = engine.segment(volume)

    session = engine.session(volume)
    t0 = time.perf_counter()
    session.predict(k, box)
    first = time.perf_counter() - t0
    cached = time_fn(lambda: session.predict(k, box), warmup=2, runs=predict_runs)
    return {
        "seed_slice": k, "seed_box": list(box), "slices": len(report.slices),
        "extent": list(report.extent or ()), "stopped": report.stopped,
        "encoded": report.encoded, "unused_lookahead": report.unused,
        "propagate_s": float(np.median(prop_s)), "given_boxes_s": float(np.median(given_s)),
        "ratio": float(np.median(pair_ratios)), "pair_ratios": pair_ratios,
        "encoder_calls": report.encoder_calls, "decoder_calls": report.decoder_calls,
        "first_predict_ms": first * 1e3, "cached_predict_ms": cached.median * 1e3,
        "cached_predict_p90_ms": cached.p90 * 1e3,
        "dice_vs_full_slice": _dice(mask, full), "dice_vs_reference": _dice(mask, reference),
        "dice_full_slice_vs_reference": _dice(full, reference),
    }


def run_cost_bench(engine: Any, volume: np.ndarray, k: int, box: tuple[int, int, int, int], *,
                   runs: int = 3) -> dict[str, Any]:
    """Cost only, for a model whose masks mean nothing (random weights of a deployment
    variant): the walk runs with ``min_area=1`` (to the volume's edges where the masks never
    vanish) and the same slices are segmented with the boxes the walk decoded with; alternated
    pairs, median ratio."""
    engine.propagate(volume, k, box, min_area=1)
    report = engine.last_propagation
    given = dict(report.boxes)
    engine.segment(volume, boxes=given)
    prop_s, given_s = [], []
    for _ in range(runs):
        prop_s.append(time_fn(lambda: engine.propagate(volume, k, box, min_area=1), warmup=0,
                              runs=1).median)
        given_s.append(time_fn(lambda: engine.segment(volume, boxes=given), warmup=0,
                               runs=1).median)
    ratios = [p / g for p, g in zip(prop_s, given_s, strict=True)]
    return {"seed_slice": k, "seed_box": list(box), "slices": len(report.slices),
            "encoded": report.encoded, "propagate_s": float(np.median(prop_s)),
            "given_boxes_s": float(np.median(given_s)), "ratio": float(np.median(ratios)),
            "pair_ratios": ratios}


def _ratio_text(row: dict[str, Any]) -> str:
    pairs = ", ".join(f"{r:.2f}" for r in row["pair_ratios"])
    return (f"the same slices with given boxes: {row['given_boxes_s']:.2f} s; ratio "
            f"{row['ratio']:.2f} (median of {len(row['pair_ratios'])} alternated pairs: {pairs})")


def _cost_main(args: argparse.Namespace, volume: np.ndarray) -> int:
    """--variant res34|res50: the cost benchmark with random weights (see run_cost_bench) on a
    160x190x12 crop of the MNI152 T1."""
    import torch

    from sam_unet.checkpoints import save_checkpoint
    from sam_unet.models.build import build_model

    torch.manual_seed(0)
    crop = np.ascontiguousarray(volume[20:180, 20:210, 90:102])
    with tempfile.TemporaryDirectory(prefix="sam-unet-bench-") as tmp:
        ckpt = Path(tmp) / f"{args.variant}.pt"
        save_checkpoint(build_model(args.variant).eval(), ckpt)
        engine = make_engine(args.backend, ckpt, Path(tmp), args.batch_size, args.threads)
        row = run_cost_bench(engine, crop, 6, (20, 20, 140, 170), runs=args.runs)
    print(f"engine: {engine.describe()} (random weights: cost only)")
    print(f"propagation through {row['slices']} slices of a {crop.shape} crop in "
          f"{row['propagate_s']:.2f} s (encoded {row['encoded']}); {_ratio_text(row)}")
    if args.json:
        args.json.write_text(json.dumps(row, indent=1) + "\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    import torch

    from sam_unet.data import mni152

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="onnxruntime")
    p.add_argument("--checkpoint", type=Path,
                   default=Path(__file__).resolve().parents[1] / "assets" / "demo_tiny.pt")
    p.add_argument("--slice", type=int, default=100, help="the prompted axial slice")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--runs", type=int, default=5, help="alternated (propagate, given) pairs")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--variant", choices=("demo", "res34", "res50"), default="demo",
                   help="demo: the demo checkpoint (or --checkpoint) on the white matter, with "
                        "Dice and session figures; res34/res50: cost only, random weights of a "
                        "deployment variant walked through a 12-slice crop")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    t1, wm = mni152.load_t1_and_wm_mask()
    if args.variant != "demo":
        return _cost_main(args, np.asarray(t1.data))
    with tempfile.TemporaryDirectory(prefix="sam-unet-bench-") as tmp:
        engine = make_engine(args.backend, args.checkpoint, Path(tmp), args.batch_size,
                             args.threads)
        row = run_propagation_bench(engine, np.asarray(t1.data), wm, args.slice, runs=args.runs)
    row.update(backend=engine.describe(), threads=torch.get_num_threads(),
               cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
               load_1min=os.getloadavg()[0])
    print(f"engine: {row['backend']}")
    print(f"propagation from slice {row['seed_slice']}: {row['slices']} slices "
          f"{row['extent']} in {row['propagate_s']:.2f} s (encoded {row['encoded']}, "
          f"{row['unused_lookahead']} ahead unused); {_ratio_text(row)}; "
          f"{row['encoder_calls']} encoder calls, {row['decoder_calls']} decoder calls")
    print(f"session: first predict {row['first_predict_ms']:.1f} ms, cached predict "
          f"{row['cached_predict_ms']:.1f} ms (p90 {row['cached_predict_p90_ms']:.1f} ms)")
    print(f"Dice: propagated vs full-slice {row['dice_vs_full_slice']:.4f}, vs reference "
          f"{row['dice_vs_reference']:.4f} (full-slice vs reference "
          f"{row['dice_full_slice_vs_reference']:.4f}); load {row['load_1min']:.1f} on "
          f"{row['cores']} cores")
    if args.json:
        args.json.write_text(json.dumps(row, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
