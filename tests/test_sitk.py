"""NRRD / MetaImage in through SimpleITK: the same voxels and RAS affine as the NIfTI of the
same image, a hand-written NRRD header in RAS space, and clear refusals."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from dicom_helpers import mni_crop, reorient, rotation, save_nifti
from sam_unet.io import load_nifti
from sam_unet.io.sitk import SitkError, is_sitk_path, load_sitk, sitk_geometry, sitk_stem

sitk = pytest.importorskip("SimpleITK")


def _sitk_image(data: np.ndarray, affine_ras: np.ndarray):
    """A SimpleITK image of (x, y, z) data whose geometry is the RAS affine (in LPS)."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    return img


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("codes, rot", [(("L", "P", "S"), None), (("P", "I", "R"), (15, 10))])
def test_sitk_formats_read_like_the_nifti(tmp_path, suffix, codes, rot):
    data, affine = reorient(*mni_crop(), codes)
    if rot is not None:
        affine = rotation(*rot) @ affine
    path = tmp_path / f"img{suffix}"
    sitk.WriteImage(_sitk_image(data, affine), str(path))
    vol = load_sitk(path)
    ref = load_nifti(save_nifti(tmp_path / "img.nii.gz", data, affine))
    np.testing.assert_allclose(vol.affine, affine, atol=1e-9)
    np.testing.assert_array_equal(vol.to_original(vol.data), data)
    np.testing.assert_array_equal(vol.data, ref.data)
    np.testing.assert_array_equal(vol.transform, ref.transform)
    assert vol.data.dtype == np.int16 and vol.source_format == "sitk"
    shape, geo_affine = sitk_geometry(path)
    assert shape == data.shape
    np.testing.assert_allclose(geo_affine, affine, atol=1e-9)
    assert is_sitk_path(path) and sitk_stem(path) == "img"


def test_hand_written_nrrd_in_ras_space(tmp_path):
    """A NRRD declaring right-anterior-superior space: axis 0 steps 2 mm to the left, axis 1
    3 mm anterior, axis 2 4 mm superior, origin (10, 20, 30) RAS."""
    data = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2, order="F")
    header = ("NRRD0004\ntype: short\ndimension: 3\nspace: right-anterior-superior\n"
              "sizes: 4 3 2\nspace directions: (-2,0,0) (0,3,0) (0,0,4)\n"
              "kinds: domain domain domain\nendian: little\nencoding: raw\n"
              "space origin: (10,20,30)\n\n")
    path = tmp_path / "hand.nrrd"
    path.write_bytes(header.encode() + data.tobytes(order="F"))
    vol = load_sitk(path)
    expected = np.array([[-2.0, 0, 0, 10], [0, 3, 0, 20], [0, 0, 4, 30], [0, 0, 0, 1]])
    np.testing.assert_allclose(vol.affine, expected)
    np.testing.assert_array_equal(vol.to_original(vol.data), data)
    assert vol.axcodes == ("L", "A", "S")


def test_refusals(tmp_path, monkeypatch):
    vec = sitk.Image([4, 5, 3], sitk.sitkVectorFloat32, 3)
    sitk.WriteImage(vec, str(tmp_path / "vec.nrrd"))
    with pytest.raises(SitkError, match="vec.nrrd: 3 components per voxel"):
        load_sitk(tmp_path / "vec.nrrd")
    flat = sitk.GetImageFromArray(np.arange(20, dtype=np.float32).reshape(4, 5))
    sitk.WriteImage(flat, str(tmp_path / "flat.mha"))
    assert load_sitk(tmp_path / "flat.mha").original_shape == (5, 4, 1)
    (tmp_path / "bad.nrrd").write_text("not an image\n")
    with pytest.raises(SitkError, match="bad.nrrd: cannot read the image header"):
        load_sitk(tmp_path / "bad.nrrd")
    with pytest.raises(FileNotFoundError):
        load_sitk(tmp_path / "missing.nrrd")
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # as if the extra were not installed
    with pytest.raises(SitkError, match=r"needs SimpleITK; install it: pip install "
                       r"'sam-unet\[sitk\]'"):
        load_sitk(tmp_path / "flat.mha")
