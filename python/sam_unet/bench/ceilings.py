"""The ceilings results are measured against, on the same device in the same run."""

from __future__ import annotations

from sam_unet.bench.timing import time_fn


def matmul_tflops(device: str, *, n: int | None = None, dtype: str | None = None) -> dict:
    """Achieved dense matmul TFLOP/s: fp16 8192^3 on a GPU, fp32 1024^3 on the CPU."""
    import torch

    cuda = device.startswith("cuda")
    n = n or (8192 if cuda else 1024)
    dt = getattr(torch, dtype) if dtype else (torch.float16 if cuda else torch.float32)
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    t = time_fn(lambda: a @ b, device=device, warmup=3, runs=10 if cuda else 5)
    return {"what": f"matmul {n}^3 {str(dt).replace('torch.', '')}",
            "tflops": 2 * n**3 / t.median / 1e12, "seconds": t.median}


def copy_gbps(device: str, *, nbytes: int | None = None) -> dict:
    """Achieved copy bandwidth, bytes read + written per second (device-to-device on a GPU)."""
    import torch

    cuda = device.startswith("cuda")
    nbytes = nbytes or ((1 << 30) if cuda else (256 << 20))
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device=device, warmup=3, runs=20 if cuda else 5)
    return {"what": f"copy {nbytes >> 20} MiB", "gbps": 2 * nbytes / t.median / 1e9,
            "seconds": t.median}
