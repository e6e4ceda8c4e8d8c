"""DICOM SEG out: written with highdicom from a label map of a DICOM series, read back with
highdicom.seg.segread, and every frame checked against the source image it references (found
by its SOP Instance UID among the series' files, read independently with pydicom)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_helpers import mni_crop, reorient, rotation, save_nifti, write_series
from sam_unet import __version__
from sam_unet.io import load_nifti
from sam_unet.io.dicom import load_dicom_series
from sam_unet.io.seg import SegError, segment_names, write_dicom_seg

hd = pytest.importorskip("highdicom")

NAMES = {1: "white matter", 3: "grey matter", 200: "bright"}


def _labels(vol) -> np.ndarray:
    """A canonical label map with three structures, different on every slice, one empty
    slice (file frame) and one structure overlapping nothing else."""
    data = vol.data.astype(np.float32)
    lab = np.zeros(vol.shape, dtype=np.uint8)
    lab[data > 60] = 3
    lab[data > 110] = 1
    lab[data > 160] = 200
    file = vol.to_original(lab)
    file[:, :, 2] = 0
    return vol.to_canonical(file)


def _source_by_uid(folder: Path) -> dict[str, pydicom.Dataset]:
    out = {}
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        out[ds.SOPInstanceUID] = ds
    return out


def _slice_of(vol, position) -> int:
    """The file-frame slice index of an ImagePositionPatient, through the affine."""
    ras = np.array([-float(position[0]), -float(position[1]), float(position[2]), 1.0])
    ijk = np.linalg.solve(vol.affine, ras)
    np.testing.assert_allclose(ijk[:2], 0.0, atol=1e-3)
    k = int(round(ijk[2]))
    assert abs(ijk[2] - k) < 1e-3
    return k


def _check_frames(seg, vol, file_labels, sources, values):
    """Every frame: referenced source exists, same position, pixels = that slice's label."""
    assert int(seg.NumberOfFrames) > 0
    seen = set()
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        src = sources[ref.ReferencedSOPInstanceUID]
        pos = item.PlanePositionSequence[0].ImagePositionPatient
        if "ReferencedFrameNumber" in ref:  # multi-frame source: that frame's position
            frame = src.PerFrameFunctionalGroupsSequence[int(ref.ReferencedFrameNumber) - 1]
            src_pos = frame.PlanePositionSequence[0].ImagePositionPatient
        else:
            src_pos = src.ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in pos], [float(v) for v in src_pos],
                                   atol=1e-4)
        k = _slice_of(vol, src_pos)
        expected = (file_labels[:, :, k].T == values[segment - 1]).astype(np.uint8)
        np.testing.assert_array_equal(seg.get_frame(f + 1), expected)
        seen.add((k, segment))
    # every non-empty (slice, structure) pair has its frame
    wanted = {(k, n) for n, v in enumerate(values, start=1) for k in range(file_labels.shape[2])
              if (file_labels[:, :, k] == v).any()}
    assert seen == wanted


@pytest.mark.parametrize("orientation", ["sagittal", "oblique"])
def test_seg_frames_map_to_their_source_instances(tmp_path, orientation):
    data, affine = mni_crop()
    if orientation == "sagittal":
        data, affine = reorient(data, affine, ("P", "I", "R"))
    else:
        affine = rotation(15.0, 10.0) @ affine
    write_series(tmp_path / "s", data, affine, modality="CT", series_number=4)
    vol = load_dicom_series(tmp_path / "s")
    labels = _labels(vol)
    out = write_dicom_seg(tmp_path / "out_seg.dcm", labels, vol, NAMES,
                          colors={1: (255, 0, 0)}, model="demo_tiny.pt (tiny)")
    seg = hd.seg.segread(out)
    assert seg.SeriesNumber == 1004 and seg.Modality == "SEG"
    assert seg.StudyInstanceUID == vol.instances[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == vol.instances[0].FrameOfReferenceUID
    values = sorted(NAMES)
    _check_frames(seg, vol, vol.to_original(labels), _source_by_uid(tmp_path / "s"), values)
    # segment descriptions: names, label values, algorithm identity, colour
    assert segment_names(out) == NAMES
    for number, value in enumerate(values, start=1):
        desc = seg.get_segment_description(number)
        assert desc.segment_label == NAMES[value]
        assert desc.SegmentDescription == f"label {value}"
        algo = desc.algorithm_identification[0]
        assert algo.AlgorithmName == "sam-unet" and algo.AlgorithmVersion == __version__
        assert algo.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    lab = seg.get_segment_description(1).RecommendedDisplayCIELabValue
    assert hd.color.CIELabColor.from_dicom_value(tuple(lab)).to_rgb() == (255, 0, 0)
    # the per-instance view highdicom gives agrees with the label map
    uid = vol.slices[5].sop_instance_uid
    px = seg.get_pixels_by_source_instance([uid], segment_numbers=[1, 2, 3])
    file_labels = vol.to_original(labels)
    for n, v in enumerate(values):
        np.testing.assert_array_equal(px[0, :, :, n], file_labels[:, :, 5].T == v)


def test_seg_of_an_enhanced_multiframe_source_references_frames(tmp_path):
    from highdicom.legacy import LegacyConvertedEnhancedMRImage
    from pydicom.uid import generate_uid

    data, affine = reorient(*mni_crop(), ("L", "I", "P"))
    files = write_series(tmp_path / "single", data, affine)
    enhanced = LegacyConvertedEnhancedMRImage(
        [pydicom.dcmread(f) for f in files], series_instance_uid=generate_uid(),
        series_number=2, sop_instance_uid=generate_uid(), instance_number=1)
    (tmp_path / "mf").mkdir()
    enhanced.save_as(tmp_path / "mf" / "enhanced.dcm")
    vol = load_dicom_series(tmp_path / "mf")
    labels = _labels(vol)
    out = write_dicom_seg(tmp_path / "mf_seg.dcm", labels, vol, NAMES)
    seg = hd.seg.segread(out)
    _check_frames(seg, vol, vol.to_original(labels), _source_by_uid(tmp_path / "mf"),
                  sorted(NAMES))


def test_seg_of_a_nifti_input_is_refused(tmp_path):
    data, affine = mni_crop()
    vol = load_nifti(save_nifti(tmp_path / "t1.nii.gz", data, affine))
    with pytest.raises(SegError, match=r"t1.nii.gz: DICOM SEG needs a DICOM series as input"):
        write_dicom_seg(tmp_path / "t1_seg.dcm", np.zeros(vol.shape, np.uint8), vol, NAMES)
    assert not (tmp_path / "t1_seg.dcm").exists()


def test_seg_of_pydicom_ct_small(tmp_path):
    from pydicom.data import get_testdata_file

    vol = load_dicom_series(get_testdata_file("CT_small.dcm"))
    labels = (vol.data > 100).astype(np.uint8)  # HU > 100
    out = write_dicom_seg(tmp_path / "ct_seg.dcm", labels, vol, {1: "dense"})
    seg = hd.seg.segread(out)
    assert int(seg.NumberOfFrames) == 1
    ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert ref.SourceImageSequence[0].ReferencedSOPInstanceUID == vol.slices[0].sop_instance_uid
    np.testing.assert_array_equal(seg.get_frame(1), vol.to_original(labels)[:, :, 0].T)
