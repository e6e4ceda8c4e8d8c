"""The prompts file: validation with one clear message per mistake, prompts mapped from the
input's voxel frame (an LPS file and a sagittal file whose axes differ from the canonical ones),
coarse label maps, and three overlapping structures segmented into one label map."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dicom_helpers import mni_crop, reorient, save_nifti
from sam_unet.io import load_nifti
from sam_unet.runtime.structures_file import (
    StructuresFileError,
    parse_structures,
    read_structures_file,
)

DEMO = Path(__file__).resolve().parents[1] / "python" / "sam_unet" / "assets" / "demo_tiny.pt"


def _one(**fields):
    return {"structures": [{"name": "a", "label": 1, **fields}]}


@pytest.mark.parametrize("obj, message", [
    ([], "must be a JSON object"),
    ({"structures": [], "x": 1}, r"unknown top-level key\(s\) \['x'\]"),
    ({"structures": []}, "must be a non-empty list"),
    ({"structures": [{"label": 1, "box": [0] * 6}]}, r"structure #1: needs a \"name\""),
    (_one(box=[0] * 6, color="red"), r"structure 'a': unknown key\(s\) \['color'\]"),
    (_one(), "needs exactly one prompt"),
    (_one(box=[0] * 6, full_slice=True), "needs exactly one prompt.*'box', 'full_slice'"),
    ({"structures": [{"name": "a", "label": 0, "full_slice": True}]}, "label 0 is the background"),
    ({"structures": [{"name": "a", "label": 256, "full_slice": True}]}, "outside 1..255"),
    ({"structures": [{"name": "a", "label": True, "full_slice": True}]}, "an integer 1..255"),
    ({"structures": [{"name": "a", "label": "1", "full_slice": True}]}, "an integer 1..255"),
    ({"structures": [{"name": "a", "label": 2, "full_slice": True},
                     {"name": "b", "label": 2, "full_slice": True}]},
     "several structures have the label 2"),
    ({"structures": [{"name": "a", "label": 1, "full_slice": True},
                     {"name": "a", "label": 2, "full_slice": True}]},
     "several structures have the name 'a'"),
    (_one(box=[0, 0, 0, 1, 1]), "box .* must be a list of 6 numbers"),
    (_one(box=[5, 0, 0, 1, 1, 1]), "corner 1 below corner 0"),
    (_one(box=[0, 0, 0, 1, 1, "2"]), "must be a list of 6 numbers"),
    (_one(slice_boxes={}), "slice_boxes must be a non-empty object"),
    (_one(slice_boxes={"x": [0, 0, 1, 1]}), "key 'x' is not a slice index"),
    (_one(slice_boxes={"3": [4, 0, 1, 1]}), "the box of slice 3 .* has a1 < a0"),
    (_one(from_label_map={"file": "c.nii.gz"}), "exactly these two keys"),
    (_one(from_label_map={"file": "c.nii.gz", "value": 1.5}), "value must be an integer"),
    (_one(full_slice=False), "full_slice must be true"),
])
def test_invalid_prompts_are_refused_with_the_reason(obj, message):
    with pytest.raises(StructuresFileError, match=message) as err:
        parse_structures(obj, source="p.json")
    assert str(err.value).startswith("p.json: ")


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"structures": [\n  {"name": "a",, }\n]}')
    with pytest.raises(StructuresFileError, match=r"bad.json: not valid JSON \(line 2, column"):
        read_structures_file(bad)
    with pytest.raises(FileNotFoundError, match="no such prompts file"):
        read_structures_file(tmp_path / "missing.json")


@pytest.fixture(scope="module")
def lps_volume(tmp_path_factory):
    """The MNI crop stored with L, P, S voxel axes (axes 0 and 1 reversed vs canonical)."""
    root = tmp_path_factory.mktemp("lps")
    data, affine = reorient(*mni_crop(), ("L", "P", "S"))
    return load_nifti(save_nifti(root / "lps.nii.gz", data, affine))


@pytest.fixture(scope="module")
def sagittal_volume(tmp_path_factory):
    """Voxel axes P, I, R: the canonical slicing axis (S) is file axis 1, reversed."""
    root = tmp_path_factory.mktemp("sag")
    data, affine = reorient(*mni_crop(), ("P", "I", "R"))
    return load_nifti(save_nifti(root / "sag.nii.gz", data, affine))


def _canonical_bbox(vol, file_mask):
    canon = vol.to_canonical(file_mask)
    idx = np.argwhere(canon)
    return np.concatenate([idx.min(axis=0), idx.max(axis=0)])


def test_box_is_mapped_from_the_file_frame(lps_volume):
    vol = lps_volume
    sf = parse_structures(_one(box=[3, 5, 2, 20, 30, 9]))
    (prompt,) = sf.prompts_for(vol, -1)
    file_mask = np.zeros(vol.original_shape, bool)
    file_mask[3:21, 5:31, 2:10] = True
    np.testing.assert_array_equal(prompt.boxes, _canonical_bbox(vol, file_mask))
    assert prompt.name == "a" and prompt.label == 1 and prompt.box_mask is None


def test_slice_boxes_are_mapped_from_the_file_frame(sagittal_volume):
    vol = sagittal_volume
    assert vol.file_axis(2) == 1  # canonical axial slices are file axis 1 (I: reversed)
    boxes = {"2": [4, 10, 20, 30], "5": [0, 0, 63, 53]}
    (prompt,) = parse_structures(_one(slice_boxes=boxes)).prompts_for(vol, -1)
    assert len(prompt.boxes) == 2
    for key, (a0, b0, a1, b1) in boxes.items():
        k = int(key)
        file_mask = np.zeros(vol.original_shape, bool)
        file_mask[a0:a1 + 1, k, b0:b1 + 1] = True  # the two other file axes: 0, then 2
        x0, y0, z0, x1, y1, z1 = _canonical_bbox(vol, file_mask)
        assert z0 == z1
        np.testing.assert_array_equal(prompt.boxes[int(z0)], [x0, y0, x1, y1])


def test_prompts_outside_the_volume_name_the_structure(lps_volume):
    shape = lps_volume.original_shape
    sf = parse_structures({"structures": [
        {"name": "ok", "label": 1, "full_slice": True},
        {"name": "far", "label": 2, "box": [0, 0, 0, shape[0], 3, 3]}]}, source="p.json")
    with pytest.raises(StructuresFileError, match="p.json: structure 'far': 3D box .* lies "
                       "outside the file's voxel grid"):
        sf.prompts_for(lps_volume, -1)
    sf = parse_structures(_one(slice_boxes={str(shape[2]): [0, 0, 1, 1]}), source="p.json")
    with pytest.raises(StructuresFileError, match=f"structure 'a': box given for slice "
                       f"{shape[2]}, but file axis 2"):
        sf.prompts_for(lps_volume, -1)


def test_from_label_map(lps_volume, tmp_path):
    vol = lps_volume
    coarse = np.zeros(vol.original_shape, np.uint8)
    coarse[10:20, 12:30, 3:8] = 3
    coarse[30:40, 12:30, 3:8] = 5
    nib.save(nib.Nifti1Image(coarse, vol.affine), str(tmp_path / "coarse.nii.gz"))
    prompts = {"structures": [
        {"name": "three", "label": 1, "from_label_map": {"file": "coarse.nii.gz", "value": 3}},
        {"name": "five", "label": 2, "from_label_map": {"file": "coarse.nii.gz", "value": 5}}]}
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(prompts))
    sf = read_structures_file(path)  # the map's path is relative to the prompts file
    three, five = sf.prompts_for(vol, -1)
    np.testing.assert_array_equal(three.box_mask, vol.to_canonical(coarse == 3))
    np.testing.assert_array_equal(five.box_mask, vol.to_canonical(coarse == 5))
    assert sf.label_names == {1: "three", 2: "five"}

    prompts["structures"][1]["from_label_map"]["value"] = 9
    path.write_text(json.dumps(prompts))
    with pytest.raises(StructuresFileError, match="structure 'five': the coarse label map "
                       ".*coarse.nii.gz has no voxel of value 9"):
        read_structures_file(path).prompts_for(vol, -1)
    shifted = vol.affine.copy()
    shifted[0, 3] += 5.0
    nib.save(nib.Nifti1Image(coarse, shifted), str(tmp_path / "coarse.nii.gz"))
    with pytest.raises(StructuresFileError, match="has another affine than the input"):
        read_structures_file(path).prompts_for(vol, -1)
    nib.save(nib.Nifti1Image(coarse[:-1], vol.affine), str(tmp_path / "coarse.nii.gz"))
    with pytest.raises(StructuresFileError, match="has shape .* it must be on the input's voxel"):
        read_structures_file(path).prompts_for(vol, -1)
    (tmp_path / "coarse.nii.gz").unlink()
    with pytest.raises(StructuresFileError, match="coarse label map .* not found"):
        read_structures_file(path).prompts_for(vol, -1)


@pytest.mark.slow
def test_three_overlapping_structures_in_one_label_map(lps_volume, tmp_path, single_thread):
    """Three structures whose boxes overlap: every voxel labelled s lies in s's own mask (the
    structure segmented alone), voxels in exactly one mask get that label, voxels in none stay
    0, and overlaps go to one of the structures that claim them."""
    import sam_unet
    from sam_unet.runtime.engine import Engine

    vol = lps_volume
    engine = Engine.from_checkpoint(DEMO, device="cpu", batch_size=12)
    x, y, z = vol.original_shape
    prompts = {"structures": [
        {"name": "left", "label": 1, "box": [2, 2, 0, x // 2 + 6, y - 3, 4]},
        {"name": "right", "label": 2, "box": [x // 2 - 6, 2, 7, x - 3, y - 3, z - 1]},
        {"name": "front", "label": 5, "box": [4, 2, 3, x - 5, y // 2, 8]}]}
    img = nib.load(str(vol.path))
    out = sam_unet.segment_image(img, engine, structures=prompts)
    labels = np.asarray(out.dataobj)
    assert labels.dtype == np.uint8 and labels.shape == vol.original_shape
    np.testing.assert_array_equal(out.affine, vol.affine)
    assert out.extra["label_names"] == {1: "left", 2: "right", 5: "front"}
    alone = {s["label"]: np.asarray(sam_unet.segment_image(img, engine, boxes=s["box"]).dataobj)
             for s in prompts["structures"]}
    claims = sum(m.astype(np.int32) for m in alone.values())
    for value, mask in alone.items():
        assert (labels == value).sum() > 0
        inside = labels == value
        # a voxel of value s is in s's mask (slack: logits within 1e-3 of 0 may flip)
        assert (inside & (mask == 0)).sum() <= 0.001 * inside.sum()
        only = (mask == 1) & (claims == 1)
        assert (labels[only] == value).mean() >= 0.999
    assert (labels[claims == 0] == 0).mean() >= 0.999
    assert (claims >= 2).sum() > 100  # the prompts really overlap
