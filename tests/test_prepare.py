"""`sam-unet prepare` on the bundled MNI152 T1 + white matter, and on synthetic volumes."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from sam_unet import cli, transforms
from sam_unet.data import layout, mni152
from sam_unet.data.prepare import read_manifest
from sam_unet.io import load_nifti


@pytest.mark.slow
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


def _mni_crop(tmp_path, z=slice(88, 92)):
    """A few axial slices of the bundled T1 and of its white-matter map as stored (uint8
    probability x 255), written as new files."""
    t1, wm = mni152.paths()
    out = []
    for src, name in ((t1, "t1"), (wm, "wm")):
        img = nib.load(src)
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, z], img.affine), path)
        out.append(path)
    return out


def test_probability_map_label_is_refused(tmp_path, capsys):
    """A probability map given as the label would make one "label" per gray value."""
    t1, wm = _mni_crop(tmp_path)
    n_values = len(np.unique(np.asarray(nib.load(wm).dataobj))) - 1
    assert n_values > 128
    out = tmp_path / "out"
    base = ["prepare", "--image", str(t1), "--test-slices", "every:2", "-o", str(out), "--quiet"]
    assert cli.main([*base, "--label", str(wm)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"sam-unet prepare: error: {wm}: label volume has {n_values} distinct values "
                   "(a probability map?): threshold it, e.g. --label-threshold 127.5 (a mask is "
                   f"value > T), or pass --max-labels {n_values} if they are {n_values} "
                   "structures")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["t1.nii.gz",
                                                                             "wm.nii.gz"]
    # The same map as float probabilities: non-integer values, the hint scaled to 0..1.
    prob = tmp_path / "wm_prob.nii.gz"
    img = nib.load(wm)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, np.float32) / 255, img.affine), prob)
    assert cli.main([*base, "--label", str(prob)]) == 1
    err = capsys.readouterr().err
    assert "non-integer values (a probability map?)" in err
    assert "--label-threshold 0.5" in err and not out.exists()
    # Thresholded as the message says: one white-matter mask per slice.
    assert cli.main([*base, "--label", str(prob), "--label-threshold", "0.5"]) == 0
    manifest = read_manifest(out)
    assert manifest["label_threshold"] == 0.5
    assert all(len(s["masks"]) == 1 for s in manifest["volumes"][0]["slices"])


def test_max_labels(tmp_path, capsys):
    images, labels = _synthetic(tmp_path, n=1)
    lab = labels / "case0.nii.gz"  # labels 1 and 2
    args = ["prepare", "--image", str(images / "case0_0000.nii.gz"), "--label", str(lab),
            "--test-fraction", "0", "--quiet"]
    assert cli.main([*args, "--max-labels", "1", "-o", str(tmp_path / "a")]) == 1
    assert "has 2 distinct values" in capsys.readouterr().err
    # --labels picks values before the count; --max-labels 2 admits both.
    assert cli.main([*args, "--max-labels", "1", "--labels", "2", "-o", str(tmp_path / "b")]) == 0
    assert cli.main([*args, "--max-labels", "2", "-o", str(tmp_path / "c")]) == 0
    assert read_manifest(tmp_path / "b")["volumes"][0]["labels"] == [2]
    assert read_manifest(tmp_path / "c")["volumes"][0]["labels"] == [1, 2]
    assert cli.main([*args, "--labels", "1,x", "-o", str(tmp_path / "d")]) == 1
    assert "--labels '1,x': expected comma-separated integers" in capsys.readouterr().err


def test_prepare_options():
    from sam_unet.commands import prepare as command
    from sam_unet.data import prepare as P

    o = P.PrepareOptions(labels=[1, 2], test_volumes=["a"], window=[-160, 240])
    assert o.labels == (1, 2) and o.test_volumes == ("a",) and o.window == (-160, 240)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.axis = 0
    for kwargs, message in [
        ({"normalize": "zscore"}, "normalize must be one of"),
        ({"normalize": "window"}, "needs --window LO HI"),
        ({"min_foreground_ratio": 1.0}, r"min_foreground_ratio must be in \[0, 1\)"),
        ({"max_labels": 0}, "--max-labels 0: must be >= 1"),
        ({"test_slices": "every:1"}, "--test-slices 'every:1'"),
    ]:
        with pytest.raises(ValueError, match=message):
            P.PrepareOptions(**kwargs)
    # The command's defaults (kept there so --help stays light) are the library's.
    assert command.DEFAULT_MIN_FOREGROUND_RATIO == P.DEFAULT_MIN_FOREGROUND_RATIO
    assert command.DEFAULT_MAX_LABELS == P.DEFAULT_MAX_LABELS
    args = cli.build_parser().parse_args(["prepare", "-o", "x"])
    assert command.options_from_args(args) == P.PrepareOptions()
