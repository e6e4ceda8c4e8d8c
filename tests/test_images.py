"""The notebook API: ``sam_unet.segment_image`` (a nibabel image) and ``sam_unet.segment_dicom``
(a zipped series, with a DICOM SEG) give the same labels for the same voxels and geometry."""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import sam_unet
from dicom_helpers import mni_crop, reorient, rotation, write_series

DEMO = Path(__file__).resolve().parents[1] / "python" / "sam_unet" / "assets" / "demo_tiny.pt"


@pytest.fixture(scope="module")
def engine():
    return sam_unet.Engine.from_checkpoint(DEMO, device="cpu", batch_size=12)


@pytest.mark.slow
def test_segment_dicom_zip_equals_segment_image(tmp_path, engine, single_thread):
    import highdicom as hd

    data, affine = reorient(*mni_crop(), ("L", "P", "S"))
    affine = rotation(8.0, -5.0) @ affine
    files = write_series(tmp_path / "series", data, affine)
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in files:
            zf.write(f, f"export/{f.name}")
    box = [5, 4, 2, 40, 50, 9]  # (column, row, slice) of the series = the image's axes
    out = sam_unet.segment_dicom(archive, engine, boxes=box, seg_path=tmp_path / "s_seg.dcm")
    ref = sam_unet.segment_image(nib.Nifti1Image(data, affine), engine, boxes=box)
    assert isinstance(out, nib.Nifti1Image) and out.get_data_dtype() == np.uint8
    np.testing.assert_allclose(out.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(ref.dataobj))
    labels = np.asarray(out.dataobj)
    assert labels[:, :, :2].sum() == 0 and labels[:, :, 10:].sum() == 0  # outside the box
    assert labels.sum() > 100
    name = engine.model_info.label_names[1]  # what the model file calls its structure
    assert out.extra["label_names"] == {1: name} == ref.extra["label_names"]
    assert out.extra["series"].images == data.shape[2]
    seg = hd.seg.segread(tmp_path / "s_seg.dcm")
    assert seg.get_segment_description(1).segment_label == name
    assert int(seg.NumberOfFrames) == int((labels.sum(axis=(0, 1)) > 0).sum())
    with pytest.raises(ValueError, match="would be written into the input"):
        sam_unet.segment_dicom(tmp_path / "series", engine, seg_path=tmp_path / "series" / "x")
    with pytest.raises(ValueError, match="would be written into the input"):
        sam_unet.segment_dicom(archive, engine, seg_path=archive)


def test_segment_image_refuses_what_is_not_an_image(engine):
    with pytest.raises(TypeError, match="nibabel image with an affine"):
        sam_unet.segment_image(np.zeros((4, 4, 4)), engine)
