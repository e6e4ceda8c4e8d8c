"""sam_unet.io: NIfTI round trips in non-RAS orientations, label headers, atomic writes."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from sam_unet.io import NiftiError, load_nifti, save_label_nifti


def _affines():
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    lps = np.diag([-0.8, -0.9, 2.0, 1.0])
    lps[:3, 3] = [30.0, 20.0, -10.0]
    # permuted axes with flips: voxel i -> world -y, j -> world z, k -> world -x
    perm = np.array([[0.0, 0.0, -2.0, 10.0], [-1.5, 0.0, 0.0, 20.0], [0.0, 3.0, 0.0, -5.0],
                     [0.0, 0.0, 0.0, 1.0]])
    # slightly oblique + permuted
    c, s = np.cos(0.2), np.sin(0.2)
    obl = np.array([[0.0, c, -s, 1.0], [0.0, s, c, 2.0], [-1.2, 0.0, 0.0, 3.0], [0, 0, 0, 1.0]])
    return {"RAS": ras, "LPS": lps, "permuted": perm, "oblique": obl}


@pytest.mark.parametrize("name", list(_affines()))
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_round_trip_keeps_affine_shape_and_voxels(tmp_path, name, suffix):
    aff = _affines()[name]
    rng = np.random.default_rng(0)
    data = rng.integers(-500, 1500, size=(5, 6, 7)).astype(np.int16)
    src = tmp_path / f"in{suffix}"
    nib.save(nib.Nifti1Image(data, aff), src)

    vol = load_nifti(src)
    assert nib.aff2axcodes(vol.canonical_affine) == ("R", "A", "S")
    assert vol.data.dtype == np.int16 and vol.original_shape == (5, 6, 7)
    # every voxel keeps its world position
    for ijk in [(0, 0, 0), (4, 5, 6), (1, 2, 3)]:
        world = aff @ [*ijk, 1.0]
        cijk = np.rint(np.linalg.solve(vol.canonical_affine, world)[:3]).astype(int)
        assert vol.data[tuple(cijk)] == data[ijk]
    assert np.array_equal(vol.to_original(vol.data), data)
    assert np.array_equal(vol.to_canonical(data), vol.data)

    mask = (vol.data > 500).astype(np.uint8)
    out = tmp_path / f"out{suffix}"
    save_label_nifti(out, mask, vol)
    img = nib.load(out)
    assert img.shape == data.shape
    assert np.allclose(img.affine, aff)
    assert img.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(img.dataobj), (data > 500).astype(np.uint8))
    opener = gzip.open if suffix == ".nii.gz" else open
    with opener(out, "rb") as fh:
        hdr = nib.Nifti1Header.from_fileobj(fh)
    assert hdr["scl_slope"] == 1.0 and hdr["scl_inter"] == 0.0
    assert int(hdr["intent_code"]) == 1002  # NIFTI_INTENT_LABEL
    assert hdr["cal_min"] == 0 and hdr["cal_max"] == 1
    assert sorted(os.listdir(tmp_path)) == sorted([src.name, out.name])


def test_scaled_data_and_trailing_singleton(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4, 1)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(2.0, 1.0)
    p = tmp_path / "s.nii.gz"
    nib.save(img, p)
    vol = load_nifti(p)
    assert vol.data.shape == (2, 3, 4) and vol.data.dtype == np.float32
    assert np.allclose(vol.data, data[..., 0] * 2.0 + 1.0)


def test_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        load_nifti(missing)
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"this is not a nifti file at all" * 10)
    with pytest.raises(NiftiError, match="corrupt.nii.gz"):
        load_nifti(bad)
    trunc = tmp_path / "trunc.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), trunc)
    trunc.write_bytes(trunc.read_bytes()[:600])
    with pytest.raises(NiftiError, match="trunc.nii"):
        load_nifti(trunc)
    four_d = tmp_path / "4d.nii"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2), np.float32), np.eye(4)), four_d)
    with pytest.raises(NiftiError, match="4d.nii.*3D"):
        load_nifti(four_d)
    with pytest.raises(NiftiError, match="txt"):
        save_label_nifti(tmp_path / "x.txt", np.zeros((2, 2, 2), np.uint8))


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    vol_path = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.diag([-1, 1, 1, 1.0])), vol_path)
    vol = load_nifti(vol_path)
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"previous result")

    def failing_save(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(NiftiError, match="out.nii.gz"):
        save_label_nifti(out, np.ones((4, 4, 4), np.uint8), vol)
    assert sorted(os.listdir(tmp_path)) == ["in.nii.gz", "out.nii.gz"]
    assert out.read_bytes() == b"previous result"
    with pytest.raises(ValueError, match="shape"):
        save_label_nifti(tmp_path / "o2.nii", np.ones((3, 4, 4), np.uint8), vol)
    assert sorted(os.listdir(tmp_path)) == ["in.nii.gz", "out.nii.gz"]


def test_atomic_outputs_get_normal_permissions(tmp_path):
    """mkstemp makes 0600 files; outputs must get the usual umask-derived mode."""
    import os

    from sam_unet.atomic import write_text_atomic

    umask = os.umask(0o022)
    try:
        p = write_text_atomic(tmp_path / "a.json", "{}")
        assert (p.stat().st_mode & 0o777) == 0o644
        assert [x.name for x in tmp_path.iterdir()] == ["a.json"]
    finally:
        os.umask(umask)


def test_atomic_failure_keeps_previous_file(tmp_path):
    from sam_unet.atomic import atomic_path

    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["out.bin"]
