"""Fault injection without root, on a real ``sam-unet segment`` process.

- A run killed with SIGKILL in the middle of a folder, then ``--continue``: every output
  complete and equal to an uninterrupted run's, no leftover temporary file, nothing lost.
- Ctrl-C (SIGINT) in the middle of a write: one line, exit 130, no temporary file left.
- A write that fails for lack of space (RLIMIT_FSIZE with SIGXFSZ ignored, so the write raises
  EFBIG): one clear error line, a non-zero exit, no partial output, no temporary file, the input
  untouched.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sam_unet.atomic import is_temp_name
from sam_unet.data.mni152 import paths as mni_paths
from sam_unet.io import list_inputs
from sam_unet.runtime.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "python" / "sam_unet" / "assets" / "demo_tiny.pt"

pytestmark = [pytest.mark.skipif(not DEMO.is_file(), reason="demo checkpoint not built yet"),
              pytest.mark.skipif(not hasattr(signal, "SIGKILL") or sys.platform == "win32",
                                 reason="POSIX signals and resource limits")]


@pytest.fixture(scope="module")
def crops() -> list[tuple[np.ndarray, np.ndarray]]:
    """Six different int16 (48, 56, 12) RAS crops of the MNI152 T1, with their affines."""
    t1, _ = mni_paths()
    img = nib.as_closest_canonical(nib.load(str(t1)))
    full = np.asarray(img.dataobj)
    out = []
    for i in range(6):
        start = np.array([60, 80, 62 + 4 * i])
        data = full[60:108, 80:136, start[2]:start[2] + 12].astype(np.int16)
        affine = img.affine.copy()
        affine[:3, 3] = img.affine[:3, :3] @ start + img.affine[:3, 3]
        out.append((data, affine))
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
                PYTHONWARNINGS="ignore")


def _cmd(src: Path, dst: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sam_unet.cli", "segment", "-i", str(src), "-o", str(dst),
            "--checkpoint", str(DEMO), "--device", "cpu", "--quiet", *extra]


@pytest.mark.slow
def test_sigkill_mid_folder_then_continue(tmp_path, crops):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    names = [f"vol{i}" for i in range(len(crops))]
    for name, (data, affine) in zip(names, crops, strict=True):
        nib.save(nib.Nifti1Image(data, affine), str(src / f"{name}.nii.gz"))
    digests = {p: _digest(p) for p in src.iterdir()}

    proc = subprocess.Popen(_cmd(src, dst), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while not (dst.is_dir() and any(p.name.endswith("_seg.nii.gz") for p in dst.iterdir())):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no output appeared"
            time.sleep(0.01)
        # the first output exists: kill while the next file is being written, when caught
        catch_until = time.monotonic() + 10
        while time.monotonic() < catch_until and proc.poll() is None:
            if any(is_temp_name(p.name) for p in dst.iterdir()):
                break
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    visible = sorted(p.name for p in dst.iterdir() if not p.name.startswith("."))
    leftovers = sorted(p.name for p in dst.iterdir() if is_temp_name(p.name))
    assert 1 <= len(visible) < len(names), visible  # killed mid-folder
    for name in visible:  # what is visible is complete: writes are atomic
        assert nib.load(str(dst / name)).get_fdata().shape == (48, 56, 12)
    assert not list_inputs(dst) or all(not is_temp_name(p.name) for p in list_inputs(dst))

    resumed = subprocess.run(_cmd(src, dst, "--continue"), env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == (f"segmented {len(names) - len(visible)}, skipped "
                                      f"{len(visible)} (already done), failed 0")
    assert resumed.stderr == ""
    # every output there, complete and right; no temporary file left; inputs untouched
    assert sorted(p.name for p in dst.iterdir()) == [f"{n}_seg.nii.gz" for n in names], \
        f"leftovers before the sweep: {leftovers}"
    torch.set_num_threads(1)
    engine = Engine.from_checkpoint(DEMO, device="cpu", batch_size=12)
    for name, (data, _affine) in zip(names, crops, strict=True):
        got = np.asarray(nib.load(str(dst / f"{name}_seg.nii.gz")).dataobj)
        np.testing.assert_array_equal(got, engine.segment(data), err_msg=name)
    assert {p: _digest(p) for p in src.iterdir()} == digests
    print(f"\nkilled after {len(visible)} of {len(names)} outputs; temporary files left by the "
          f"kill and swept by --continue: {leftovers or 'none caught'}")


@pytest.mark.slow
def test_ctrl_c_mid_folder_leaves_no_temporary_file(tmp_path, crops):
    """SIGINT (Ctrl-C) while the next output is being written: one line, exit 130, the
    temporary file removed, finished outputs complete."""
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    # enough files that the run is still going when the signal comes, even on an idle machine
    for i in range(40):
        data, affine = crops[i % len(crops)]
        nib.save(nib.Nifti1Image(data, affine), str(src / f"v{i:02d}.nii.gz"))
    # A shell's background job (as CI may run us) inherits SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: give the child the default disposition, as a
    # terminal would.
    proc = subprocess.Popen(_cmd(src, dst), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not (dst / "v00_seg.nii.gz").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    catch_until = time.monotonic() + 10
    while time.monotonic() < catch_until and proc.poll() is None:
        if any(is_temp_name(p.name) for p in dst.iterdir()):
            break
        time.sleep(0.001)
    assert proc.poll() is None, "the run ended before the signal: the test needs more inputs"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.splitlines() == ["sam-unet segment: interrupted (finished outputs are kept; "
                                "rerun with --continue for the rest)"]
    names = sorted(p.name for p in dst.iterdir())
    assert names and all(n.endswith("_seg.nii.gz") for n in names), names  # no temp file
    for name in names:
        assert nib.load(str(dst / name)).get_fdata().shape == (48, 56, 12)


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

    return apply


@pytest.mark.slow
def test_write_fails_for_lack_of_space(tmp_path, crops):
    data, affine = crops[0]
    src = tmp_path / "scan.nii"  # uncompressed: the label map (32 KB) exceeds the limit below
    nib.save(nib.Nifti1Image(data, affine), str(src))
    digest = _digest(src)
    dst = tmp_path / "out"
    proc = subprocess.run(_cmd(src, dst), env=_env(), capture_output=True, text=True,
                          timeout=240, preexec_fn=_limit_file_size(16 * 1024))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"sam-unet segment: error: {src}: {dst / 'scan_seg.nii'}: "
                               "cannot write the label NIfTI (OSError: [Errno 27] File too "
                               "large"), lines[0]
    assert "free space on the output disk (or raise the file size limit)" in lines[0]
    assert proc.stdout.strip() == "segmented 0, skipped 0 (already done), failed 1"
    assert sorted(os.listdir(dst)) == []  # no partial output, no temporary file
    assert _digest(src) == digest and sorted(os.listdir(tmp_path)) == ["out", "scan.nii"]

    # the same run without the limit succeeds: the failure was the write, nothing else
    proc = subprocess.run(_cmd(src, dst, "--continue"), env=_env(), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0 and proc.stdout.strip() == \
        "segmented 1, skipped 0 (already done), failed 0"
    assert sorted(os.listdir(dst)) == ["scan_seg.nii"]
