"""DICOM series in: real files shipped with pydicom, series written from the MNI152 T1 in four
orientations (shuffled file names and InstanceNumbers), an enhanced multi-frame conversion by
highdicom, zips with non-image files, and broken series. Geometry is checked against SimpleITK's
readers (an independent implementation), values against pydicom's modality LUT."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_helpers import mni_crop, reorient, rotation, save_nifti, write_series
from sam_unet.io import load_nifti
from sam_unet.io.dicom import (
    DicomError,
    is_dicom_input,
    list_dicom_series,
    load_dicom_series,
)

sitk = pytest.importorskip("SimpleITK")

DEMO_CKPT = Path(__file__).resolve().parents[1] / "python" / "sam_unet" / "assets" / "demo_tiny.pt"
ORIENTATIONS = {
    "axial": (("L", "P", "S"), None),
    "sagittal": (("P", "I", "R"), None),
    "coronal": (("L", "I", "P"), None),
    "oblique": (("L", "P", "S"), (15.0, 10.0)),
}


def _sitk_affine(img) -> np.ndarray:
    """RAS affine of a SimpleITK image (LPS origin/spacing/direction)."""
    d = np.array(img.GetDirection()).reshape(3, 3)
    out = np.eye(4)
    out[:3, :3] = d * np.array(img.GetSpacing())
    out[:3, 3] = img.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ out


def _sitk_series(folder: Path):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _oriented(name: str):
    codes, rot = ORIENTATIONS[name]
    data, affine = reorient(*mni_crop(), codes)
    if rot is not None:
        affine = rotation(*rot) @ affine
    return data, affine


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory):
    """One folder per orientation, plus the NIfTI of the same (data, affine)."""
    root = tmp_path_factory.mktemp("series")
    out = {}
    for i, name in enumerate(ORIENTATIONS):
        data, affine = _oriented(name)
        write_series(root / name, data, affine, seed=i)
        out[name] = (root / name, save_nifti(root / f"{name}.nii.gz", data, affine), affine)
    return out


# --------------------------------------------------------------------------- pydicom's files
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "693_J2KI.dcm",
                                  "J2K_pixelrep_mismatch.dcm"])
def test_pydicom_files_match_simpleitk_and_modality_lut(name):
    """pydicom's CT and MR files (two 512x512 CTs in JPEG 2000, one oblique) against
    SimpleITK's reader (GDCM) and pydicom's modality LUT."""
    path = get_testdata_file(name)
    vol = load_dicom_series(path)
    ds = pydicom.dcmread(path)
    expected = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
    got = vol.to_original(vol.data)
    assert got.shape == (ds.Columns, ds.Rows, 1)
    np.testing.assert_array_equal(got[:, :, 0].T, expected)
    assert vol.data.dtype == np.int16  # CT: the -1024 intercept kept exact in int16
    img = sitk.ReadImage(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img)[0], got[:, :, 0].T)
    # one slice: SimpleITK's slice spacing is its own default; compare the in-plane geometry
    np.testing.assert_allclose(vol.affine[:, [0, 1, 3]], _sitk_affine(img)[:, [0, 1, 3]],
                               atol=1e-6)
    assert vol.source_format == "dicom" and vol.series.modality == ds.Modality
    assert vol.slices[0].sop_instance_uid == ds.SOPInstanceUID


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm", "MR_small_expb.dcm",
                                  "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_encodings_of_mr_small_read_the_same(name):
    ref = load_dicom_series(get_testdata_file("MR_small.dcm"))
    path = get_testdata_file(name)
    ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if ts.is_compressed and not pydicom.pixels.get_decoder(ts).is_available:
        with pytest.raises(DicomError, match=r"sam-unet\[dicom-compressed\]"):
            load_dicom_series(path)
        return
    vol = load_dicom_series(path)
    assert vol.data.dtype.isnative
    np.testing.assert_array_equal(vol.data, ref.data)
    np.testing.assert_array_equal(vol.affine, ref.affine)


def test_undecodable_compression_names_the_extra(tmp_path):
    """12-bit JPEG (pydicom's JPGExtended.dcm, given a geometry): decoded where a plugin can
    (the dicom-compressed extra), otherwise one line naming that extra."""
    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.save_as(tmp_path / "lossy.dcm")
    try:
        expected = ds.pixel_array
    except Exception:  # noqa: BLE001 - no plugin here decodes it: the loader must say how
        with pytest.raises(DicomError) as err:
            load_dicom_series(tmp_path)
        text = str(err.value)
        assert "lossy.dcm" in text and "JPEG Extended" in text and "\n" not in text
        assert "pip install 'sam-unet[dicom-compressed]'" in text
        return
    vol = load_dicom_series(tmp_path)
    np.testing.assert_array_equal(vol.to_original(vol.data)[:, :, 0].T, expected)


# --------------------------------------------------------------------------- written series
@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_series_matches_its_nifti_and_simpleitk(series_dir, name):
    folder, nifti, affine = series_dir[name]
    files = sorted(folder.iterdir())
    numbers = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in files]
    assert numbers != sorted(numbers)  # shuffled: neither names nor numbers give the order
    vol = load_dicom_series(folder)
    ref = load_nifti(nifti)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(vol.data, ref.data)
    np.testing.assert_array_equal(vol.transform, ref.transform)
    np.testing.assert_allclose(vol.canonical_affine, ref.canonical_affine, atol=1e-6)
    img = _sitk_series(folder)
    np.testing.assert_allclose(vol.affine, _sitk_affine(img), atol=1e-6)
    np.testing.assert_array_equal(vol.to_original(vol.data),
                                  sitk.GetArrayFromImage(img).transpose(2, 1, 0))
    # every slice's first voxel is where its own file says
    for k, src in enumerate(vol.slices):
        pos = pydicom.dcmread(src.name, stop_before_pixels=True).ImagePositionPatient
        world = vol.affine @ np.array([0, 0, k, 1.0])
        np.testing.assert_allclose(world[:3] * [-1, -1, 1], [float(v) for v in pos], atol=1e-4)


@pytest.mark.slow
def test_series_and_nifti_give_the_same_mask(series_dir, single_thread):
    """The demo model on each orientation: the mask of the series equals the mask of its
    NIfTI conversion (file frame), and all orientations agree once reoriented."""
    from sam_unet.runtime.engine import Engine

    engine = Engine.from_checkpoint(DEMO_CKPT, device="cpu", batch_size=12)
    canonical = []
    for name in ORIENTATIONS:
        folder, nifti, _ = series_dir[name]
        vol, ref = load_dicom_series(folder), load_nifti(nifti)
        mask = engine.segment(vol.data)
        np.testing.assert_array_equal(vol.to_original(mask),
                                      ref.to_original(engine.segment(ref.data)))
        canonical.append(mask)
        assert mask.sum() > 100
    for other in canonical[1:]:
        np.testing.assert_array_equal(other, canonical[0])


def test_enhanced_multiframe_reads_like_the_single_frame_series(tmp_path):
    from highdicom.legacy import LegacyConvertedEnhancedMRImage
    from pydicom.uid import generate_uid

    data, affine = _oriented("sagittal")
    files = write_series(tmp_path / "single", data, affine, slope=2.0, intercept=-5.0)
    enhanced = LegacyConvertedEnhancedMRImage(
        [pydicom.dcmread(f) for f in files], series_instance_uid=generate_uid(),
        series_number=2, sop_instance_uid=generate_uid(), instance_number=1)
    assert "PerFrameFunctionalGroupsSequence" in enhanced
    enhanced.save_as(tmp_path / "enhanced.dcm")
    single = load_dicom_series(tmp_path / "single")
    multi = load_dicom_series(tmp_path / "enhanced.dcm")
    assert multi.data.dtype == np.int16
    np.testing.assert_array_equal(multi.data, single.data)
    np.testing.assert_array_equal(single.to_original(single.data), data * 2 - 5)
    np.testing.assert_allclose(multi.affine, affine, atol=1e-6)
    assert {s.frame for s in multi.slices} == set(range(data.shape[2]))
    assert len(multi.instances) == 1


def test_zip_with_non_image_files_reads_like_the_folder(series_dir, tmp_path):
    folder = series_dir["coronal"][0]
    dicomdir = Path(get_testdata_file("DICOMDIR"))
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"DICOM/S1/{f.name}")
        zf.write(get_testdata_file("test-SR.dcm"), "DICOM/S1/report")
        zf.write(dicomdir, "DICOMDIR")
        zf.writestr("README.txt", "exported by a PACS\n")
        zf.writestr("__MACOSX/._img0000.dcm", b"\0" * 300)
    assert is_dicom_input(archive) and is_dicom_input(folder)
    a, b = load_dicom_series(archive), load_dicom_series(folder)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.slices[0].name.startswith(f"{archive}:DICOM/S1/")
    # the same extras in a folder are skipped too
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed / "series")
    shutil.copy(get_testdata_file("test-SR.dcm"), mixed / "sr.dcm")
    (mixed / "README").write_text("not DICOM")
    np.testing.assert_array_equal(load_dicom_series(mixed).data, b.data)


def test_per_slice_rescale_to_float32(tmp_path):
    data, affine = mni_crop()
    n = data.shape[2]
    slopes = np.linspace(0.5, 1.5, n)
    write_series(tmp_path / "s", data, affine, slope=slopes.tolist(), intercept=-3.25)
    vol = load_dicom_series(tmp_path / "s")
    assert vol.data.dtype == np.float32
    got = vol.to_original(vol.data)
    for k in range(n):
        slope = float(pydicom.valuerep.DSfloat(slopes[k], auto_format=True))
        np.testing.assert_allclose(got[:, :, k], data[:, :, k] * slope - 3.25, rtol=1e-6)


def test_gantry_tilt_is_kept_in_a_sheared_affine(tmp_path):
    data, affine = mni_crop()
    n = data.shape[2]
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    shift = np.tan(np.radians(12.0)) * lps[2, 2]  # 12 degrees: each slice steps along y
    positions = np.array([lps[:3, 3] + k * lps[:3, 2] + [0, k * shift, 0] for k in range(n)])
    write_series(tmp_path / "t", data, affine, modality="CT", positions=positions)
    vol = load_dicom_series(tmp_path / "t")
    assert vol.tilt_degrees == pytest.approx(12.0, abs=0.01)
    for k in range(n):  # every slice where its file says
        world = vol.affine @ np.array([3, 5, k, 1.0])
        np.testing.assert_allclose(world[:3], (affine @ [3, 5, k, 1.0])[:3]
                                   + [0, -k * shift, 0], atol=1e-4)


def test_list_series_and_choose_one(series_dir, tmp_path):
    study = tmp_path / "study"
    data, affine = mni_crop()
    write_series(study / "a", data, affine, series_number=3, description="T1 axial")
    write_series(study / "b", data[:, :, :5], affine, modality="CT", series_number=7,
                 description="CT small")
    infos = list_dicom_series(study)
    assert [(i.number, i.modality, i.description, i.images) for i in infos] == [
        (3, "MR", "T1 axial", data.shape[2]), (7, "CT", "CT small", 5)]
    with pytest.raises(DicomError) as err:
        load_dicom_series(study)
    text = str(err.value)
    assert "holds 2 image series" in text and "--series" in text
    assert infos[0].uid in text and infos[1].uid in text and "'T1 axial'" in text
    vol = load_dicom_series(study, series_uid=infos[1].uid)
    assert vol.original_shape[2] == 5 and vol.series.modality == "CT"
    with pytest.raises(DicomError, match="no image series with UID 1.2.3"):
        load_dicom_series(study, series_uid="1.2.3")


# --------------------------------------------------------------------------- refusals
def _series(tmp_path, **kwargs):
    data, affine = mni_crop()
    files = write_series(tmp_path / "s", data, affine, **kwargs)
    return tmp_path / "s", files, affine


def test_missing_slice_is_refused(tmp_path):
    folder, files, _ = _series(tmp_path)
    files[5].unlink()
    with pytest.raises(DicomError, match=r"1 slice\(s\) missing.*between slices 4 and 5"):
        load_dicom_series(folder)


def test_irregular_spacing_and_shared_positions_are_refused(tmp_path):
    data, affine = mni_crop()
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    n = data.shape[2]
    depth = np.arange(n, dtype=float)
    depth[6:] += 0.4  # one gap of 1.4 spacings
    pos = np.array([lps[:3, 3] + d * lps[:3, 2] for d in depth])
    write_series(tmp_path / "irr", data, affine, positions=pos)
    with pytest.raises(DicomError, match="irregular slice spacing"):
        load_dicom_series(tmp_path / "irr")
    pos = np.array([lps[:3, 3] + (k // 2) * lps[:3, 2] for k in range(n)])  # two echoes
    write_series(tmp_path / "dup", data, affine, positions=pos)
    with pytest.raises(DicomError, match="share a slice position.*echoes"):
        load_dicom_series(tmp_path / "dup")


def test_mixed_orientations_damaged_file_and_no_images_are_refused(tmp_path):
    folder, files, _ = _series(tmp_path)
    ds = pydicom.dcmread(files[2])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(files[2])
    with pytest.raises(DicomError, match="2 different orientations"):
        load_dicom_series(folder)
    folder, files, _ = _series(tmp_path / "x")
    files[3].write_bytes(files[3].read_bytes()[:400])  # header cut short
    with pytest.raises(DicomError, match=rf"{files[3].name}: the file ends before its pixel"):
        load_dicom_series(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README").write_text("nothing here")
    shutil.copy(get_testdata_file("test-SR.dcm"), empty / "sr.dcm")
    with pytest.raises(DicomError, match="no DICOM image series.*1 not DICOM"):
        load_dicom_series(empty)
    with pytest.raises(FileNotFoundError):
        load_dicom_series(tmp_path / "nowhere")


def test_truncated_pixel_data_is_refused():
    with pytest.raises(DicomError, match="MR_truncated.dcm: cannot read the pixel data"):
        load_dicom_series(get_testdata_file("MR_truncated.dcm"))
