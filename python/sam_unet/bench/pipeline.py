"""End to end: an int16 volume in host memory to a uint8 mask in host memory, and a folder."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sam_unet.bench.timing import time_fn


def synthetic_ct(shape: tuple[int, int, int], *, seed: int = 0) -> np.ndarray:
    """A CT-like int16 volume: air, a body ellipse of soft tissue, bright bone-like blobs."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2 < 1
    sl = np.where(body, 40, -1000).astype(np.int16)
    vol = np.repeat(sl[:, :, None], shape[2], axis=2)
    vol += rng.integers(-20, 20, size=shape, dtype=np.int16)
    vol[(x**2 + y**2 < 0.05)[:, :, None].repeat(shape[2], 2)] = 700
    return vol


def run_pipeline_bench(engine: Any, shape: tuple[int, int, int], *, runs: int = 3,
                       folder_volumes: int = 0) -> list[dict]:
    """Time ``engine.segment`` on a host int16 volume (median of ``runs``), with per-stage
    seconds and peak device memory; optionally a folder of NIfTI volumes via segment_file."""
    from sam_unet.runtime.files import segment_file

    vol = synthetic_ct(shape)
    device = engine.backend.device
    engine.segment(vol)  # warm-up (CUDA graphs, allocator)
    t = time_fn(lambda: engine.segment(vol), device="cpu", warmup=0, runs=runs)
    st = engine.last_stats
    rows = [{
        "what": f"volume {shape[0]}x{shape[1]}x{shape[2]} int16 host->host",
        "backend": engine.backend.name, "precision": engine.backend.precision, "device": device,
        "seconds": t.median, "slices_per_s": shape[2] / t.median,
        "peak_device_mib": st.peak_device_bytes / 2**20,
        "stages": {k: round(v, 4) for k, v in st.stages.items()},
    }]
    if folder_volumes:
        import nibabel as nib

        with tempfile.TemporaryDirectory() as tmp:
            tmpd = Path(tmp)
            files = []
            for i in range(folder_volumes):
                p = tmpd / f"v{i}.nii.gz"
                nib.save(nib.Nifti1Image(synthetic_ct(shape, seed=i), np.eye(4)), str(p))
                files.append(p)
            (tmpd / "out").mkdir()

            def folder() -> None:
                for p in files:
                    segment_file(p, tmpd / "out" / p.name, engine)

            tf = time_fn(folder, device="cpu", warmup=0, runs=1)
            rows.append({
                "what": f"folder of {folder_volumes} NIfTI {shape[0]}x{shape[1]}x{shape[2]}",
                "backend": engine.backend.name, "precision": engine.backend.precision,
                "device": device, "seconds": tf.median,
                "slices_per_s": folder_volumes * shape[2] / tf.median,
                "peak_device_mib": engine.last_stats.peak_device_bytes / 2**20, "stages": {},
            })
    return rows


def peak_memory_row(engine: Any, shape: tuple[int, int, int]) -> dict:
    """Peak device memory while segmenting a long host volume (bounded by the slab size)."""
    vol = synthetic_ct(shape)
    engine.segment(vol)
    st = engine.last_stats
    return {"what": f"peak memory {shape[0]}x{shape[1]}x{shape[2]}",
            "backend": engine.backend.name, "precision": engine.backend.precision,
            "device": engine.backend.device, "seconds": st.seconds,
            "slices_per_s": shape[2] / st.seconds, "peak_device_mib": st.peak_device_bytes / 2**20,
            "stages": {}}
