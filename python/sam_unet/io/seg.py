"""DICOM SEG out (highdicom): a label map of a DICOM series as one Segmentation instance.

One segment per structure, numbered 1..N in the order of the label values; each segment carries
the structure's name (SegmentLabel), its label value (SegmentDescription ``label <value>``),
the algorithm's identity (sam-unet, its version, family "Artificial Intelligence", the model)
and an optional display colour. Every frame references the source image it was computed on
(SOP Instance UID, and frame number for multi-frame sources) and takes its plane position, so
viewers (3D Slicer, OHIF) overlay it on the series it came from. Only a DICOM series has source
instances to reference: other inputs are refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sam_unet.atomic import atomic_path
from sam_unet.io.volume import Volume

__all__ = ["SegError", "write_dicom_seg"]

ALGORITHM_NAME = "sam-unet"
# SNOMED CT "Anatomical structure" / "Tissue": the generic pair for a structure whose exact
# anatomy the model does not state.
_CATEGORY = ("91723000", "SCT", "Anatomical Structure")
_TYPE = ("85756007", "SCT", "Tissue")


class SegError(ValueError):
    """A DICOM SEG that cannot be written (wrong input kind, labels); the message says why."""


def _file_frame_labels(labels: np.ndarray, volume: Volume, canonical: bool) -> np.ndarray:
    labels = np.asarray(labels)
    if canonical:
        return volume.to_original(labels)
    if labels.shape != tuple(volume.original_shape[:3]):
        raise SegError(f"label map of shape {labels.shape} does not match the series' voxel "
                       f"grid {tuple(volume.original_shape[:3])}")
    return labels


def _segment_numbers(values: list[int]) -> np.ndarray:
    """A 256-entry lookup: label value -> segment number (1..N), 0 elsewhere."""
    lut = np.zeros(256, dtype=np.uint8)
    for number, value in enumerate(values, start=1):
        lut[value] = number
    return lut


def write_dicom_seg(
    path: str | os.PathLike,
    labels: np.ndarray,
    volume: Volume,
    label_names: Mapping[int, str],
    *,
    canonical: bool = True,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    model: str | None = None,
    series_description: str = "sam-unet segmentation",
) -> Path:
    """Write ``labels`` as a binary DICOM SEG referencing ``volume``'s source images, atomically.

    labels: uint8 label map, canonical order (shape ``volume.shape``) or, with
        ``canonical=False``, the series' voxel frame (columns, rows, slices).
    volume: a :class:`~sam_unet.io.dicom.DicomVolume` (anything else: SegError).
    label_names: {label value: structure name}; every named structure gets a segment (one with
        no voxel has no frame), and values present but unnamed get ``label <value>``.
    colors: optional {label value: (r, g, b)} display colours.
    model: what made the labels (e.g. the model file's name and variant), stored with the
        algorithm identification.
    Returns ``path``. Frames of empty slices are omitted (highdicom's default).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    from sam_unet import __version__
    from sam_unet.io.dicom import DicomVolume

    path = Path(path)
    if not isinstance(volume, DicomVolume) or not volume.instances:
        where = volume.path if volume.path is not None else "the input"
        raise SegError(f"{where}: DICOM SEG needs a DICOM series as input (it references the "
                       "source images); write a NIfTI label map for this input instead")
    file_labels = _file_frame_labels(labels, volume, canonical)
    if file_labels.size and (file_labels.min() < 0 or file_labels.max() > 255):
        raise SegError(f"{path}: label values must lie in 0..255")
    file_labels = file_labels.astype(np.uint8, copy=False)
    present = {int(v) for v in np.unique(file_labels) if v != 0}
    names = {int(k): str(v) for k, v in label_names.items() if int(k) != 0}
    names.update({v: f"label {v}" for v in present - set(names)})
    if not names:
        raise SegError(f"{path}: no structure to write (no label names and an empty label map)")
    values = sorted(names)
    lut = _segment_numbers(values)
    # (slices, rows, columns) of segment numbers
    frames = lut[file_labels.transpose(2, 1, 0)]

    multi = {s.frame is not None for s in volume.slices}
    if multi == {True}:
        if len(volume.instances) != 1:
            raise SegError(f"{volume.path}: the series spreads its frames over "
                           f"{len(volume.instances)} multi-frame instances; DICOM SEG here "
                           "references one multi-frame source; convert the series to "
                           "single-frame images first")
        order = np.argsort([s.frame for s in volume.slices])
        source_images = [volume.instances[0]]
        pixel_array = frames[order]
    else:
        source_images = [volume.instances[s.instance] for s in volume.slices]
        pixel_array = frames

    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence,
        version=__version__, parameters={"model": model} if model else None)
    descriptions = []
    for number, value in enumerate(values, start=1):
        color = None
        if colors is not None and value in colors:
            color = hd.color.CIELabColor.from_rgb(*(int(c) for c in colors[value]))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=names[value][:64],
            segmented_property_category=Code(*_CATEGORY),
            segmented_property_type=Code(*_TYPE),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, display_color=color))
        descriptions[-1].SegmentDescription = f"label {value}"

    series = volume.series
    number = (series.number or 0) + 1000 if series is not None else 1000
    try:
        seg = hd.seg.Segmentation(
            source_images=source_images,
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="sam-unet",
            manufacturer_model_name=(model or "sam-unet")[:64],
            software_versions=__version__,
            device_serial_number="none",
            series_description=series_description[:64],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise SegError(f"{path}: cannot build the DICOM SEG ({type(exc).__name__}: "
                       f"{' '.join(str(exc).split())})") from exc
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{path}: output folder {parent} does not exist; create it")
    with atomic_path(path, suffix=".tmp.dcm") as tmp:
        seg.save_as(tmp)
    return path


def segment_names(seg_path: str | os.PathLike) -> dict[int, str]:
    """{label value: name} of a SEG written by :func:`write_dicom_seg` (for checks and tools)."""
    import pydicom

    ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    out: dict[int, str] = {}
    for item in ds.SegmentSequence:
        text = str(getattr(item, "SegmentDescription", ""))
        value = int(text.split()[-1]) if text.startswith("label ") else int(item.SegmentNumber)
        out[value] = str(item.SegmentLabel)
    return out
