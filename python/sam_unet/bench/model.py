"""Model throughput: slices/s and achieved TFLOP/s by backend, precision and batch size.

The baseline is the published-style forward: fp32, eager, plain padded-window attention
(``build_model(variant, fast=False)``), run in the same process on the same device.
"""

from __future__ import annotations

from typing import Any

from sam_unet.bench.timing import time_fn


def flops_per_slice(model: Any, *, device: str = "cpu") -> float:
    """FLOPs of one 256x256 slice through ``model`` (matmuls, convs, attention), counted by
    torch's FlopCounterMode on a batch of 1 in fp32."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    images = torch.zeros(1, 3, 256, 256, device=device)
    boxes = torch.tensor([[10.0, 10.0, 200.0, 200.0]], device=device)
    # Parameters are detached instead of using no_grad: FlopCounterMode's module tracker hooks
    # choke on views of grad-requiring parameters made under no_grad.
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            model(images, boxes)
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
    return float(counter.get_total_flops())


def _inputs(batch: int, device: str, dtype: Any) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 256, 256, generator=g).to(device=device, dtype=dtype)
    xy = torch.rand(batch, 2, generator=g) * 120
    boxes = torch.cat([xy, xy + 100], dim=1).to(device)
    return images, boxes


def run_model_bench(variant: str, device: str, *, batches: tuple[int, ...],
                    configs: tuple[tuple[str, str], ...], runs: int = 10,
                    onnx_path: str | None = None, engine_path: str | None = None,
                    baseline: bool = True) -> list[dict]:
    """Time each (backend, precision) at each batch size; one row per measurement.

    configs: pairs like ("torch", "fp16"), ("torch-compile", "fp16"), ("onnxruntime", "fp32"),
    ("tensorrt", "fp16"). onnxruntime runs ``onnx_path`` (skipped without one); tensorrt runs
    the engine file ``engine_path`` (its precision is the engine's; the FLOPs counted are those
    of the same variant, so the engine must be built from it).
    Each row: variant, backend, precision, batch, seconds, slices_per_s, gflop_per_slice, tflops.
    """
    import torch

    from sam_unet.models.build import build_model
    from sam_unet.runtime.backends import make_backend

    rows: list[dict] = []
    torch.manual_seed(0)
    plain = build_model(variant, fast=False).eval().to(device)
    flops_plain = flops_per_slice(plain, device=device)
    fast = build_model(variant, fast=True).eval()
    fast.load_state_dict(plain.state_dict())
    fast = fast.to(device)
    flops_fast = flops_per_slice(fast, device=device)
    del fast

    def record(backend: str, precision: str, batch: int, seconds: float, flops: float) -> None:
        sps = batch / seconds
        rows.append({
            "variant": variant, "backend": backend, "precision": precision, "batch": batch,
            "seconds": seconds, "slices_per_s": sps, "gflop_per_slice": flops / 1e9,
            "tflops": flops * sps / 1e12, "device": device,
        })

    if baseline:
        for b in batches:
            images, boxes = _inputs(b, device, torch.float32)
            with torch.no_grad():
                t = time_fn(lambda images=images, boxes=boxes: plain(images, boxes),
                            device=device, runs=runs)
            record("eager-baseline", "fp32", b, t.median, flops_plain)
    for backend, precision in configs:
        kind = "torch" if backend.startswith("torch") else backend
        kwargs: dict[str, Any] = {}
        if kind == "onnxruntime":
            if onnx_path is None:
                continue
            kwargs["onnx_path"] = onnx_path
        elif kind == "tensorrt":
            if engine_path is None:
                raise ValueError("the tensorrt configuration needs an engine file (--engine)")
            kwargs["engine_path"] = engine_path
        else:
            model = build_model(variant, fast=True).eval()
            model.load_state_dict(plain.state_dict())
            kwargs["model"] = model
            if backend == "torch-compile":
                kwargs["compile"] = True
        for b in batches:
            be = make_backend(kind, device=device, precision=precision, max_batch=b, **kwargs)
            in_dtype = getattr(be, "input_dtype", None) or (
                torch.float16 if precision == "fp16" and kind == "torch" else torch.float32)
            images, boxes = _inputs(b, device, in_dtype)
            t = time_fn(lambda be=be, images=images, boxes=boxes: be.run(images, boxes),
                        device=device, runs=runs)
            record(backend, be.precision, b, t.median, flops_fast)
    return rows
