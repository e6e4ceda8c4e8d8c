"""Files in, label files out: ``segment_file``.

One input goes through four steps, each replaceable on its own: read (``io.read_volume``: any
supported format -> a :class:`~sam_unet.io.volume.Volume` in canonical RAS order), map the
prompts from the file's voxel frame to the canonical one, predict (``Engine.segment`` on the
canonical array), write (the writers in :data:`WRITERS`, one per output kind, apart from the
reader). Output naming and the rules that keep inputs safe live in ``runtime/outputs.py``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from sam_unet.io.nifti import is_nifti_path
from sam_unet.io.volume import Volume
from sam_unet.runtime.clinical_outputs import EXTRA_WRITERS
from sam_unet.runtime.outputs import (
    Job,
    OutputError,
    label_output,
    output_is_folder,
    refuse_overwriting_inputs,
)

__all__ = ["WRITERS", "predict", "run_job", "segment_file", "shard", "write_outputs"]


def _write_labels(path: Path, mask: np.ndarray, volume: Volume, engine: Any,
                  names: Any = None) -> Path:
    from sam_unet.io.nifti import save_label_nifti

    return save_label_nifti(path, mask, like=volume)


# output kind -> writer(path, canonical uint8 label map, volume, engine, {label: name}) -> path;
# the kinds beside the label map (names, structures, seg, statistics, preview) are in
# runtime/clinical_outputs.py
WRITERS: dict[str, Callable[..., Path]] = {"labels": _write_labels, **EXTRA_WRITERS}


def slicing_axis(engine: Any, axis: int | None) -> int:
    """The canonical slicing axis a call will use: ``axis``, else the model file's, else -1."""
    if axis is not None:
        return int(axis)
    info = getattr(engine, "model_info", None)
    value = getattr(info, "axis", None)
    return int(value) if value is not None else -1


def predict(engine: Any, volume: Volume, *, axis: int | None = None, boxes: Any = None,
            box_mask: Any = None, seed: Any = None, **options: Any) -> np.ndarray:
    """Segment ``volume`` with prompts given in its file's voxel frame.

    Returns the uint8 mask in canonical order (shape ``volume.shape``). ``options`` (window,
    normalize, batch_size) go to ``Engine.segment``; options left None are not passed, so the
    engine takes them from the model file. ``seed`` (a
    :class:`~sam_unet.runtime.propagate.SeedPrompt` in the file's frame, instead of boxes):
    one box on one slice followed through the volume (``Engine.propagate``).
    """
    try:
        if seed is not None:
            from sam_unet.runtime.propagate import seed_to_canonical

            if boxes is not None or box_mask is not None:
                raise ValueError("give either a seed box (propagation) or boxes, not both")
            cseed = seed_to_canonical(volume, slicing_axis(engine, axis), seed)
            kwargs = {k: v for k, v in dict(options, axis=axis).items() if v is not None}
            return engine.propagate(volume.data, cseed.slice_index, cseed.box, **kwargs,
                                    **cseed.options())
        cboxes, cmask = volume.prompts_to_canonical(slicing_axis(engine, axis), boxes, box_mask)
        kwargs = {k: v for k, v in dict(options, axis=axis, boxes=cboxes, box_mask=cmask).items()
                  if v is not None}
        return engine.segment(volume.data, **kwargs)
    except ValueError as exc:
        where = volume.path if volume.path is not None else "volume"
        raise ValueError(f"{where}: {exc}") from exc


def write_outputs(job: Job, mask: np.ndarray, volume: Volume, engine: Any,
                  names: dict[int, str] | None = None) -> list[Path]:
    """Write every output of ``job`` (each atomically); returns their paths. ``names``:
    {label value: structure name} (default: label 1 named by the model file)."""
    if names is None:
        from sam_unet.runtime.images import default_label_names

        names = default_label_names(engine)
    written: list[Path] = []
    new = {kind: not Path(path).exists() for kind, path in job.outputs.items()}
    try:
        for kind, path in job.outputs.items():
            writer = WRITERS.get(kind)
            if writer is None:
                raise OutputError(f"{job.source}: no writer for output kind {kind!r}")
            written.append(writer(path, mask, volume, engine, names))
    except BaseException:
        # one job's outputs come as a set: a failed SEG must not leave its label map behind
        # looking done (each file is atomic; the set is made so by removing this call's files)
        for kind, path in job.outputs.items():
            if new[kind] and Path(path) in written:
                if Path(path).is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    Path(path).unlink(missing_ok=True)
        raise
    return written


def segment_file(in_path: str | os.PathLike, out_path: str | os.PathLike, engine: Any, *,
                 axis: int | None = None, window: Any = None, normalize: str | None = None,
                 boxes: Any = None, box_mask: Any = None, batch_size: int | None = None,
                 structures: Any = None, series_uid: str | None = None, seed: Any = None
                 ) -> Path:
    """Segment one volume file and write a uint8 label NIfTI; returns the output path.

    Inputs: NIfTI-1/2, NRRD/MetaImage (SimpleITK), or a DICOM series (a folder, a zip or one
    file; ``series_uid`` picks one series of a study). ``structures`` (a prompts file path, its
    JSON content, or StructurePrompts; see runtime/structures_file.py) segments several named
    structures into one label map instead of one structure from ``boxes``/``box_mask``.

    The volume is reoriented to the closest canonical (RAS) orientation for segmentation (so
    ``axis=-1`` means axial for typical scans), the mask is put back into the file's voxel order
    and stored shape, and written with the input's sform/qform and codes, atomically: a failure
    at any point leaves no output file.

    Prompts are in the input FILE's voxel frame (its array axes 0, 1, 2 as stored, whatever
    its orientation), and are mapped through the reorientation:

    - ``boxes=(x0, y0, z0, x1, y1, z1)``: a 3D box in file voxels, corners inclusive;
    - ``boxes={k: (a0, b0, a1, b1)}`` (or an (S, 4) array, NaN rows skipped): per-slice boxes,
      ``k`` indexing the file axis that becomes the canonical slicing axis ``axis`` and each box
      spanning the two other file axes in increasing order;
    - ``box_mask`` (or ``boxes``) a mask volume of the file's 3D shape;
    - ``seed``: a :class:`~sam_unet.runtime.propagate.SeedPrompt` (one box on slice ``k``, ``k``
      and the box as for per-slice boxes): the structure is followed from it slice by slice
      (``Engine.propagate``; "forward" means increasing ``k`` of the file).

    ``axis`` is the slicing axis of the canonical volume (0 sagittal, 1 coronal, 2 or -1
    axial); ``axis``, ``window``, ``normalize`` and ``batch_size`` left None come from the model
    file (``engine.model_info``), see :meth:`Engine.segment`.

    ``out_path`` ending in .nii/.nii.gz is the output file (its folder must exist); any other
    path is a folder (created if missing) that receives ``<stem>_seg.nii.gz``. An output that
    resolves to the input (same path, symlink, hard link) is refused before anything is read.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    job = Job(in_path, {"labels": label_output(in_path, out_path, many=False)})
    refuse_overwriting_inputs([job])
    if out_path.is_file() and not is_nifti_path(out_path):
        raise OutputError(f"{in_path}: output {out_path} is an existing file that is not a "
                          "NIfTI name; give an output .nii/.nii.gz name or a folder")
    if output_is_folder(out_path, many=False):
        out_path.mkdir(parents=True, exist_ok=True)
    out_dir = job.labels.parent
    if not out_dir.is_dir():
        raise FileNotFoundError(f"{job.labels}: output folder {out_dir} does not exist; create "
                                "it or give a folder as output")
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"{job.labels}: output folder {out_dir} is not writable; choose a "
                              "writable output folder")
    run_job(job, engine, axis=axis, boxes=boxes, box_mask=box_mask, window=window,
            normalize=normalize, batch_size=batch_size, structures=structures,
            series_uid=series_uid, seed=seed)
    return job.labels


def run_job(job: Job, engine: Any, *, structures: Any = None, series_uid: str | None = None,
            **options: Any) -> list[Path]:
    """Read, predict, write one job (``options`` as :func:`predict`); returns written paths.

    structures: named structures (a prompts file, see runtime/structures_file.py) segmented
    into one label map instead of one structure; series_uid: the series to read from a DICOM
    input holding several. The caller has already refused outputs that resolve to inputs."""
    from sam_unet.io.inputs import read_volume

    if series_uid is not None:
        from sam_unet.io.dicom import load_dicom_series

        volume = load_dicom_series(job.source, series_uid=series_uid)
    else:
        volume = read_volume(job.source)
    if structures is not None:
        from sam_unet.runtime.images import segment_volume

        if options.get("seed") is not None:
            raise ValueError("give either a seed box (propagation) or a prompts file; put the "
                             'seed in the prompts file as a "propagate" structure')
        options.pop("seed", None)

        mask, names = segment_volume(volume, engine, structures=structures, **options)
        return write_outputs(job, np.asarray(mask), volume, engine, names)
    mask = predict(engine, volume, **options)
    return write_outputs(job, np.asarray(mask), volume, engine)


def shard(items: Iterable[Any], rank: int, world_size: int) -> list[Any]:
    """Items ``rank, rank + world_size, ...``: each torchrun rank takes its own share."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad rank {rank} for world size {world_size}")
    return [x for i, x in enumerate(items) if i % world_size == rank]
