"""Test helpers: DICOM series written with pydicom from an array and its RAS affine.

``write_series(folder, data, affine)`` writes one single-frame instance per slice ``k`` of
``data`` (file frame (column, row, slice)): pixels ``data[:, :, k].T`` (rows x columns), and the
geometry a scanner would write: ImagePositionPatient = the LPS position of voxel (0, 0, k),
ImageOrientationPatient = the LPS directions of the column and row axes, PixelSpacing =
(row spacing, column spacing). File names and InstanceNumbers are shuffled so that a reader
relying on either gets the slice order wrong.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ds(values):
    from pydicom.valuerep import DSfloat

    return [DSfloat(float(v), auto_format=True) for v in values]


def mni_crop(step: int = 3, z_range: tuple[int, int] = (70, 82)) -> tuple[np.ndarray, np.ndarray]:
    """A small crop of the bundled MNI152 T1 (RAS order) as (int16 data, RAS affine)."""
    from sam_unet.data.mni152 import paths

    t1, _ = paths()
    img = nib.as_closest_canonical(nib.load(str(t1)))
    data = np.asarray(img.dataobj)[20:180:step, 20:212:step, z_range[0]:z_range[1]]
    affine = img.affine @ np.array([[step, 0, 0, 20], [0, step, 0, 20], [0, 0, 1, z_range[0]],
                                    [0, 0, 0, 1.0]])
    return data.astype(np.int16), affine


def reorient(data: np.ndarray, affine: np.ndarray, codes: tuple[str, str, str]
             ) -> tuple[np.ndarray, np.ndarray]:
    """The same image with its voxel axes along ``codes`` (nibabel axis codes, RAS world)."""
    start = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(start, nib.orientations.axcodes2ornt(codes))
    out = nib.orientations.apply_orientation(data, transform)
    return np.ascontiguousarray(out), affine @ nib.orientations.inv_ornt_aff(transform,
                                                                           data.shape)


def rotation(ax: float, az: float) -> np.ndarray:
    """A (4, 4) rotation of world space by ``ax`` degrees about x then ``az`` about z."""
    a, c = np.radians(ax), np.radians(az)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = rz @ rx
    return out


def base_dataset(modality: str = "MR", *, study_uid: str | None = None,
                 series_uid: str | None = None, frame_uid: str | None = None,
                 series_number: int = 1, description: str = "test series"):
    """The patient/study/series attributes shared by the instances of a series."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.PatientName = "Test^Volume"
    ds.PatientID = "SAMUNET-TEST"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyID = "1"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.FrameOfReferenceUID = frame_uid or generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.Modality = modality
    ds.Manufacturer = "sam-unet tests"
    return ds


def write_series(folder: Path, data: np.ndarray, affine: np.ndarray, *, modality: str = "MR",
                 slope: float | list[float] = 1.0, intercept: float | list[float] = 0.0,
                 positions: np.ndarray | None = None, seed: int = 0, shuffle: bool = True,
                 **series_kwargs) -> list[Path]:
    """Write ``data`` (cols, rows, slices; stored integers) as a series; returns the files in
    slice order. ``slope``/``intercept`` (per slice or one value) go to the headers as given
    (the stored pixels are ``data`` itself). ``positions`` (slices, 3) LPS overrides the
    ImagePositionPatient of each slice (for broken series)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = base_dataset(modality, **series_kwargs)
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    a = np.asarray(affine, dtype=np.float64)
    lps = LPS @ a
    col_step, row_step = lps[:3, 0], lps[:3, 1]
    dc, dr = np.linalg.norm(col_step), np.linalg.norm(row_step)
    iop = np.concatenate([col_step / dc, row_step / dr])
    n = data.shape[2]
    slopes = np.broadcast_to(np.asarray(slope, dtype=np.float64), (n,))
    inters = np.broadcast_to(np.asarray(intercept, dtype=np.float64), (n,))
    rng = np.random.default_rng(seed)
    names = rng.permutation(n) if shuffle else np.arange(n)
    numbers = rng.permutation(n) + 1 if shuffle else np.arange(n) + 1
    files = []
    for k in range(n):
        ds = base.copy()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.InstanceNumber = int(numbers[k])
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        pos = (lps @ np.array([0.0, 0.0, k, 1.0]))[:3] if positions is None else positions[k]
        ds.ImagePositionPatient = _ds(pos)
        ds.ImageOrientationPatient = _ds(iop)
        ds.PixelSpacing = _ds([dr, dc])
        ds.SliceThickness = _ds([np.linalg.norm(lps[:3, 2])])[0]
        ds.RescaleSlope = _ds([slopes[k]])[0]
        ds.RescaleIntercept = _ds([inters[k]])[0]
        if modality == "CT":
            ds.RescaleType = "HU"
            ds.KVP = "120"
        else:
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.EchoTime = "3"
            ds.RepetitionTime = "8"
            ds.EchoTrainLength = "1"
        pixels = np.ascontiguousarray(data[:, :, k].T.astype(np.int16))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = pixels.tobytes()
        path = folder / f"img{int(names[k]):04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
    return files


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path
