"""The outputs beside the label map: names, one file per structure, DICOM SEG, statistics,
preview. Each is an output kind of a :class:`~sam_unet.runtime.outputs.Job`, named from the
label map's name (``<stem>_seg.nii.gz`` -> ``<stem>_seg.json`` ...), so it never takes an
input's name and is checked against the inputs with the label map before any work.

=============  ==============================  ==========================================
kind           name                            content
=============  ==============================  ==========================================
names          ``<stem>_seg.json``             {"labels": {value: name}, input, model}
structures     ``<stem>_seg_structures/``      ``<name>.nii.gz``: one 0/1 map per structure
seg            ``<stem>_seg.dcm``              DICOM SEG (DICOM series inputs only)
statistics     ``<stem>_seg_statistics.json``  per structure: voxels, mm3, ml, mean, std, bbox
preview        ``<stem>_seg_preview.png``      montage, one colour per structure, legend
=============  ==============================  ==========================================

Writers take (path, canonical uint8 label map, volume, engine, {label value: name}).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sam_unet.io.volume import Volume

__all__ = ["EXTRA_KINDS", "EXTRA_WRITERS", "add_cli_arguments", "add_outputs", "labels_base",
           "read_prompts", "requested_kinds"]

EXTRA_KINDS: dict[str, str] = {
    "names": ".json",
    "structures": "_structures",
    "seg": ".dcm",
    "statistics": "_statistics.json",
    "preview": "_preview.png",
}


def labels_base(labels: Path) -> Path:
    """The label map's path without .nii / .nii.gz."""
    name = labels.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return labels.with_name(name[: -len(suffix)])
    return labels


def add_outputs(jobs: Iterable[Any], kinds: Iterable[str]) -> None:
    """Add the ``kinds`` of :data:`EXTRA_KINDS` to every job's outputs (in place).

    Raises OutputError for ``seg`` on an input that is not a DICOM series (a SEG references
    the source images), before anything is read or written.
    """
    from sam_unet.io.inputs import input_format
    from sam_unet.runtime.outputs import OutputError

    kinds = list(kinds)
    for job in jobs:
        if "seg" in kinds:
            fmt = input_format(job.source)
            if fmt is None or fmt.name != "dicom":
                raise OutputError(f"{job.source}: --seg writes a DICOM SEG, which references "
                                  "the source images of a DICOM series; this input is not one: "
                                  "leave out --seg (the NIfTI label map is written anyway)")
        base = labels_base(job.labels)
        for kind in kinds:
            job.outputs[kind] = base.with_name(base.name + EXTRA_KINDS[kind])


def _model(engine: Any) -> str | None:
    from sam_unet.runtime.images import model_name

    return model_name(engine)


def _write_names(path: Path, mask: np.ndarray, volume: Volume, engine: Any,
                 names: Mapping[int, str]) -> Path:
    from sam_unet.atomic import write_text_atomic

    doc: dict[str, Any] = {"labels": {str(k): v for k, v in sorted(names.items())},
                           "input": str(volume.path) if volume.path is not None else None,
                           "model": _model(engine)}
    series = getattr(volume, "series", None)
    if series is not None:
        doc["series"] = {"uid": series.uid, "number": series.number,
                         "description": series.description, "modality": series.modality}
    return write_text_atomic(path, json.dumps(doc, indent=2) + "\n")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "structure"


def _write_structures(path: Path, mask: np.ndarray, volume: Volume, engine: Any,
                      names: Mapping[int, str]) -> Path:
    """A folder with one uint8 0/1 NIfTI per structure, ``<name>.nii.gz``."""
    from sam_unet.io.nifti import save_label_nifti

    path.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for value, name in sorted(names.items()):
        stem = _safe(name)
        if stem in used:
            stem = f"{stem}_{value}"
        used.add(stem)
        save_label_nifti(path / f"{stem}.nii.gz", (mask == value).astype(np.uint8), like=volume)
    return path


def _write_seg(path: Path, mask: np.ndarray, volume: Volume, engine: Any,
               names: Mapping[int, str]) -> Path:
    from sam_unet.io.seg import write_dicom_seg
    from sam_unet.runtime.preview import label_colors

    return write_dicom_seg(path, mask, volume, names, colors=label_colors(names),
                           model=_model(engine))


def _write_statistics(path: Path, mask: np.ndarray, volume: Volume, engine: Any,
                      names: Mapping[int, str]) -> Path:
    from sam_unet.runtime.statistics import structure_statistics, write_statistics

    return write_statistics(path, structure_statistics(mask, volume, names))


def _write_preview(path: Path, mask: np.ndarray, volume: Volume, engine: Any,
                   names: Mapping[int, str]) -> Path:
    from sam_unet.runtime.preview import write_preview

    zooms = tuple(float(z) for z in np.sqrt((volume.canonical_affine[:3, :3] ** 2).sum(axis=0)))
    info = getattr(engine, "model_info", None)
    axis = int(getattr(info, "axis", -1) if info is not None else -1) % 3
    title = f"{volume.path.name if volume.path is not None else 'volume'}: sam-unet"
    return write_preview(path, volume.data, mask, names, zooms=zooms, axis=axis, title=title)


EXTRA_WRITERS: dict[str, Callable[..., Path]] = {
    "names": _write_names,
    "structures": _write_structures,
    "seg": _write_seg,
    "statistics": _write_statistics,
    "preview": _write_preview,
}


# ------------------------------------------------------------------------------ the CLI's side
def add_cli_arguments(parser: Any) -> None:
    """``sam-unet segment`` options for DICOM inputs, named structures and these outputs."""
    parser.add_argument("--series", default=None, metavar="UID",
                        help="the SeriesInstanceUID to segment when a DICOM input (folder or "
                             "zip) holds several image series (default: refuse such an input "
                             "and list its series with their UIDs and descriptions)")
    parser.add_argument("--prompts", default=None, metavar="FILE",
                        help="JSON prompts file naming several structures, each with a label "
                             "value and a prompt (3D box, per-slice boxes, a value of a coarse "
                             "label map, or the full slice), all in the input's voxel frame; "
                             "one label map out, overlaps to the higher logit, names in "
                             "<stem>_seg.json (see docs/guide.md)")
    parser.add_argument("--per-structure", action="store_true",
                        help="also write <stem>_seg_structures/<name>.nii.gz, one 0/1 map per "
                             "structure")
    parser.add_argument("--seg", action="store_true",
                        help="also write <stem>_seg.dcm, a DICOM SEG referencing the series' "
                             "images (DICOM inputs only)")
    parser.add_argument("--statistics", action="store_true",
                        help="also write <stem>_seg_statistics.json: per structure voxels, "
                             "mm3, ml, intensity mean/std, bounding box (input voxel frame)")
    parser.add_argument("--preview", action="store_true",
                        help="also write <stem>_seg_preview.png: a montage of slices with one "
                             "colour per structure and a legend")


def requested_kinds(args: Any) -> list[str]:
    """The extra output kinds the options ask for."""
    kinds = []
    if getattr(args, "prompts", None):
        kinds.append("names")
    for flag, kind in (("per_structure", "structures"), ("seg", "seg"),
                       ("statistics", "statistics"), ("preview", "preview")):
        if getattr(args, flag, False):
            kinds.append(kind)
    return kinds


def read_prompts(args: Any) -> Any:
    """The checked prompts file of ``--prompts`` (None without it); refuses --box with it."""
    if not getattr(args, "prompts", None):
        return None
    for flag in ("box", "seed_box"):
        if getattr(args, flag, None) is not None:
            option = "--" + flag.replace("_", "-")
            raise ValueError(f"{option} and --prompts both give prompts; put the structures' "
                             f"prompts in the prompts file or leave out --prompts")
    from sam_unet.runtime.structures_file import read_structures_file

    return read_structures_file(args.prompts)
