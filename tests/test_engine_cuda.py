"""The CUDA engine against the CPU engine on the same checkpoint (marked gpu).

Real data: 70 axial slices of the bundled MNI152 T1 (uint8, Fortran order as nibabel gives it),
the trained demo model. With slabs of 32 the last slab is partial (32 + 32 + 6). Every
placement is run: host volumes in C and Fortran order (pinned double buffers), torch and CuPy
volumes on the device (read and written in place, negative strides included), dtypes converted
per slab on either side, in fp16 and bf16. Masks must equal the CPU engine's (fp32) except where
the CPU logit is small; the fraction of such voxels is bounded and printed.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import requires_cuda
from sam_unet.runtime.backends import make_backend
from sam_unet.runtime.engine import Engine
from sam_unet.runtime.prompts import StructurePrompt

pytestmark = [pytest.mark.gpu, requires_cuda]

DEVICE = "cuda:0"
DEMO_CKPT = Path(__file__).resolve().parents[1] / "python/sam_unet/assets/demo_tiny.pt"
# precision: (|CPU logit| below which a mask voxel may differ, largest fraction of such voxels)
TOLERANCE = {"fp16": (0.25, 5e-3), "bf16": (1.5, 1e-2)}


def _numpy(a):
    if isinstance(a, np.ndarray):
        return a
    if isinstance(a, torch.Tensor):
        return a.cpu().numpy()
    import cupy

    return cupy.asnumpy(a)


@pytest.fixture(scope="module")
def mni():
    import nibabel as nib

    from sam_unet.data import mni152

    t1, _ = mni152.paths()
    vol = np.asarray(nib.as_closest_canonical(nib.load(str(t1))).dataobj)[:, :, 60:130]
    assert vol.shape[2] == 70
    return vol


@pytest.fixture(scope="module")
def model():
    from sam_unet.checkpoints import load_model

    return load_model(DEMO_CKPT).eval()


@pytest.fixture(scope="module")
def cpu_engine(model):
    return Engine(make_backend("torch", model=model, device="cpu", precision="fp32",
                               max_batch=16), batch_size=16)


@pytest.fixture(scope="module")
def cpu_ref(cpu_engine, mni):
    """The CPU engine's mask and its logits at slice resolution (one full-slice structure)."""
    mask = cpu_engine.segment(mni)
    _, logits = cpu_engine.segment_structures(mni, [StructurePrompt("fg", 1)],
                                              return_scores=True)
    np.testing.assert_array_equal(mask, logits > 0)
    return mask, logits


@pytest.fixture(scope="module", params=["fp16", "bf16"])
def cuda_engine(request, model):
    backend = make_backend("torch", model=model, device=DEVICE, precision=request.param,
                           max_batch=32)
    return Engine(backend, batch_size=32)


def assert_close_to_cpu(got, cpu_ref, precision: str, what: str) -> None:
    mask, logits = cpu_ref
    got = _numpy(got)
    assert got.dtype == np.uint8 and got.shape == mask.shape
    tol, worst = TOLERANCE[precision]
    differ = got != mask
    frac = float(differ.mean())
    peak = float(np.abs(logits[differ]).max()) if differ.any() else 0.0
    print(f"\n[{what}, {precision}] {frac:.2e} of voxels differ from the CPU engine (fp32), "
          f"max |CPU logit| there {peak:.3g}; CPU foreground {mask.mean():.3f}")
    strong = differ & (np.abs(logits) >= tol)
    assert not strong.any(), f"{int(strong.sum())} voxels differ where |logit| >= {tol}"
    assert frac <= worst, f"{frac:.2e} of voxels differ (bound {worst:.0e})"


def test_native_module_sees_the_device():
    from sam_unet._native import build_info

    info = build_info()
    assert info["with_cuda"] and int(info["device_count"]) >= 1, info


def test_host_volumes(cuda_engine, mni, cpu_ref):
    precision = cuda_engine.backend.precision
    fortran = cuda_engine.segment(mni)
    st = cuda_engine.last_stats
    assert st.placement == "PinnedPlacement" and st.slabs == 3 and st.slices == 70
    for stage in ("gather", "upload", "preprocess", "model", "postprocess", "download",
                  "scatter"):
        assert st.stages[stage] > 0, stage
    assert st.peak_device_bytes > 0 and st.buffer_bytes > 0
    print(f"\n[host, {precision}] {st.slices / st.seconds:.0f} slices/s, stages "
          + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in st.stages.items()))
    c_order = cuda_engine.segment(np.ascontiguousarray(mni))
    np.testing.assert_array_equal(c_order, fortran)  # the same kernels on the same bytes
    assert_close_to_cpu(fortran, cpu_ref, precision, "host volume")


def test_device_volumes(cuda_engine, mni, cpu_ref):
    host = cuda_engine.segment(mni)
    dev = torch.from_numpy(np.ascontiguousarray(mni)).to(DEVICE)
    got = cuda_engine.segment(dev)
    assert isinstance(got, torch.Tensor) and got.is_cuda and got.dtype == torch.uint8
    assert cuda_engine.last_stats.placement == "DevicePlacement"
    assert cuda_engine.last_stats.stages["upload"] == 0.0
    np.testing.assert_array_equal(got.cpu().numpy(), host)
    strided = dev.permute(2, 0, 1).contiguous().permute(1, 2, 0)  # slice-major memory
    np.testing.assert_array_equal(cuda_engine.segment(strided).cpu().numpy(), host)
    assert_close_to_cpu(got, cpu_ref, cuda_engine.backend.precision, "torch device volume")


def test_cupy_volumes(cuda_engine, mni):
    """CuPy volumes go to the ops as they are (negative strides included); the mask comes back
    as CuPy."""
    try:
        import cupy
    except ImportError:
        pytest.skip("cupy not installed (put a cupy wheel in .whl/ for gpu_check.sh)")
    host = cuda_engine.segment(mni)
    c = cupy.asarray(mni)
    got = cuda_engine.segment(c)
    assert isinstance(got, cupy.ndarray) and got.dtype == cupy.uint8
    np.testing.assert_array_equal(cupy.asnumpy(got), host)
    flipped = c[::-1, :, ::-1]
    want = cuda_engine.segment(np.ascontiguousarray(mni[::-1, :, ::-1]))
    np.testing.assert_array_equal(cupy.asnumpy(cuda_engine.segment(flipped)), want)
    wide = c.astype(cupy.int64)[:, ::-1]  # converted slab by slab on the device
    np.testing.assert_array_equal(cupy.asnumpy(cuda_engine.segment(wide)),
                                  cuda_engine.segment(np.ascontiguousarray(mni[:, ::-1])))


def test_converted_dtypes(cuda_engine, mni):
    """Dtypes the ops do not read are converted per slab, on the host or on the device; uint8
    intensities are exact in every one of them, so the masks are equal."""
    host = cuda_engine.segment(mni)
    volumes = {
        ">i2 host": mni.astype(">i2"),
        "int64 host": mni.astype(np.int64),
        "float16 host": mni.astype(np.float16),
        "bfloat16 device": torch.from_numpy(mni.astype(np.float32)).to(DEVICE).bfloat16(),
        "int64 device": torch.from_numpy(mni.astype(np.int64)).to(DEVICE),
    }
    for name, vol in volumes.items():
        np.testing.assert_array_equal(_numpy(cuda_engine.segment(vol)), host, err_msg=name)


def test_structures_match_cpu(cuda_engine, cpu_engine, mni):
    vol = mni[:, :, 20:40]
    structures = [StructurePrompt("left", 1, boxes=(20, 30, 0, 110, 200, 14)),
                  StructurePrompt("right", 2, boxes=(90, 30, 5, 180, 200, 19))]
    ref = cpu_engine.segment_structures(vol, structures)
    got = cuda_engine.segment_structures(vol, structures)
    logits = np.stack([cpu_engine.segment_structures(vol, [s], return_scores=True)[1]
                       for s in structures])
    srt = np.sort(np.where(np.isfinite(logits), logits, -1e9), axis=0)
    tol, _ = TOLERANCE[cuda_engine.backend.precision]
    close = (np.abs(srt[-1]) < tol) | (srt[-1] - srt[-2] < tol)
    differ = _numpy(got) != ref
    print(f"\n[structures, {cuda_engine.backend.precision}] {differ.mean():.2e} of voxels "
          f"differ from the CPU engine, {(differ & close).mean():.2e} at near-zero logits or "
          "near ties (the demo model answers two overlapping boxes almost alike)")
    assert not (differ & ~close).any(), f"{int((differ & ~close).sum())} decided voxels differ"


def test_device_memory_is_bounded_by_the_slab(model):
    """Peak device memory does not grow with the number of slices of a host volume."""
    from sam_unet.bench.pipeline import synthetic_ct

    engine = Engine(make_backend("torch", model=model, device=DEVICE, precision="fp16",
                                 max_batch=32), batch_size=32)
    peaks = {}
    for z in (64, 320):
        engine.segment(synthetic_ct((512, 512, z)))
        peaks[z] = engine.last_stats.peak_device_bytes
    print(f"\n[peak device memory, 512x512xZ int16] Z=64: {peaks[64] / 2**20:.0f} MiB, "
          f"Z=320: {peaks[320] / 2**20:.0f} MiB")
    assert peaks[320] <= peaks[64] * 1.05 + 16 * 2**20


def test_nonfinite_logits_on_cuda(model, mni):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        for p in broken.mask_decoder.parameters():
            p.fill_(float("nan"))
    engine = Engine(make_backend("torch", model=broken, device=DEVICE, precision="fp16"))
    with pytest.raises(ValueError, match="NaN/Inf logits"):
        engine.segment(mni[:, :, :8])
