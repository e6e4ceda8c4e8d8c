"""Where outputs go, and the rules that keep inputs safe.

- Names: an output never takes its input's name: ``<stem>_seg.nii.gz`` (``.nii`` for a ``.nii``
  input) in an output folder, or exactly the ``-o`` file for one input.
- Inputs are never outputs: an output that resolves to an input (same path, a symlink to it, a
  hard link: same device and inode) or an output folder that is the input folder is refused
  before any work (:func:`refuse_overwriting_inputs`).
- ``--continue`` skips an output only when it is complete (:func:`output_is_complete`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sam_unet.io.inputs import (
    input_format,
    input_stem,
    is_input,
    label_suffix,
    list_inputs,
    read_geometry,
)
from sam_unet.io.nifti import is_nifti_path

LABEL_SUFFIX_TAG = "_seg"


class OutputError(ValueError):
    """An output that would overwrite an input, or an output path that cannot be used."""


@dataclass(frozen=True)
class Job:
    """One input and the files made from it.

    source: the input (a file, or a series folder for formats that have them).
    outputs: {kind: path}; "labels" is the uint8 label map (NIfTI). Other kinds (a DICOM SEG,
        a statistics table) are added by the commands that write them.
    """

    source: Path
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def labels(self) -> Path:
        return self.outputs["labels"]


def label_name(source: str | os.PathLike) -> str:
    """``<stem>_seg.nii.gz`` (or ``.nii``) for an input: never the input's own name."""
    return f"{input_stem(source)}{LABEL_SUFFIX_TAG}{label_suffix(source)}"


def label_output(source: str | os.PathLike, output: str | os.PathLike, *, many: bool) -> Path:
    """The label map path of ``source``: ``output`` itself when it names a NIfTI file and there
    is one input (and it is not an existing folder), else ``output/<stem>_seg.<ext>``."""
    source, output = Path(source), Path(output)
    if not many and is_nifti_path(output) and not output.is_dir():
        return output
    return output / label_name(source)


def output_is_folder(output: str | os.PathLike, *, many: bool) -> bool:
    output = Path(output)
    return many or output.is_dir() or not is_nifti_path(output)


def plan_jobs(input_path: str | os.PathLike, output: str | os.PathLike) -> list[Job]:
    """The jobs of ``sam-unet segment -i input_path -o output`` (no file is touched).

    A folder input: one job per input inside it, outputs ``output/<stem>_seg.<ext>``; one file:
    ``output`` itself if it ends in .nii/.nii.gz, else ``output/<stem>_seg.<ext>``.
    Raises FileNotFoundError / OutputError with a message naming the path and the fix.
    """
    input_path, output = Path(input_path), Path(output)
    if input_path.is_dir() and not is_input(input_path):
        sources = list_inputs(input_path)
        if not sources:
            raise FileNotFoundError(f"{input_path}: no .nii or .nii.gz files in this folder; "
                                    "give a folder of inputs (NIfTI, NRRD/MetaImage, DICOM "
                                    "zips or series folders), a DICOM series folder, or one "
                                    "file")
        if output.exists() and not output.is_dir():
            raise OutputError(f"{input_path}: -o {output} is a file, but a folder of inputs "
                              "needs an output folder; give a folder for -o")
        if not output.exists() and is_nifti_path(output):
            raise OutputError(f"{input_path}: -o {output} names a NIfTI file, but a folder of "
                              f"{len(sources)} inputs needs an output folder; give a folder "
                              "for -o")
        many = True
    else:
        if not input_path.exists():
            raise FileNotFoundError(f"{input_path}: no such file or folder; check the path")
        if input_format(input_path) is None:
            raise OutputError(f"{input_path}: not a supported input (a .nii/.nii.gz, .nrrd, "
                              ".nhdr, .mha or .mhd file, a DICOM series folder, zip or file, or "
                              "a folder of them); convert it to NIfTI")
        sources = [input_path]
        many = False
        if output.exists() and not output.is_dir() and not is_nifti_path(output):
            raise OutputError(f"{input_path}: -o {output} is an existing file that is not a "
                              "NIfTI name; give an output .nii/.nii.gz name or a folder")
    jobs = [Job(s, {"labels": label_output(s, output, many=many)}) for s in sources]
    seen: dict[Path, Path] = {}
    for job in jobs:
        for path in job.outputs.values():
            key = _resolved(path)
            if key in seen:
                raise OutputError(f"{job.source}: its output {path} is also the output of "
                                  f"{seen[key]}; rename one of the inputs")
            seen[key] = job.source
    return jobs


def _resolved(path: Path) -> Path:
    """Absolute path with symlinks resolved (the parent's too, for files not yet there)."""
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def refuse_overwriting_inputs(jobs: list[Job], *, input_folder: str | os.PathLike | None = None
                              ) -> None:
    """Raise OutputError when any output resolves to any input, before anything is written.

    Compared: resolved paths (symlinks followed), device and inode (hard links), and, for a
    folder of inputs, the output folder against the input folder.
    """
    by_path = {_resolved(j.source): j.source for j in jobs}
    by_id = {fid: j.source for j in jobs if (fid := _file_id(j.source)) is not None}
    if input_folder is not None:
        in_dir = Path(input_folder)
        out_dirs = {j.labels.parent for j in jobs}
        for out_dir in out_dirs:
            same = _resolved(out_dir) == _resolved(in_dir)
            if not same and out_dir.exists():
                same = _file_id(out_dir) == _file_id(in_dir)
            if same:
                named = "" if str(out_dir) == str(in_dir) else f" {out_dir}"
                raise OutputError(
                    f"{in_dir}: the output folder{named} is the input folder; give another -o "
                    "folder (outputs beside the inputs would be read as inputs next time)")
    for job in jobs:  # an input that is a folder (a DICOM series) gets nothing written in it
        if job.source.is_dir():
            src = _resolved(job.source)
            for path in job.outputs.values():
                if src == _resolved(path) or src in _resolved(path).parents:
                    raise OutputError(
                        f"{job.source}: the output {path} would be written inside this input "
                        "folder (a DICOM series); give an -o outside it")
    for job in jobs:
        for path in job.outputs.values():
            hit = by_path.get(_resolved(path))
            how = "is a symlink to" if path.is_symlink() else "is"
            if hit is None and (fid := _file_id(path)) is not None:
                hit = by_id.get(fid)
                how = "is a hard link to"
            if hit is not None:
                what = "the input itself" if hit == job.source else f"the input {hit}"
                named = "" if str(path) == str(job.source) else f" {path}"
                raise OutputError(
                    f"{job.source}: the output{named} {how} {what}; give another -o (outputs "
                    f"are named <name>{LABEL_SUFFIX_TAG}.nii.gz in an output folder)")


def output_is_complete(job: Job, *, series_uid: str | None = None) -> bool:
    """True when the label map exists, is a readable NIfTI whose voxels all decompress, and has
    the input's stored shape and affine (``--continue`` skips only these); ``series_uid``: the
    series segmented from a DICOM input that holds several."""
    import nibabel as nib

    out = job.labels
    if not out.is_file() or not is_nifti_path(out):
        return False
    try:
        shape, affine = read_geometry(job.source, series_uid=series_uid)
        with nib.imageglobals.LoggingOutputSuppressor():
            img = nib.load(str(out))
            data = np.asanyarray(img.dataobj)
        if tuple(data.shape) != tuple(shape) or data.dtype.kind not in "iu":
            return False
        return bool(np.allclose(img.affine, affine, atol=1e-4))
    except Exception:  # noqa: BLE001 - anything unreadable is simply not complete
        return False
