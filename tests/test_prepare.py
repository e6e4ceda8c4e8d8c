"""`sam-unet prepare` on the bundled MNI152 T1 + white matter, and on synthetic volumes."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from sam_unet import cli, transforms
from sam_unet.data import layout, mni152
from sam_unet.data.prepare import read_manifest
from sam_unet.io import load_nifti


def test_prepare_mni152_via_cli(tmp_path):
    t1, wm = mni152.paths()
    out = tmp_path / "mni"
    rc = cli.main(["prepare", "--image", str(t1), "--label", str(wm), "--label-threshold",
                   "127.5", "--test-slices", "every:5", "-o", str(out), "--quiet"])
    assert rc == 0
    manifest = read_manifest(out)
    assert manifest["split"]["method"] == "slices" and not manifest["split"]["patient_level"]
    (vol,) = manifest["volumes"]
    assert vol["shape"] == [197, 233, 189] and vol["axis"] == 2
    train = layout.read_train_json(out / "train" / layout.TRAIN_JSON)
    test = layout.read_test_json(out / "test" / layout.TEST_JSON)
    assert len(train) > 80 and len(test) > 20
    assert manifest["counts"]["train_images"] == len(train)
    for sl in vol["slices"]:
        assert sl["split"] == ("test" if sl["index"] % 5 == 0 else "train")
    # one slice: the PNG is the engine's 8-bit slice, the mask is WM probability > 0.5
    t1_vol = load_nifti(t1)
    _, wm_mask = mni152.load_t1_and_wm_mask()
    sl = next(s for s in vol["slices"] if s["index"] == 90)
    png = np.asarray(Image.open(out / sl["image"]))
    assert png.shape == (197, 233)
    assert np.array_equal(png, transforms.to_uint8(t1_vol.data[:, :, 90]))
    mask = np.asarray(Image.open(out / sl["masks"][0]["file"]))
    assert set(np.unique(mask).tolist()) == {0, 255}
    assert np.array_equal(mask > 0, wm_mask[:, :, 90] > 0)
    # slices with (almost) no white matter are not written
    kept = {s["index"] for s in vol["slices"]}
    area = wm_mask.reshape(-1, wm_mask.shape[2]).sum(0)
    assert kept == {k for k in range(189) if area[k] > 197 * 233 * 100 / 65536}


def _write(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), path)


def _synthetic(tmp_path, n=4, shape=(20, 24, 10), affine=None):
    rng = np.random.default_rng(0)
    affine = np.eye(4) if affine is None else affine
    folder_i, folder_l = tmp_path / "images", tmp_path / "labels"
    folder_i.mkdir()
    folder_l.mkdir()
    for v in range(n):
        img = rng.normal(100, 20, size=shape).astype(np.float32)
        lab = np.zeros(shape, np.uint8)
        lab[4:12, 5:15, 2:8] = 1
        lab[14:18, 2:6, 1:9] = 2
        lab[15:16, 18:20, 3] = 2  # a second, tiny component of label 2
        _write(folder_i / f"case{v}_0000.nii.gz", img, affine)
        _write(folder_l / f"case{v}.nii.gz", lab, affine)
    return folder_i, folder_l


def test_volume_split_labels_and_components(tmp_path):
    images, labels = _synthetic(tmp_path)
    out = tmp_path / "ds"
    rc = cli.main(["prepare", "--images-dir", str(images), "--labels-dir", str(labels),
                   "--modality", "ct", "--test-fraction", "0.5", "--components",
                   "--min-foreground-ratio", "0", "-o", str(out), "--quiet"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    splits = {v["name"]: v["split"] for v in manifest["volumes"]}
    assert sorted(splits.values()) == ["test", "test", "train", "train"]
    for v in manifest["volumes"]:  # never split inside a volume
        assert {s["split"] for s in v["slices"]} == {v["split"]}
        assert v["labels"] == [1, 2]
        sl3 = next(s for s in v["slices"] if s["index"] == 3)
        comps = sorted((m["label"], m["component"]) for m in sl3["masks"])
        assert comps == [(1, 1), (2, 1), (2, 2)]
    test = layout.read_test_json(out / "test" / layout.TEST_JSON)
    assert all(layout.parse_name(k)["modality"] == "ct" for k in test)


def test_canonical_reorientation_gives_the_same_slices(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 1000, size=(12, 14, 6)).astype(np.int16)
    lab = np.zeros(img.shape, np.uint8)
    lab[2:9, 3:10, 1:5] = 1
    _write(tmp_path / "ras.nii.gz", img, np.eye(4))
    _write(tmp_path / "ras_l.nii.gz", lab, np.eye(4))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS storage of the same volume
    flip[:3, 3] = [11, 13, 0]
    _write(tmp_path / "lps.nii.gz", img[::-1, ::-1].copy(), flip)
    _write(tmp_path / "lps_l.nii.gz", lab[::-1, ::-1].copy(), flip)
    for name in ("ras", "lps"):
        assert cli.main(["prepare", "--image", str(tmp_path / f"{name}.nii.gz"), "--label",
                         str(tmp_path / f"{name}_l.nii.gz"), "--test-fraction", "0",
                         "--dataset", "same", "-o", str(tmp_path / f"out_{name}"),
                         "--quiet"]) == 0
    a = sorted((tmp_path / "out_ras" / "train" / "images").iterdir())
    b = sorted((tmp_path / "out_lps" / "train" / "images").iterdir())
    assert len(a) == len(b) == 4
    for pa, pb in zip(a, b, strict=True):
        assert np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb)))


def test_errors_and_no_partial_output(tmp_path, capsys):
    images, labels = _synthetic(tmp_path, n=1)
    img, lab = images / "case0_0000.nii.gz", labels / "case0.nii.gz"
    out = tmp_path / "out"
    rc = cli.main(["prepare", "--image", str(img), "--label", str(lab), "-o", str(out)])
    assert rc == 1 and "--test-slices" in capsys.readouterr().err
    bad_label = tmp_path / "bad.nii.gz"
    _write(bad_label, np.zeros((5, 5, 5), np.uint8), np.eye(4))
    rc = cli.main(["prepare", "--image", str(img), "--label", str(bad_label),
                   "--test-slices", "every:2", "-o", str(out), "--quiet"])
    assert rc == 1 and "bad.nii.gz" in capsys.readouterr().err
    rc = cli.main(["prepare", "--image", str(tmp_path / "missing.nii.gz"), "--label", str(lab),
                   "--test-slices", "every:2", "-o", str(out), "--quiet"])
    assert rc == 1 and "missing.nii.gz" in capsys.readouterr().err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(ValueError, match="every:N"):
        from sam_unet.data.prepare import parse_test_slices

        parse_test_slices("every:x")
