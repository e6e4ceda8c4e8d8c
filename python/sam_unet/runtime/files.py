"""NIfTI in, NIfTI out: ``segment_file`` and folder handling for the CLI."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in NIFTI_SUFFIXES)


def segment_file(in_path: str | Path, out_path: str | Path, engine: Any, **segment_kwargs: Any
                 ) -> Path:
    """Segment one NIfTI volume and write a uint8 label NIfTI.

    The volume is reoriented to the closest canonical (RAS) orientation for segmentation (so
    ``axis=-1`` means axial for typical scans), the mask is put back into the file's own
    orientation, and written with the input's affine, atomically: a failure at any point leaves
    no output file. ``segment_kwargs`` go to :meth:`Engine.segment` (window, normalize, boxes,
    batch_size, axis). Returns the output path.
    """
    from sam_unet.io import load_nifti, save_label_nifti

    in_path, out_path = Path(in_path), Path(out_path)
    if not is_nifti(out_path):
        raise ValueError(f"output {out_path} must end in .nii or .nii.gz")
    out_dir = out_path.parent if str(out_path.parent) else Path(".")
    if not out_dir.is_dir():
        raise FileNotFoundError(f"output folder {out_dir} does not exist")
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"output folder {out_dir} is not writable")
    vol = load_nifti(in_path)
    try:
        mask = engine.segment(vol.data, **segment_kwargs)
    except ValueError as exc:
        raise ValueError(f"{in_path}: {exc}") from exc
    save_label_nifti(out_path, mask, like=vol)  # puts the mask back in the file's voxel order
    return out_path


def list_inputs(path: str | Path) -> list[Path]:
    """The NIfTI files to process: the file itself, or a folder's NIfTI files sorted by name."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p))
        if not files:
            raise FileNotFoundError(f"no .nii or .nii.gz files in folder {path}")
        return files
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    return [path]


def output_for(in_file: Path, out: Path, many: bool) -> Path:
    """Where the mask of ``in_file`` goes: ``out`` itself for one file, else ``out/<name>``."""
    if not many and is_nifti(out):
        return out
    return out / in_file.name


def shard(items: Iterable[Any], rank: int, world_size: int) -> list[Any]:
    """Items ``rank, rank + world_size, ...``: each torchrun rank takes its own share."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad rank {rank} for world size {world_size}")
    return [x for i, x in enumerate(items) if i % world_size == rank]
