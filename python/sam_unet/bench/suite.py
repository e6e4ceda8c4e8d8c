"""The whole benchmark suite: ceilings, model throughput, native ops, end to end.

``size="small"`` runs everything at CPU-friendly sizes (a smoke test, not a timing claim);
``size="full"`` uses the sizes the GPU figures are quoted at (res34, batches 1, 32 and 64,
512x512x300 int16 volumes).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, Any]] = {
    "small": {"variant": "tiny", "batches": (1, 4), "volume": (96, 80, 8), "folder": 2,
              "memory_volume": None, "ops_volume": (128, 112, 8), "runs": 3},
    "full": {"variant": "res34", "batches": (1, 32, 64), "volume": (512, 512, 300), "folder": 4,
             "memory_volume": (512, 512, 1000), "ops_volume": (512, 512, 300), "runs": 10},
}


def environment(device: str) -> dict[str, Any]:
    import torch

    from sam_unet import __version__
    from sam_unet._native import build_info

    env = {"sam_unet": __version__, "torch": torch.__version__, "device": device,
           "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "native": build_info()}
    if device.startswith("cuda"):
        env["device_name"] = torch.cuda.get_device_name(device)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return env


PARTS = ("ceilings", "model", "ops", "pipeline")


def run_suite(*, device: str = "cpu", size: str = "small", parts: tuple[str, ...] = PARTS,
              variant: str | None = None, configs: tuple[tuple[str, str], ...] | None = None,
              batches: tuple[int, ...] | None = None, runs: int | None = None,
              volume: tuple[int, int, int] | None = None, engine_path: str | None = None,
              quiet: bool = False) -> dict:
    """Run the selected parts and return the results dict (see report.write_all).

    ``size`` picks the defaults (:data:`SIZES`); ``variant``, ``batches`` (model batch sizes),
    ``runs`` (timed runs per figure), ``volume`` (the end-to-end volume shape) and ``configs``
    ((backend, precision) pairs of the model part) replace them. ``engine_path``: the TensorRT
    engine a ("tensorrt", ...) config runs."""
    import tempfile

    from sam_unet.bench.ceilings import copy_gbps, matmul_tflops

    cfg = dict(SIZES[size])
    for key, value in (("batches", batches), ("runs", runs), ("volume", volume)):
        if value is not None:
            cfg[key] = value
    variant = variant or cfg["variant"]
    cuda = device.startswith("cuda")
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    results: dict[str, Any] = {"env": environment(device), "size": size}
    ceil_tflops = ceil_gbps = None
    if "ceilings" in parts:
        say("ceilings ...")
        mm, cp = matmul_tflops(device), copy_gbps(device)
        results["ceilings"] = [mm, cp]
        ceil_tflops, ceil_gbps = mm["tflops"], cp["gbps"]
    if "model" in parts:
        from sam_unet.bench.model import run_model_bench

        say(f"model {variant} ...")
        if configs is None:
            configs = (("torch", "fp16"), ("torch", "bf16")) if cuda else (("torch", "fp32"),
                                                                            ("onnxruntime", "fp32"))
        onnx_path = None
        if any(b == "onnxruntime" for b, _ in configs):
            from sam_unet.export.onnx import export_onnx
            from sam_unet.models.build import build_model

            tmp = Path(tempfile.mkdtemp(prefix="sam_unet_bench_"))
            import torch

            torch.manual_seed(0)
            onnx_path = str(export_onnx(build_model(variant, fast=False).eval(),
                                        tmp / "model.onnx"))
        rows = run_model_bench(variant, device, batches=cfg["batches"], configs=configs,
                               runs=cfg["runs"], onnx_path=onnx_path, engine_path=engine_path)
        for r in rows:
            if ceil_tflops:
                r["pct_of_ceiling"] = 100.0 * r["tflops"] / ceil_tflops
        results["model"] = rows
    if "ops" in parts:
        from sam_unet.bench.ops_bench import run_ops_bench, speedups

        say("ops ...")
        rows = run_ops_bench(cfg["ops_volume"], device, runs=cfg["runs"])
        for r in rows:
            if ceil_gbps and ("CUDA" in r["path"]) == cuda:
                r["pct_of_copy"] = 100.0 * r["gbps"] / ceil_gbps
        results["ops"] = rows
        results["ops_speedups"] = speedups(rows)
    if "pipeline" in parts:
        import torch

        from sam_unet.bench.pipeline import peak_memory_row, run_pipeline_bench
        from sam_unet.models.build import build_model
        from sam_unet.runtime.backends import make_backend
        from sam_unet.runtime.engine import Engine

        say("end to end ...")
        torch.manual_seed(0)
        model = build_model(variant).eval()
        precision = "fp16" if cuda else "fp32"
        batch = 64 if cuda else 8
        engine = Engine(make_backend("torch", model=model, device=device, precision=precision,
                                     max_batch=batch), batch_size=batch)
        rows = run_pipeline_bench(engine, cfg["volume"], runs=cfg["runs"] if cuda else 2,
                                  folder_volumes=cfg["folder"])
        if cuda and cfg["memory_volume"]:
            rows.append(peak_memory_row(engine, cfg["memory_volume"]))
        results["pipeline"] = rows
    return results
