"""sam_unet.io: NIfTI-1/2 in and out (every voxel type, either byte order, scaling, stored
shapes, sform/qform and codes), file-frame prompts mapped to the canonical frame, atomic writes
and the sweeping of temporary files. Outputs are checked with nibabel and, independently, with
SimpleITK wherever it reads the file (it reads no NIfTI-2 and no sheared geometry)."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from sam_unet.atomic import atomic_path, is_temp_name, parse_temp_name, sweep_stale_temps
from sam_unet.io import (
    NiftiError,
    PromptError,
    list_inputs,
    list_nifti,
    load_nifti,
    save_label_nifti,
)

sitk = pytest.importorskip("SimpleITK")


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


def _save(path, data, affine, *, nifti2=False, endian="<", dtype=None):
    klass, header_class = ((nib.Nifti2Image, nib.Nifti2Header) if nifti2
                           else (nib.Nifti1Image, nib.Nifti1Header))
    header = header_class(endianness=endian)
    header.set_data_dtype(dtype or data.dtype)
    nib.save(klass(data, affine, header=header), str(path))
    return path


def _sitk_geometry(path):
    img = sitk.ReadImage(str(path))
    return (img.GetSize(), np.array(img.GetOrigin()), np.array(img.GetSpacing()),
            np.array(img.GetDirection()))


def _assert_sitk_same_geometry(a, b):
    ga, gb = _sitk_geometry(a), _sitk_geometry(b)
    assert ga[0] == gb[0]
    for x, y in zip(ga[1:], gb[1:], strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)


def _raw_header(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        head = fh.read(540)
    size = struct.unpack("<i", head[:4])[0]
    klass = nib.Nifti2Header if size == 540 else nib.Nifti1Header
    return klass.from_fileobj(__import__("io").BytesIO(head + b"\0" * 4))


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
    # the canonical array is nibabel's own closest-canonical image
    np.testing.assert_array_equal(vol.data, np.asarray(nib.as_closest_canonical(
        nib.load(src)).dataobj))
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
    hdr = _raw_header(out)
    assert hdr["scl_slope"] == 1.0 and hdr["scl_inter"] == 0.0
    assert int(hdr["intent_code"]) == 1002  # NIFTI_INTENT_LABEL
    assert hdr["cal_min"] == 0 and hdr["cal_max"] == 1
    assert sorted(os.listdir(tmp_path)) == sorted([src.name, out.name])
    _assert_sitk_same_geometry(src, out)
    s_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))  # (Z, Y, X)
    np.testing.assert_array_equal(s_mask.transpose(2, 1, 0), (data > 500).astype(np.uint8))


DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32",
          "float64"]


def _values(dtype: np.dtype, shape) -> np.ndarray:
    rng = np.random.default_rng(3)
    if dtype.kind == "f":
        a = rng.normal(100.0, 300.0, shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        a = rng.integers(max(info.min, -1000), min(info.max, 3000), shape, endpoint=True)
        a = a.astype(dtype)
        a.flat[0], a.flat[1] = info.min, info.max  # the type's extremes survive the trip
        if dtype.itemsize == 8:
            a.flat[2] = info.max - 7  # not representable in float64: no float on the way
    return a


@pytest.mark.parametrize("nifti2", [False, True], ids=["nifti1", "nifti2"])
@pytest.mark.parametrize("endian", ["<", ">"], ids=["little", "big"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_voxel_type_and_byte_order(tmp_path, dtype, endian, nifti2):
    dt = np.dtype(dtype)
    data = _values(dt, (4, 5, 3))
    aff = _affines()["LPS"]
    src = _save(tmp_path / "in.nii", data, aff, nifti2=nifti2, endian=endian,
                dtype=dt.newbyteorder(endian))
    assert nib.load(src).header.endianness == endian
    vol = load_nifti(src)
    assert vol.data.dtype.kind == dt.kind and vol.data.dtype.itemsize == dt.itemsize
    np.testing.assert_array_equal(vol.to_original(vol.data), data)  # exact, every voxel
    assert vol.file_shape == (4, 5, 3)

    out = tmp_path / "out.nii.gz"
    save_label_nifti(out, (vol.data > data.flat[5]).astype(np.uint8), vol)
    img = nib.load(out)
    assert isinstance(img, nib.Nifti2Image if nifti2 else nib.Nifti1Image)
    assert img.header.endianness == "<"  # labels are written little-endian
    np.testing.assert_array_equal(np.asarray(img.dataobj), (data > data.flat[5]).astype(np.uint8))
    np.testing.assert_array_equal(img.affine, nib.load(src).affine)
    if not nifti2:  # SimpleITK reads NIfTI-1 only
        _assert_sitk_same_geometry(src, out)


def test_scaled_data_keeps_its_precision(tmp_path):
    # 16-bit stored values with scaling: float32 holds every result exactly
    d16 = np.arange(-60, 60, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(d16, np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, tmp_path / "s16.nii.gz")
    vol = load_nifti(tmp_path / "s16.nii.gz")
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, d16 * 0.5 + 10.0)
    # 32-bit integers with an intercept: values above 2**24 need float64
    d32 = (np.arange(24, dtype=np.int32) + 2**24 + 1).reshape(2, 3, 4)
    img = nib.Nifti1Image(d32, np.eye(4))
    img.header.set_slope_inter(1.0, 0.5)
    nib.save(img, tmp_path / "s32.nii")
    vol = load_nifti(tmp_path / "s32.nii")
    assert vol.data.dtype == np.float64
    np.testing.assert_array_equal(vol.data, d32.astype(np.float64) + 0.5)
    assert len(np.unique(vol.data)) == 24  # float32 would merge neighbours


def test_refused_voxel_types_say_how_to_convert(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.complex64), np.eye(4)), tmp_path / "c.nii")
    with pytest.raises(NiftiError, match=r"c\.nii: complex-valued data.*magnitude"):
        load_nifti(tmp_path / "c.nii")
    rgb = np.zeros((3, 3, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii.gz")
    with pytest.raises(NiftiError, match=r"rgb\.nii\.gz: RGB color data.*gray channel"):
        load_nifti(tmp_path / "rgb.nii.gz")
    # datatype codes nibabel cannot read at all: patch a valid header
    nib.save(nib.Nifti1Image(np.zeros((8, 2, 2), np.uint8), np.eye(4)), tmp_path / "x.nii")
    raw = bytearray((tmp_path / "x.nii").read_bytes())
    for code, bits, fragment in [(1, 1, "1-bit binary.*store it as uint8"),
                                 (1536, 128, "float128.*store it as float64")]:
        raw[70:74] = struct.pack("<hh", code, bits)
        p = tmp_path / f"code{code}.nii"
        p.write_bytes(bytes(raw))
        with pytest.raises(NiftiError, match=f"code{code}.nii: {fragment}"):
            load_nifti(p)


def test_sform_qform_and_codes_kept_exactly(tmp_path):
    d = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    sheared = np.array([[1.0, 0.3, 0, 5], [0, 1.2, 0, 3], [0.1, 0, 2, 1], [0, 0, 0, 1]])
    rot = _affines()["oblique"]
    cases = {  # name: (sform, sform_code, qform, qform_code, SimpleITK reads it)
        "sheared-sform-no-qform": (sheared, 2, None, 0, False),
        "qform-only": (None, 0, rot, 1, True),
        "no-codes": (None, 0, None, 0, True),
        "sform4-qform2-differ": (np.diag([0.9, 1.1, 2.0, 1.0]), 4, rot, 2, True),
    }
    for name, (sform, scode, qform, qcode, by_sitk) in cases.items():
        img = nib.Nifti1Image(d, None)
        img.header.set_zooms((0.7, 0.8, 2.5))
        img.header.set_xyzt_units("mm", "sec")
        img.set_sform(sform, code=scode)
        img.set_qform(qform, code=qcode)
        src = tmp_path / f"{name}.nii.gz"
        nib.save(img, src)
        vol = load_nifti(src)
        out = tmp_path / f"{name}_seg.nii.gz"
        save_label_nifti(out, np.ones(vol.shape, np.uint8), vol)
        hi, ho = nib.load(src).header, nib.load(out).header
        assert int(ho["sform_code"]) == scode and int(ho["qform_code"]) == qcode, name
        for key in ("srow_x", "srow_y", "srow_z", "quatern_b", "quatern_c", "quatern_d",
                    "qoffset_x", "qoffset_y", "qoffset_z", "pixdim", "xyzt_units"):
            np.testing.assert_array_equal(ho[key], hi[key], err_msg=f"{name}: {key}")
        np.testing.assert_array_equal(nib.load(out).affine, nib.load(src).affine)
        if by_sitk:
            _assert_sitk_same_geometry(src, out)


def test_stored_shapes_come_back(tmp_path):
    aff = _affines()["LPS"]
    d = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    # 4D with one volume: 4D output, pixdim[4] (TR) kept
    img = nib.Nifti1Image(d[..., None], aff)
    img.header.set_zooms((0.8, 0.9, 2.0, 2.5))
    nib.save(img, tmp_path / "t1.nii.gz")
    vol = load_nifti(tmp_path / "t1.nii.gz")
    assert vol.shape == (4, 5, 6) and vol.file_shape == (4, 5, 6, 1)
    save_label_nifti(tmp_path / "t1_seg.nii.gz", vol.data > 50, vol)
    out = nib.load(tmp_path / "t1_seg.nii.gz")
    assert out.shape == (4, 5, 6, 1) and out.header.get_zooms() == (0.8, 0.9, 2.0, 2.5)
    np.testing.assert_array_equal(np.asarray(out.dataobj)[..., 0], (d > 50).astype(np.uint8))
    _assert_sitk_same_geometry(tmp_path / "t1.nii.gz", tmp_path / "t1_seg.nii.gz")
    # 5D with singleton axes, and a 2D image
    for name, arr in [("five", d[..., None, None]), ("flat", d[:, :, 0])]:
        nib.save(nib.Nifti1Image(arr, aff), tmp_path / f"{name}.nii")
        vol = load_nifti(tmp_path / f"{name}.nii")
        save_label_nifti(tmp_path / f"{name}_seg.nii", vol.data > 50, vol)
        out = nib.load(tmp_path / f"{name}_seg.nii")
        assert out.shape == arr.shape
        np.testing.assert_array_equal(np.asarray(out.dataobj), (arr > 50).astype(np.uint8))
    # a real series and an empty axis are refused with the fix
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)), tmp_path / "s.nii")
    with pytest.raises(NiftiError, match=r"s\.nii: expected a 3D volume.*3 volumes.*one 3D"):
        load_nifti(tmp_path / "s.nii")
    nib.save(nib.Nifti1Image(np.zeros((2, 0, 2), np.float32), np.eye(4)), tmp_path / "e.nii")
    with pytest.raises(NiftiError, match=r"e\.nii: an axis has size 0"):
        load_nifti(tmp_path / "e.nii")


def test_file_written_by_simpleitk(tmp_path):
    """An LPS, oblique volume written by SimpleITK (its own header conventions)."""
    arr = np.arange(6 * 7 * 5, dtype=np.int16).reshape(5, 7, 6)  # SimpleITK order (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.9, 1.1, 2.5))
    img.SetOrigin((12.0, -30.0, 7.0))
    c, s = np.cos(0.15), np.sin(0.15)
    img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))  # LPS frame, rotated about z
    src = tmp_path / "by_sitk.nii.gz"
    sitk.WriteImage(img, str(src))
    vol = load_nifti(src)
    data = arr.transpose(2, 1, 0)  # NIfTI voxel order (x, y, z)
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")
    np.testing.assert_array_equal(vol.to_original(vol.data), data)
    out = tmp_path / "by_sitk_seg.nii.gz"
    save_label_nifti(out, vol.data % 3 == 0, vol)
    _assert_sitk_same_geometry(src, out)
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    np.testing.assert_array_equal(got, (arr % 3 == 0).astype(np.uint8))
    # a physical point maps to the same voxel value in input and output (SimpleITK's view)
    ref, lab = sitk.ReadImage(str(src)), sitk.ReadImage(str(out))
    for idx in [(0, 0, 0), (5, 6, 4), (2, 3, 1)]:
        p = ref.TransformIndexToPhysicalPoint(idx)
        assert lab[lab.TransformPhysicalPointToIndex(p)] == int(ref[idx] % 3 == 0)


def test_label_header_for_several_labels(tmp_path):
    src = _save(tmp_path / "in.nii", np.zeros((3, 4, 5), np.float32), _affines()["LPS"])
    vol = load_nifti(src)
    labels = np.zeros(vol.shape, np.uint8)
    labels[0, 0, 0], labels[1, 1, 1] = 3, 7
    save_label_nifti(tmp_path / "l.nii.gz", labels, vol)
    hdr = _raw_header(tmp_path / "l.nii.gz")
    assert hdr["cal_min"] == 0 and hdr["cal_max"] == 7 and hdr.get_intent()[0] == "label"
    with pytest.raises(ValueError, match="fit uint8"):
        save_label_nifti(tmp_path / "x.nii", np.full(vol.shape, 300, np.int32), vol)


def test_errors_name_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(FileNotFoundError, match="nope.nii.gz: no such file; check the path"):
        load_nifti(missing)
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"this is not a nifti file at all" * 10)
    with pytest.raises(NiftiError, match="corrupt.nii.gz: cannot read the NIfTI header.*; "):
        load_nifti(bad)
    trunc = tmp_path / "trunc.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), trunc)
    trunc.write_bytes(trunc.read_bytes()[:600])
    with pytest.raises(NiftiError, match="trunc.nii: cannot read the image data.*truncated"):
        load_nifti(trunc)
    gz = tmp_path / "trunc.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 20, 20)), np.eye(4)), gz)
    gz.write_bytes(gz.read_bytes()[:3000])
    with pytest.raises(NiftiError, match="trunc.nii.gz: cannot read the image data.*truncated"):
        load_nifti(gz)
    with pytest.raises(NiftiError, match="txt"):
        save_label_nifti(tmp_path / "x.txt", np.zeros((2, 2, 2), np.uint8))


# ------------------------------------------------------------------------------------------
# prompts in the file's voxel frame
# ------------------------------------------------------------------------------------------
def _file_to_ras_voxels(affine, shape):
    """(4, 4) map from file voxels to nibabel's closest-canonical voxels (nibabel alone)."""
    img = nib.Nifti1Image(np.zeros(shape, np.uint8), affine)
    ras = nib.as_closest_canonical(img)
    return np.linalg.inv(ras.affine) @ affine


def _map_box(m, lo, hi):
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])])
    c = np.rint((m @ corners.T).T[:, :3] * 1e6) / 1e6
    return c.min(axis=0), c.max(axis=0)


@pytest.mark.parametrize("name", list(_affines()))
def test_prompts_map_to_the_canonical_frame(tmp_path, name):
    aff = _affines()[name]
    shape = (5, 6, 7)
    src = _save(tmp_path / "p.nii", np.zeros(shape, np.int16), aff)
    vol = load_nifti(src)
    m = _file_to_ras_voxels(aff, shape)
    rng = np.random.default_rng(1)
    for _ in range(5):
        lo = np.array([rng.integers(0, s - 1) for s in shape], dtype=float)
        hi = np.array([rng.integers(int(a), s) for a, s in zip(lo, shape, strict=True)], float)
        box = vol.prompts_to_canonical(-1, tuple(lo) + tuple(hi))[0]
        elo, ehi = _map_box(m, lo, hi)
        np.testing.assert_allclose(box, np.concatenate([elo, ehi]))
    # per-slice boxes: key along the file axis that becomes canonical axis 2, box over the two
    # other file axes in increasing order
    fax = int(np.argmax(np.abs(m[2, :3])))
    others = [a for a in range(3) if a != fax]
    k, (a0, b0, a1, b1) = 2, (1.0, 2.0, 3.0, 4.0)
    slices = vol.prompts_to_canonical(2, {k: (a0, b0, a1, b1)})[0]
    lo, hi = np.zeros(3), np.zeros(3)
    lo[fax] = hi[fax] = k
    lo[others[0]], hi[others[0]], lo[others[1]], hi[others[1]] = a0, a1, b0, b1
    elo, ehi = _map_box(m, lo, hi)
    assert list(slices) == [int(elo[2])]
    np.testing.assert_allclose(slices[int(elo[2])], [elo[0], elo[1], ehi[0], ehi[1]])
    # (S, 4) rows are the same as a dict; a mask volume is reoriented like the data
    rows = np.full((shape[fax], 4), np.nan)
    rows[k] = (a0, b0, a1, b1)
    assert {kk: v.tolist() for kk, v in vol.prompts_to_canonical(2, rows)[0].items()} == \
        {kk: v.tolist() for kk, v in slices.items()}
    mask = np.zeros(shape, np.uint8)
    mask[1, 2, 3] = 1
    _, cmask = vol.prompts_to_canonical(-1, box_mask=mask)
    np.testing.assert_array_equal(np.argwhere(cmask)[0], np.rint(m @ [1, 2, 3, 1])[:3])
    with pytest.raises(PromptError, match="outside the file's voxel grid"):
        vol.prompts_to_canonical(-1, (0, 0, 0, 5, 1, 1))
    with pytest.raises(PromptError, match="file axis"):
        vol.prompts_to_canonical(-1, {shape[fax]: (0, 0, 1, 1)})
    with pytest.raises(PromptError, match="shape"):
        vol.prompts_to_canonical(-1, box_mask=np.zeros((2, 2, 2)))


# ------------------------------------------------------------------------------------------
# atomic writes, temporary files
# ------------------------------------------------------------------------------------------
def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    vol_path = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.diag([-1, 1, 1, 1.0])), vol_path)
    vol = load_nifti(vol_path)
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"previous result")

    def failing_save(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(NiftiError, match="out.nii.gz: cannot write.*free space"):
        save_label_nifti(out, np.ones((4, 4, 4), np.uint8), vol)
    assert sorted(os.listdir(tmp_path)) == ["in.nii.gz", "out.nii.gz"]
    assert out.read_bytes() == b"previous result"
    with pytest.raises(ValueError, match="shape"):
        save_label_nifti(tmp_path / "o2.nii", np.ones((3, 4, 4), np.uint8), vol)
    assert sorted(os.listdir(tmp_path)) == ["in.nii.gz", "out.nii.gz"]


def test_atomic_outputs_get_normal_permissions(tmp_path):
    """mkstemp makes 0600 files; outputs must get the usual umask-derived mode."""
    from sam_unet.atomic import write_text_atomic

    umask = os.umask(0o022)
    try:
        p = write_text_atomic(tmp_path / "a.json", "{}")
        assert (p.stat().st_mode & 0o777) == 0o644
        assert [x.name for x in tmp_path.iterdir()] == ["a.json"]
    finally:
        os.umask(umask)


def test_atomic_failure_keeps_previous_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        assert is_temp_name(tmp.name) and parse_temp_name(tmp.name).pid == os.getpid()
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["out.bin"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_are_swept_and_never_inputs(tmp_path):
    from sam_unet.atomic import host_tag

    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), tmp_path / "a.nii.gz")
    here = host_tag()
    other = "000000" if here != "000000" else "111111"
    dead = _dead_pid()
    names = {
        "dead": f".a_seg.nii.gz.samtmp-{dead}-{here}.k2j4_9xq.tmp.nii.gz",
        "alive": f".b_seg.nii.gz.samtmp-{os.getpid()}-{here}.abcdefgh.tmp.nii.gz",
        "foreign_young": f".c_seg.nii.gz.samtmp-{dead}-{other}.abcdefgh.tmp.nii.gz",
        "foreign_old": f".d_seg.nii.gz.samtmp-{dead}-{other}.abcdefgh.tmp.nii.gz",
        "not_ours": ".e_seg.nii.gz.12345678.tmp.nii.gz",
        "user_file": "notes.samtmp-1-abcdef.abcdefgh.tmp.nii.gz",
    }
    for n in names.values():
        (tmp_path / n).write_bytes(b"\x1f\x8b partial")
    old = time.time() - 2 * 3600
    os.utime(tmp_path / names["foreign_old"], (old, old))
    # every temp file is hidden: never an input
    assert [p.name for p in list_inputs(tmp_path)] == ["a.nii.gz", names["user_file"]]
    assert [p.name for p in list_nifti(tmp_path)] == ["a.nii.gz", names["user_file"]]
    # a file newer than the run is never swept, whoever wrote it
    assert sweep_stale_temps(tmp_path, older_than=old - 1) == []
    removed = sweep_stale_temps(tmp_path, older_than=time.time() + 1)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["foreign_old"]])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["a.nii.gz", names["alive"], names["foreign_young"], names["not_ours"],
                           names["user_file"]])
