"""Segment from Python without files in between: nibabel images and DICOM series.

For a notebook::

    import nibabel as nib
    import sam_unet

    engine = sam_unet.Engine.from_checkpoint("model.pt")
    labels = sam_unet.segment_image(nib.load("ct.nii.gz"), engine)        # a nibabel image
    labels = sam_unet.segment_dicom("study.zip", engine, structures="prompts.json",
                                    seg_path="ct_seg.dcm")                  # + a DICOM SEG
    labels.extra["label_names"]                                            # {1: "liver", ...}

Both return a ``nibabel.Nifti1Image`` of uint8 labels in the input's own voxel frame (for a DICOM
series: (column, row, slice)) with the input's affine; ``img.extra["label_names"]`` names the
labels. Prompts (``boxes``, ``box_mask``, ``structures``) are in that same voxel frame; see
:mod:`sam_unet.runtime.structures_file` for the structures (a prompts file, its JSON content as
a dict, or ``StructurePrompt`` s).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sam_unet.io.volume import Volume

__all__ = ["default_label_names", "model_name", "segment_dicom", "segment_image",
           "segment_volume"]


def default_label_names(engine: Any) -> dict[int, str]:
    """{1: name} for a one-structure mask: the model file's name for label 1, else
    "foreground"."""
    info = getattr(engine, "model_info", None)
    names = getattr(info, "label_names", None) or {}
    return {1: str({int(k): v for k, v in names.items()}.get(1, "foreground"))}


def _slicing_axis(engine: Any, axis: int | None) -> int:
    if axis is not None:
        return int(axis)
    info = getattr(engine, "model_info", None)
    value = getattr(info, "axis", None)
    return int(value) if value is not None else -1


def _structure_prompts(structures: Any, volume: Volume, axis: int
                       ) -> tuple[list[Any], dict[int, str]]:
    """Structures given any way -> (canonical StructurePrompts, {label: name})."""
    from sam_unet.runtime.prompts import StructurePrompt
    from sam_unet.runtime.structures_file import (
        StructuresFile,
        parse_structures,
        read_structures_file,
    )

    if isinstance(structures, str | os.PathLike):
        structures = read_structures_file(structures)
    elif isinstance(structures, Mapping):
        structures = parse_structures(structures)
    if isinstance(structures, StructuresFile):
        return structures.prompts_for(volume, axis), structures.label_names
    items = list(structures) if isinstance(structures, Sequence) else None
    if not items or not all(isinstance(s, StructurePrompt) for s in items):
        raise TypeError("structures must be a prompts file path, its JSON content (a dict), a "
                        "StructuresFile or a list of StructurePrompt")
    out = []
    for s in items:  # file-frame prompts -> canonical
        boxes, mask = volume.prompts_to_canonical(axis, s.boxes, s.box_mask)
        out.append(StructurePrompt(name=s.name, label=s.label, boxes=boxes, box_mask=mask))
    return out, {int(s.label): s.name for s in items}


def segment_volume(volume: Volume, engine: Any, *, structures: Any = None, boxes: Any = None,
                   box_mask: Any = None, axis: int | None = None, **options: Any
                   ) -> tuple[np.ndarray, dict[int, str]]:
    """Segment a loaded :class:`Volume`; prompts in its file's voxel frame.

    structures: several named structures (see the module docstring) -> one label map through
        ``Engine.segment_structures``; otherwise one structure from ``boxes`` / ``box_mask``
        (or full-slice boxes) through ``Engine.segment``, labelled 1.
    options: window, normalize, batch_size for the engine (None: the model file's).
    Returns (canonical uint8 label map of shape ``volume.shape``, {label value: name}).
    """
    kwargs = {k: v for k, v in dict(options, axis=axis).items() if v is not None}
    where = volume.path if volume.path is not None else "volume"
    try:
        if structures is not None:
            if boxes is not None or box_mask is not None:
                raise ValueError("give either structures or boxes/box_mask, not both")
            prompts, names = _structure_prompts(structures, volume, _slicing_axis(engine, axis))
            labels = engine.segment_structures(volume.data, prompts, **kwargs)
            return np.asarray(labels), names
        cboxes, cmask = volume.prompts_to_canonical(_slicing_axis(engine, axis), boxes, box_mask)
        mask = engine.segment(volume.data, boxes=cboxes, box_mask=cmask, **kwargs)
    except ValueError as exc:
        if str(exc).startswith(str(where)):
            raise
        raise type(exc)(f"{where}: {exc}") from exc
    return np.asarray(mask), default_label_names(engine)


def model_name(engine: Any) -> str | None:
    """``<model file name> (<variant>)`` for output metadata, or None."""
    source = getattr(engine, "source", None)
    variant = getattr(getattr(engine, "model_info", None), "variant", None)
    if source is None:
        return variant
    return f"{Path(source).name} ({variant})" if variant else Path(source).name


def _refuse_input_as_output(out: Path, source: Path) -> None:
    """An output may not be the input file, nor lie inside an input folder."""
    out_r, src_r = out.resolve(), source.resolve()
    if out_r == src_r or (source.is_dir() and src_r in out_r.parents):
        raise ValueError(f"{out}: the output would be written into the input {source}; choose "
                         "an output outside the input")
    if out.exists() and source.exists() and os.path.samefile(out, source):
        raise ValueError(f"{out}: is the input {source} (a link to it); choose another output")


def _label_image(volume: Volume, labels: np.ndarray, names: dict[int, str], extra: dict):
    import nibabel as nib

    file_labels = np.ascontiguousarray(volume.to_original(labels), dtype=np.uint8)
    img = nib.Nifti1Image(file_labels, volume.affine,
                          extra={"label_names": dict(names), **extra})
    img.header.set_intent("label", (), name="labels")
    img.header["cal_min"] = 0
    img.header["cal_max"] = float(file_labels.max()) if file_labels.size else 0.0
    return img


def segment_image(img: Any, engine: Any, *, structures: Any = None, boxes: Any = None,
                  box_mask: Any = None, axis: int | None = None, window: Any = None,
                  normalize: str | None = None, batch_size: int | None = None):
    """Segment a nibabel image (NIfTI-1/2, MGH, ... anything with an affine) in memory.

    img: a 3D image (a 4D image with one volume is taken as 3D); its data as nibabel scales it.
    Prompts are in the image's voxel frame (its array axes); see :func:`segment_volume`.
    Returns a ``nibabel.Nifti1Image`` of uint8 labels of the image's 3D shape with its affine;
    ``result.extra["label_names"]`` is {label value: name}.
    """
    from sam_unet.io.canonical import volume_from_array

    affine = getattr(img, "affine", None)
    if affine is None or not hasattr(img, "dataobj"):
        raise TypeError(f"img must be a nibabel image with an affine, got {type(img).__name__}")
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, np.newaxis]
    name = getattr(img, "get_filename", lambda: None)()
    volume = volume_from_array(data, affine, path=Path(name) if name else None)
    labels, names = segment_volume(volume, engine, structures=structures, boxes=boxes,
                                   box_mask=box_mask, axis=axis, window=window,
                                   normalize=normalize, batch_size=batch_size)
    return _label_image(volume, labels, names, {})


def segment_dicom(path: str | os.PathLike, engine: Any, *, series_uid: str | None = None,
                  structures: Any = None, boxes: Any = None, box_mask: Any = None,
                  axis: int | None = None, window: Any = None, normalize: str | None = None,
                  batch_size: int | None = None, seg_path: str | os.PathLike | None = None):
    """Segment a DICOM series (a folder, a zip or one file; ``series_uid`` picks one series of a
    study) and optionally write a DICOM SEG of the result to ``seg_path``.

    Prompts are in the series' voxel frame (column, row, slice). Returns a
    ``nibabel.Nifti1Image`` of uint8 labels of shape (columns, rows, slices) with the series'
    RAS affine; ``result.extra`` holds ``label_names`` and ``series`` (a SeriesInfo).
    """
    from sam_unet.io.dicom import load_dicom_series

    if seg_path is not None:
        _refuse_input_as_output(Path(seg_path), Path(path))
    volume = load_dicom_series(path, series_uid=series_uid)
    labels, names = segment_volume(volume, engine, structures=structures, boxes=boxes,
                                   box_mask=box_mask, axis=axis, window=window,
                                   normalize=normalize, batch_size=batch_size)
    if seg_path is not None:
        from sam_unet.io.seg import write_dicom_seg
        from sam_unet.runtime.preview import label_colors

        write_dicom_seg(seg_path, labels, volume, names, colors=label_colors(names),
                        model=model_name(engine))
    return _label_image(volume, labels, names, {"series": volume.series})
