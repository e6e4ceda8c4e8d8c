"""The prompts file: several named structures, each with its label value and its prompt.

A JSON object with one key, ``structures``, a list of objects::

    {
      "structures": [
        {"name": "white matter", "label": 1, "box": [10, 12, 3, 40, 50, 9]},
        {"name": "ventricles", "label": 2,
         "slice_boxes": {"5": [20, 20, 30, 34], "6": [20, 21, 30, 33]}},
        {"name": "lesion", "label": 3,
         "from_label_map": {"file": "coarse.nii.gz", "value": 3}},
        {"name": "brain", "label": 4, "full_slice": true},
        {"name": "tumour", "label": 5,
         "propagate": {"slice": 7, "box": [22, 30, 41, 52], "margin": 3}}
      ]
    }

Each structure has a ``name`` (unique, non-empty), a ``label`` (unique integer 1..255, its value
in the output label map; 0 is the background) and exactly one prompt:

- ``box``: a 3D box ``[x0, y0, z0, x1, y1, z1]`` of voxel indices over the input's array axes
  0, 1, 2, corners inclusive (slices outside it along the slicing axis stay empty);
- ``slice_boxes``: ``{"k": [a0, b0, a1, b1]}``, one 2D box per slice ``k``, where ``k`` indexes
  the input's array axis that becomes the slicing axis (for an axial model: the input's axis
  closest to superior-inferior; for a DICOM series: usually its slice axis) and the box spans
  the two other input axes in increasing order (for a DICOM series: columns, then rows);
- ``from_label_map``: ``{"file": path, "value": v}``: the voxels of value ``v`` in a coarse label
  map on the input's voxel grid (same shape and affine; a path relative to the prompts file's
  folder); each slice gets the box of its largest connected component;
- ``full_slice: true``: the whole slice as the box (models trained with full-slice boxes);
- ``propagate``: ``{"slice": k, "box": [a0, b0, a1, b1]}`` (slice and box as in
  ``slice_boxes``), optionally ``"margin"`` (voxels, default 3), ``"min_area"`` (voxels, default
  16) and ``"direction"`` ("both", "forward" = increasing ``k``, "backward"): one box on one
  slice, and the structure is followed slice by slice through the volume (each next slice
  prompted with the previous slice's mask box grown by the margin, until the mask falls under
  the minimum area); see ``Engine.propagate``.

Every index is in the INPUT's own voxel frame (its array axes as stored, whatever its
orientation; for a DICOM series (column, row, slice)) and is mapped through the reorientation
to the frame the engine segments in. The structures go to ``Engine.segment_structures``: one
label map out, overlaps resolved by the higher logit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sam_unet.io.volume import Volume

__all__ = [
    "PROMPT_KINDS",
    "StructureSpec",
    "StructuresFile",
    "StructuresFileError",
    "parse_structures",
    "read_structures_file",
]

_TOP_KEYS = {"structures", "comment"}
_COMMON_KEYS = {"name", "label", "comment"}


class StructuresFileError(ValueError):
    """A prompts file (or a structure in it) that is not valid; the message names the file, the
    structure and the fix."""


@dataclass(frozen=True)
class StructureSpec:
    """One structure as written in the file (prompt still in the input's voxel frame).

    kind: one of :data:`PROMPT_KINDS`; value: the prompt's checked value (a (6,) float64 box,
    a {slice: (4,) float64} dict, a (file path, value) pair, or True).
    """

    name: str
    label: int
    kind: str
    value: Any


def _fail(where: str, text: str) -> StructuresFileError:
    return StructuresFileError(f"{where}: {text}")


def _numbers(where: str, value: Any, n: int, what: str) -> np.ndarray:
    if (not isinstance(value, list) or len(value) != n
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        raise _fail(where, f"{what} must be a list of {n} numbers, got {json.dumps(value)}")
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise _fail(where, f"{what} has a non-finite number: {json.dumps(value)}")
    return arr


def _box(where: str, value: Any, base: Path) -> np.ndarray:
    arr = _numbers(where, value, 6, "box [x0, y0, z0, x1, y1, z1]")
    if np.any(arr[3:] < arr[:3]):
        raise _fail(where, f"box {json.dumps(value)} has a corner 1 below corner 0; write "
                    "[x0, y0, z0, x1, y1, z1] with x1 >= x0, y1 >= y0, z1 >= z0")
    return arr


def _slice_boxes(where: str, value: Any, base: Path) -> dict[int, np.ndarray]:
    if not isinstance(value, Mapping) or not value:
        raise _fail(where, 'slice_boxes must be a non-empty object {"slice": [a0, b0, a1, b1]}')
    out: dict[int, np.ndarray] = {}
    for key, box in value.items():
        try:
            k = int(key)
        except ValueError:
            raise _fail(where, f"slice_boxes key {key!r} is not a slice index (an integer)"
                        ) from None
        arr = _numbers(where, box, 4, f"the box of slice {k} [a0, b0, a1, b1]")
        if arr[2] < arr[0] or arr[3] < arr[1]:
            raise _fail(where, f"the box of slice {k} {json.dumps(box)} has a1 < a0 or b1 < b0")
        if k in out:
            raise _fail(where, f"slice {k} is given twice in slice_boxes")
        out[k] = arr
    return out


def _from_label_map(where: str, value: Any, base: Path) -> tuple[Path, int]:
    if not isinstance(value, Mapping) or set(value) != {"file", "value"}:
        raise _fail(where, 'from_label_map must be {"file": "coarse.nii.gz", "value": 3} (exactly '
                    f"these two keys), got {json.dumps(value)}")
    file, v = value["file"], value["value"]
    if not isinstance(file, str) or not file:
        raise _fail(where, "from_label_map file must be a path (a string)")
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(where, f"from_label_map value must be an integer, got {json.dumps(v)}")
    path = Path(file).expanduser()
    return (path if path.is_absolute() else base / path), int(v)


def _full_slice(where: str, value: Any, base: Path) -> bool:
    if value is not True:
        raise _fail(where, "full_slice must be true (or left out)")
    return True


def _propagate(where: str, value: Any, base: Path) -> Any:
    from sam_unet.runtime.propagate import DIRECTIONS, SeedPrompt

    keys = {"slice", "box", "margin", "min_area", "direction"}
    if not isinstance(value, Mapping) or not {"slice", "box"} <= set(value) \
            or set(value) - keys:
        raise _fail(where, 'propagate must be {"slice": k, "box": [a0, b0, a1, b1]} with '
                    f'optional "margin", "min_area", "direction"; got {json.dumps(value)}')
    k = value["slice"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise _fail(where, f"propagate slice must be a slice index (an integer >= 0), got "
                    f"{json.dumps(k)}")
    box = _numbers(where, value["box"], 4, "the propagate box [a0, b0, a1, b1]")
    if box[2] < box[0] or box[3] < box[1]:
        raise _fail(where, f"the propagate box {json.dumps(value['box'])} has a1 < a0 or b1 < b0")
    margin = value.get("margin", 3.0)
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not margin >= 0:
        raise _fail(where, f"propagate margin must be a number of voxels >= 0, got "
                    f"{json.dumps(margin)}")
    min_area = value.get("min_area", 16)
    if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 1:
        raise _fail(where, f"propagate min_area must be an integer number of voxels >= 1, got "
                    f"{json.dumps(min_area)}")
    direction = value.get("direction", "both")
    if direction not in DIRECTIONS:
        raise _fail(where, f"propagate direction must be one of {list(DIRECTIONS)}, got "
                    f"{json.dumps(direction)}")
    return SeedPrompt(k, tuple(float(v) for v in box), float(margin), int(min_area), direction)


# prompt key -> checker(where, json value, folder of the file) -> the spec's value
PROMPT_KINDS: dict[str, Callable[[str, Any, Path], Any]] = {
    "box": _box,
    "slice_boxes": _slice_boxes,
    "from_label_map": _from_label_map,
    "full_slice": _full_slice,
    "propagate": _propagate,
}


def _structure(src: str, i: int, item: Any, base: Path) -> StructureSpec:
    where = f"{src}: structure #{i + 1}"
    if not isinstance(item, Mapping):
        raise _fail(where, f"must be an object with name, label and a prompt, got "
                    f"{json.dumps(item)[:60]}")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(where, 'needs a "name" (a non-empty string)')
    where = f"{src}: structure {name!r}"
    allowed = _COMMON_KEYS | set(PROMPT_KINDS)
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    label = item.get("label")
    if isinstance(label, bool) or not isinstance(label, int):
        raise _fail(where, f'needs a "label" (an integer 1..255), got {json.dumps(label)}')
    if label == 0:
        raise _fail(where, "label 0 is the background; give a label in 1..255")
    if not 1 <= label <= 255:
        raise _fail(where, f"label {label} is outside 1..255 (the output is a uint8 label map)")
    kinds = [k for k in PROMPT_KINDS if k in item]
    if len(kinds) != 1:
        raise _fail(where, f"needs exactly one prompt of {sorted(PROMPT_KINDS)}, got "
                    f"{kinds or 'none'}")
    kind = kinds[0]
    return StructureSpec(name=name, label=label, kind=kind,
                         value=PROMPT_KINDS[kind](where, item[kind], base))


def parse_structures(obj: Any, *, source: str = "prompts", base_dir: str | os.PathLike = "."
                     ) -> StructuresFile:
    """Check a parsed prompts object (the JSON's content) -> :class:`StructuresFile`.

    source names it in errors; base_dir resolves relative ``from_label_map`` paths.
    Raises StructuresFileError for unknown keys, missing or wrong values, duplicate names or
    labels, label 0, and prompts that are not exactly one of :data:`PROMPT_KINDS`.
    """
    if not isinstance(obj, Mapping):
        raise _fail(source, 'must be a JSON object {"structures": [...]}')
    unknown = sorted(set(obj) - _TOP_KEYS)
    if unknown:
        raise _fail(source, f"unknown top-level key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    items = obj.get("structures")
    if not isinstance(items, list) or not items:
        raise _fail(source, '"structures" must be a non-empty list of structures')
    base = Path(base_dir)
    specs = [_structure(source, i, item, base) for i, item in enumerate(items)]
    for attr in ("label", "name"):
        values = [getattr(s, attr) for s in specs]
        dup = sorted({v for v in values if values.count(v) > 1}, key=str)
        if dup:
            raise _fail(source, f"several structures have the {attr} {dup[0]!r}; each "
                        f"structure needs its own {attr}")
    return StructuresFile(source=source, structures=specs)


def read_structures_file(path: str | os.PathLike) -> StructuresFile:
    """Read and check a prompts file (see the module docstring for its format)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prompts file; check the path")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _fail(str(path), f"not valid JSON (line {exc.lineno}, column {exc.colno}: "
                    f"{exc.msg}); fix the file") from exc
    except UnicodeDecodeError as exc:
        raise _fail(str(path), "not a UTF-8 text file; save it as UTF-8 JSON") from exc
    return parse_structures(obj, source=str(path), base_dir=path.parent)


@dataclass(frozen=True)
class StructuresFile:
    """The checked structures of a prompts file."""

    source: str
    structures: list[StructureSpec]

    @property
    def label_names(self) -> dict[int, str]:
        """{label value: name}, in the file's order."""
        return {s.label: s.name for s in self.structures}

    def prompts_for(self, volume: Volume, axis: int) -> list[Any]:
        """The structures as ``StructurePrompt`` s in ``volume``'s canonical frame.

        axis: the canonical slicing axis the engine will use. Each prompt is mapped from the
        input's voxel frame; a box outside the volume, a slice index beyond it, or a coarse label
        map of another grid (or without the value) raises StructuresFileError naming the
        structure.
        """
        from sam_unet.runtime.prompts import StructurePrompt

        maps: dict[Path, np.ndarray] = {}
        out = []
        for s in self.structures:
            where = f"{self.source}: structure {s.name!r}"
            boxes = mask = seed = None
            try:
                if s.kind in ("box", "slice_boxes"):
                    boxes, _ = volume.prompts_to_canonical(axis, boxes=s.value)
                elif s.kind == "from_label_map":
                    file, value = s.value
                    if file not in maps:
                        maps[file] = _coarse_map(where, file, volume)
                    found = maps[file] == value
                    if not found.any():
                        raise _fail(where, f"the coarse label map {file} has no voxel of value "
                                    f"{value}")
                    _, mask = volume.prompts_to_canonical(axis, box_mask=found)
                elif s.kind == "propagate":
                    from sam_unet.runtime.propagate import seed_to_canonical

                    seed = seed_to_canonical(volume, axis, s.value)
                elif s.kind != "full_slice":
                    raise _fail(where, f"prompt kind {s.kind!r} has no mapping")
            except StructuresFileError:
                raise
            except ValueError as exc:
                raise _fail(where, f"{exc}") from exc
            out.append(StructurePrompt(name=s.name, label=s.label, boxes=boxes, box_mask=mask,
                                       propagate=seed))
        return out


def _coarse_map(where: str, file: Path, volume: Volume) -> np.ndarray:
    """A coarse label map's values in its (= the input's) voxel frame, after geometry checks."""
    from sam_unet.io.inputs import read_volume

    if not file.exists():
        raise _fail(where, f"coarse label map {file} not found; check the path (relative paths "
                    "start at the prompts file's folder)")
    coarse = read_volume(file)
    data = coarse.to_original(coarse.data)
    if data.shape != tuple(volume.original_shape[:3]):
        raise _fail(where, f"coarse label map {file} has shape {data.shape}, the input "
                    f"{tuple(volume.original_shape[:3])}; it must be on the input's voxel grid")
    scale = max(1.0, float(np.abs(volume.affine[:3, 3]).max()))
    if not np.allclose(coarse.affine, volume.affine, atol=1e-4 * scale + 1e-3):
        raise _fail(where, f"coarse label map {file} has another affine than the input; it must "
                    "be on the input's voxel grid (resample it with nearest neighbour)")
    if data.dtype.kind == "f" and not np.all(data == np.round(data)):
        raise _fail(where, f"coarse label map {file} holds non-integer values; give a label map")
    return data
