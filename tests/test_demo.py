"""`sam-unet demo` end to end on the CPU: files written, Dice printed and >= 0.90."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest

from sam_unet.cli import main as cli
from sam_unet.data.mni152 import paths as mni_paths


@pytest.mark.slow
def test_demo_runs_and_reaches_dice(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(["demo", "-o", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    dice = float(re.search(r"3D Dice vs MNI152 WM probability > 0.5: ([0-9.]+)", printed)[1])
    assert dice >= 0.90
    assert re.search(r"throughput: 189 slices in [0-9.]+ s = [0-9.]+ slices/s", printed)
    assert "backend=onnxruntime" in printed  # exported, then run from the ONNX file
    mask_img = nib.load(str(out / "mni152_t1_wm_mask.nii.gz"))
    t1_img = nib.load(str(mni_paths()[0]))
    assert mask_img.shape == t1_img.shape
    np.testing.assert_allclose(mask_img.affine, t1_img.affine)
    assert set(np.unique(np.asarray(mask_img.dataobj))) == {0, 1}
    png = out / "mni152_t1_wm_montage.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert (out / "demo_tiny.onnx").stat().st_size > 1_000_000
