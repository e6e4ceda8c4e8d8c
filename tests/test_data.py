"""Datasets in the published layout, box prompts, JSON/mask validation, SA-Med2D split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sam_unet import transforms
from sam_unet.data import layout
from sam_unet.data.dataset import TestDataset, TrainDataset
from sam_unet.data.layout import DatasetError
from sam_unet.data.prompts import full_box, jitter_box, largest_component, mask_box
from sam_unet.data.sammed2d import split_sammed2d


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _make_dataset(root, *, n_images=3, h=40, w=60, rgb=False, mask_values=(0, 255)):
    """A tiny dataset folder: gradient images with two rectangles as masks."""
    rng = np.random.default_rng(1)
    train, test = {}, {}
    for i in range(n_images):
        split = "test" if i == n_images - 1 else "train"
        img = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
        if rgb:
            img = np.stack([img, 255 - img, img // 2], axis=-1)
        stem = f"mr_00--toy--case{i}--z_{i:04d}"
        _png(root / split / "images" / f"{stem}.png", img)
        masks = []
        for j, (r0, r1, c0, c1) in enumerate([(5, 20, 10, 30), (22, 35, 35, 55)]):
            m = np.zeros((h, w), np.uint8)
            m[r0:r1, c0:c1] = mask_values[1]
            rel = f"masks/{stem}--{j + 1:04d}_000.png"
            _png(root / split / rel, m)
            masks.append(rel)
            if split == "test":
                test[rel] = f"images/{stem}.png"
        if split == "train":
            train[f"images/{stem}.png"] = masks
    (root / "train" / layout.TRAIN_JSON).write_text(json.dumps(train))
    (root / "test").mkdir(parents=True, exist_ok=True)
    (root / "test" / layout.TEST_JSON).write_text(json.dumps(test))
    return root


def test_largest_component_box_and_full_box():
    m = np.zeros((20, 30), bool)
    m[2:4, 3:5] = True  # 4 px
    m[10:15, 12:20] = True  # 40 px, the largest
    assert largest_component(m).sum() == 40
    assert mask_box(m).tolist() == [12, 10, 19, 14]
    assert mask_box(m, largest=False).tolist() == [3, 2, 19, 14]
    assert mask_box(np.zeros((4, 4))) is None
    assert full_box((216, 256)).tolist() == [0, 0, 255, 215]


def test_jitter_is_capped_and_deterministic():
    box = np.array([50.0, 60.0, 150.0, 120.0], np.float32)  # min side 60 -> std 6 px, cap 5
    shifts = []
    for s in range(200):
        j = jitter_box(box, np.random.default_rng(s), (256, 256))
        shifts.append(np.abs(j - box).max())
        assert np.array_equal(j, jitter_box(box, np.random.default_rng(s), (256, 256)))
    assert max(shifts) <= 5.0 + 1e-6 and max(shifts) > 1.0
    edge = jitter_box(np.array([0, 0, 255, 215.0]), np.random.default_rng(0), (216, 256))
    assert edge.min() >= 0 and edge[2] <= 255 and edge[3] <= 215


def test_train_dataset_matches_engine_preprocessing(tmp_path):
    root = _make_dataset(tmp_path / "toy")
    ds = TrainDataset([root], masks_per_image=5, seed=3)
    assert len(ds) == 2
    s = ds[(0, 1)]
    assert s["image"].shape == (3, 256, 256) and s["masks"].shape == (5, 256, 256)
    assert s["boxes"].shape == (5, 4) and s["resized_hw"].tolist() == [171, 256]
    img = np.asarray(Image.open(ds.items[1].image))
    expected = transforms.normalize_pad(transforms.resize_uint8(img, (171, 256)))
    assert np.array_equal(s["image"], expected)
    assert set(np.unique(s["masks"]).tolist()) <= {0, 1}
    assert s["masks"][:, 171:, :].max() == 0  # zero padding
    # deterministic in (seed, epoch, index); a different epoch draws differently
    again = TrainDataset([root], masks_per_image=5, seed=3)[(0, 1)]
    assert all(np.array_equal(s[k], again[k]) for k in s)
    other = [ds[(e, 1)]["boxes"] for e in range(1, 4)]
    assert any(not np.array_equal(s["boxes"], b) for b in other)
    # full-slice prompt: the whole resized image
    full = TrainDataset([root], prompt="full", masks_per_image=2)[0]
    assert full["boxes"].tolist() == [[0, 0, 255, 170]] * 2


def test_both_prompt_kinds_alternate_per_sample(tmp_path):
    """prompt="both": a sample's masks alternate between the full-slice box and the jittered
    structure box; one mask per sample mixes the two kinds over samples; "both" models are
    validated with the full-slice box."""
    root = _make_dataset(tmp_path / "toy")
    full = [0.0, 0.0, 255.0, 170.0]
    ds = TrainDataset([root], prompt="both", masks_per_image=4, seed=5)
    for e in range(3):
        boxes = ds[(e, 0)]["boxes"].tolist()
        kinds = ["full" if b == full else "box" for b in boxes]
        assert kinds in (["full", "box"] * 2, ["box", "full"] * 2), kinds
    one = TrainDataset([root], prompt="both", masks_per_image=1, seed=5)
    firsts = {("full" if one[(e, i)]["boxes"][0].tolist() == full else "box")
              for e in range(8) for i in range(2)}
    assert firsts == {"full", "box"}
    assert TestDataset([root], prompt="both")[0]["boxes"].tolist() == [full, full]
    with pytest.raises(ValueError, match="prompt must be one of"):
        TrainDataset([root], prompt="tight")


def test_augmentations_and_rgb(tmp_path):
    root = _make_dataset(tmp_path / "rgb", rgb=True, mask_values=(0, 1))
    ds = TrainDataset([root], augment="hflip,vflip,intensity", jitter=False, masks_per_image=1)
    for e in range(4):
        s = ds[(e, 0)]
        m = s["masks"][0]
        rows, cols = np.nonzero(m)
        # the box is the (flipped) mask's box scaled to the 256 frame (x 4.27), no jitter
        assert abs(s["boxes"][0, 0] - cols.min()) <= 6 and abs(s["boxes"][0, 2] - cols.max()) <= 6
        assert abs(s["boxes"][0, 1] - rows.min()) <= 6 and abs(s["boxes"][0, 3] - rows.max()) <= 6
    with pytest.raises(ValueError, match="unknown augmentation"):
        TrainDataset([root], augment="rotate")


def test_test_dataset_boxes_at_original_scale(tmp_path):
    root = _make_dataset(tmp_path / "toy")
    ds = TestDataset([root])
    assert len(ds) == 1
    s = ds[0]
    assert s["original_hw"] == (40, 60) and s["resized_hw"] == (171, 256)
    assert len(s["masks"]) == 2 and s["masks"][0].dtype == bool
    expected = transforms.scale_boxes(np.array([[10, 5, 29, 19]], np.float32), (40, 60),
                                      (171, 256))
    assert np.allclose(s["boxes"][0], expected[0])
    assert (s["modality"], s["dataset"], s["case"]) == ("mr", "toy", "case2")


def test_errors_name_files_and_values(tmp_path):
    root = _make_dataset(tmp_path / "toy")
    bad = root / "train" / "masks" / "mr_00--toy--case0--z_0000--0001_000.png"
    m = np.zeros((40, 60), np.uint8)
    m[:5] = 128
    m[10:] = 255
    _png(bad, m)
    ds = TrainDataset([root], masks_per_image=8)
    with pytest.raises(DatasetError, match=r"z_0000--0001_000.png.*not binary.*\[0, 128, 255\]"):
        ds[(0, 0)]
    (root / "train" / layout.TRAIN_JSON).write_text("{not json")
    with pytest.raises(DatasetError, match="image2label_train.json.*invalid JSON"):
        TrainDataset([root])
    (root / "train" / layout.TRAIN_JSON).write_text(json.dumps(["a", "b"]))
    with pytest.raises(DatasetError, match="expected a JSON object"):
        TrainDataset([root])
    (root / "train" / layout.TRAIN_JSON).write_text(
        json.dumps({"images/missing.png": ["masks/gone.png"]}))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        TrainDataset([root])
    (root / "test" / layout.TEST_JSON).write_text(json.dumps({"masks/a.png": 3}))
    with pytest.raises(DatasetError, match="label2image_test.json"):
        TestDataset([root])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TrainDataset([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a dataset folder"):
        TrainDataset([tmp_path / "empty"])


def test_sammed2d_split_by_case_per_modality(tmp_path):
    rel = tmp_path / "release"
    table = {}
    for mod in ("ct_00", "mr_t1_00"):
        for case in range(5):
            for z in range(3):
                stem = f"{mod}--ds{mod[:2]}--case{case}--x_{z:04d}"
                _png(rel / "images" / f"{stem}.png", np.full((8, 8), z, np.uint8))
                _png(rel / "masks" / f"{stem}--0001_000.png", np.eye(8, dtype=np.uint8) * 255)
                table[f"images/{stem}.png"] = [f"masks/{stem}--0001_000.png"]
    (rel / "SAMed2D_v1.json").write_text(json.dumps(table))
    summary = split_sammed2d(rel, tmp_path / "out", test_fraction=0.4, link="copy")
    assert sorted(summary) == ["ct", "mr_t1"]
    for mod in summary:
        train = layout.read_train_json(tmp_path / "out" / mod / "train" / layout.TRAIN_JSON)
        test = layout.read_test_json(tmp_path / "out" / mod / "test" / layout.TEST_JSON)
        train_cases = {layout.parse_name(k)["case"] for k in train}
        test_cases = {layout.parse_name(v)["case"] for v in test.values()}
        assert len(test_cases) == 2 and len(train_cases) == 3
        assert not train_cases & test_cases
        assert all((tmp_path / "out" / mod / "test" / k).is_file() for k in test)
    ds = TrainDataset([tmp_path / "out"])  # the parent folder expands to its modality folders
    assert len(ds) == 18
