"""--statistics values against sums done by hand voxel by voxel, in the file's own frame (an
oblique LPS NIfTI, a CT series in HU), and the preview montage's legend colours."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from dicom_helpers import mni_crop, write_series
from sam_unet.io import load_nifti
from sam_unet.io.dicom import load_dicom_series
from sam_unet.runtime.preview import label_colors, write_preview
from sam_unet.runtime.statistics import structure_statistics, write_statistics


def _hand(data, labels, value, voxel_mm3):
    """Count, volume, mean, population std and inclusive bbox by plain loops."""
    vals, where = [], []
    for i in range(labels.shape[0]):
        for j in range(labels.shape[1]):
            for k in range(labels.shape[2]):
                if labels[i, j, k] == value:
                    vals.append(float(data[i, j, k]))
                    where.append((i, j, k))
    n = len(vals)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / n)
    bbox = [min(w[a] for w in where) for a in range(3)] + [max(w[a] for w in where)
                                                           for a in range(3)]
    return n, n * voxel_mm3, mean, std, bbox


def test_statistics_equal_hand_computed_values(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.normal(40.0, 25.0, (9, 7, 6)).astype(np.float32)
    labels = np.zeros(data.shape, np.uint8)
    labels[1:4, 2:6, 0:3] = 1
    labels[5:9, 0:3, 2:6] = 4
    labels[3, 5, 5] = 9
    # oblique, LPS-like: voxel axes reversed and rotated, anisotropic voxels
    c, s = math.cos(0.3), math.sin(0.3)
    affine = np.array([[-0.8 * c, 0.0, 2.5 * s, 10.0], [0.0, -1.1, 0.0, 4.0],
                       [-0.8 * s, 0.0, -2.5 * c, -7.0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "img.nii.gz"))
    vol = load_nifti(tmp_path / "img.nii.gz")
    assert vol.axcodes != ("R", "A", "S")  # the canonical frame differs from the file's
    names = {1: "one", 4: "four", 7: "absent"}
    stats = structure_statistics(vol.to_canonical(labels), vol, names)
    voxel = 0.8 * 1.1 * 2.5  # the sform holds float32: equal to 1e-6
    assert stats["voxel_volume_mm3"] == pytest.approx(voxel, rel=1e-6)
    np.testing.assert_allclose(stats["voxel_size_mm"], [0.8, 1.1, 2.5], rtol=1e-6)
    assert stats["input"] == str(tmp_path / "img.nii.gz")
    assert list(stats["structures"]) == ["one", "four", "absent", "label 9"]
    for name, value in (("one", 1), ("four", 4), ("label 9", 9)):
        n, mm3, mean, std, bbox = _hand(data, labels, value, voxel)
        got = stats["structures"][name]
        assert got["label"] == value and got["voxels"] == n
        assert got["volume_mm3"] == pytest.approx(mm3, rel=1e-6)
        assert got["volume_ml"] == pytest.approx(mm3 / 1000, rel=1e-6)
        assert got["intensity_mean"] == pytest.approx(mean, rel=1e-9)
        assert got["intensity_std"] == pytest.approx(std, rel=1e-9, abs=1e-12)
        assert got["bbox"] == bbox
    assert stats["structures"]["one"]["bbox"] == [1, 2, 0, 3, 5, 2]
    absent = stats["structures"]["absent"]
    assert absent["voxels"] == 0 and absent["bbox"] is None and absent["intensity_mean"] is None
    # the same from a file-frame label map
    assert structure_statistics(labels, vol, names, canonical=False) == stats
    out = write_statistics(tmp_path / "img_statistics.json", stats)
    assert json.loads(out.read_text()) == json.loads(json.dumps(stats))


def test_statistics_of_a_ct_series_are_in_hounsfield_units(tmp_path):
    import pydicom

    data, affine = mni_crop()
    files = write_series(tmp_path / "ct", data, affine, modality="CT", slope=1.0,
                         intercept=-1024.0)
    vol = load_dicom_series(tmp_path / "ct")
    file_labels = (data > 100).astype(np.uint8)  # stored value > 100
    stats = structure_statistics(vol.to_canonical(file_labels), vol, {1: "bright"})
    assert stats["intensity"] == "HU"
    hu = np.stack([pydicom.pixels.apply_modality_lut(pydicom.dcmread(f).pixel_array,
                                                     pydicom.dcmread(f)).T for f in files],
                  axis=-1)
    got = stats["structures"]["bright"]
    values = hu[file_labels == 1].astype(np.float64)
    assert got["voxels"] == values.size
    assert got["intensity_mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert got["intensity_std"] == pytest.approx(values.std(), rel=1e-9)
    assert got["volume_ml"] == pytest.approx(values.size * 3 * 3 * 1 / 1000, rel=1e-9)


def test_preview_draws_every_structure_with_its_legend_colour(tmp_path):
    from PIL import Image

    data, affine = mni_crop()
    labels = np.zeros(data.shape, np.uint8)
    labels[10:20, 10:30, 2:9] = 1
    labels[30:40, 10:30, 4:6] = 3
    labels[20:30, 40:50, 6:11] = 8
    names = {1: "a", 3: "b", 8: "c"}
    out = write_preview(tmp_path / "p.png", data, labels, names, zooms=(3.0, 3.0, 1.0),
                        title="three structures")
    png = np.asarray(Image.open(out).convert("RGB"))
    assert png.shape[0] > 200 and png.shape[1] > 200
    colours = label_colors(names)
    assert len(set(colours.values())) == 3
    for rgb in colours.values():  # each legend patch is drawn in its pure colour
        assert (np.abs(png.astype(int) - rgb).sum(axis=-1) <= 3).sum() >= 20
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
