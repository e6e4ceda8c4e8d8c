"""Evaluation: Dice/IoU at the original resolution against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sam_unet import checkpoints, cli
from sam_unet.data import layout
from sam_unet.models import build_model
from sam_unet.train.evaluate import evaluate_model, evaluate_prompts, markdown_comparison
from sam_unet.train.metrics import MetricAccumulator, dice, iou


class LeftHalf(torch.nn.Module):
    """Predicts the left half of every (square) slice: logit +10 on columns < 32 of 64."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.seen_boxes = []

    def encode(self, images):
        return images[:, :1, :16, :16], images[:, :1, :64, :64]

    def decode(self, emb, ms, boxes, index):
        self.seen_boxes.append(boxes.clone())
        out = torch.full((boxes.shape[0], 1, 64, 64), -10.0)
        out[..., :32] = 10.0
        return out


class BoxModel(torch.nn.Module):
    """Predicts exactly its box prompt: logit +10 inside the box (256 frame / 4), -10 outside."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.encodes = 0

    def encode(self, images):
        self.encodes += 1
        return images[:, :1, :16, :16], images[:, :1, :64, :64]

    def decode(self, emb, ms, boxes, index):
        out = torch.full((boxes.shape[0], 1, 64, 64), -10.0)
        for b, (x0, y0, x1, y1) in enumerate((boxes / 4).round().long().tolist()):
            out[b, 0, y0:y1 + 1, x0:x1 + 1] = 10.0
        return out


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _folder(root, rects, size=64, volume_manifest=False):
    """test/ split: one image per rectangle mask (rows r0:r1, cols c0:c1)."""
    test = {}
    slices = []
    for i, (r0, r1, c0, c1) in enumerate(rects):
        stem = f"mr--toy--vol{i % 2}--z_{i:04d}"
        _png(root / "test" / "images" / f"{stem}.png", np.full((size, size), 100, np.uint8))
        m = np.zeros((size, size), np.uint8)
        m[r0:r1, c0:c1] = 255
        rel = f"masks/{stem}--0001_000.png"
        _png(root / "test" / rel, m)
        test[rel] = f"images/{stem}.png"
        slices.append((i % 2, i, rel))
    (root / "test" / layout.TEST_JSON).write_text(json.dumps(test))
    if volume_manifest:
        vols = []
        for v in (0, 1):
            vols.append({"name": f"vol{v}", "slices": [
                {"index": i, "split": "test", "image": "", "masks": [
                    {"file": f"test/{rel}", "label": 1, "component": 0, "area": 0}]}
                for vv, i, rel in slices if vv == v]})
        (root / "manifest.json").write_text(json.dumps({"version": 1, "volumes": vols}))
    return root


def test_metrics_by_hand():
    p = np.zeros((4, 4), bool)
    g = np.zeros((4, 4), bool)
    p[:, :2] = True  # 8
    g[:, 1:3] = True  # 8, overlap 4
    assert dice(p, g) == pytest.approx(0.5) and iou(p, g) == pytest.approx(1 / 3)
    assert dice(np.zeros(3), np.zeros(3)) == 1.0 and iou(np.zeros(3), np.zeros(3)) == 1.0
    acc = MetricAccumulator()
    acc.add(p, g, ("a",), volume_key="v")
    acc.add(g, g, ("a",), volume_key="v")
    s = acc.summary()
    assert s["a"]["dice"] == pytest.approx(0.75) and s["overall"]["n"] == 2
    assert acc.volumes()["v"]["dice_3d"] == pytest.approx(2 * 12 / 32)


def test_evaluate_matches_hand_computed(tmp_path):
    # prediction = left half (cols < 32) of a 64x64 slice
    rects = [(0, 64, 16, 48), (10, 30, 0, 32), (0, 64, 40, 60), (0, 64, 0, 64)]
    expected_dice = [2 * 16 * 64 / (32 * 64 + 32 * 64), 2 * 20 * 32 / (32 * 64 + 20 * 32), 0.0,
                     2 * 32 * 64 / (32 * 64 + 64 * 64)]
    expected_iou = [16 / 48, 20 * 32 / (32 * 64), 0.0, 0.5]
    root = _folder(tmp_path / "toy", rects, volume_manifest=True)
    model = LeftHalf()
    res = evaluate_model(model, [root], prompt="box", quiet=True)
    per = [r["dice"] for r in sorted(res["per_mask"], key=lambda r: r["mask"][-20:])]
    assert per == pytest.approx(expected_dice)
    assert res["overall"]["dice"] == pytest.approx(np.mean(expected_dice))
    assert res["overall"]["iou"] == pytest.approx(np.mean(expected_iou))
    assert res["per_folder"]["toy"]["n"] == 4 and "toy" in res["per_dataset"]
    # 3D Dice per volume pools the slices of each volume (0: slices 0, 2; 1: slices 1, 3)
    inter0, p0, g0 = 16 * 64 + 0, 2 * 32 * 64, 32 * 64 + 20 * 64
    inter1, p1, g1 = 20 * 32 + 32 * 64, 2 * 32 * 64, 20 * 32 + 64 * 64
    vols = res["volumes"]
    assert vols["toy:vol0/label1"]["dice_3d"] == pytest.approx(2 * inter0 / (p0 + g0))
    assert vols["toy:vol1/label1"]["dice_3d"] == pytest.approx(2 * inter1 / (p1 + g1))
    # box prompts are the ground truth boxes scaled to the 256 frame (x4), no jitter
    boxes = torch.cat(model.seen_boxes)
    assert boxes[0].tolist() == [64.0, 0.0, 188.0, 252.0]
    model.seen_boxes.clear()
    evaluate_model(model, [root], prompt="full", quiet=True)
    assert torch.cat(model.seen_boxes)[0].tolist() == [0.0, 0.0, 255.0, 255.0]


def test_full_slice_beside_true_box(tmp_path):
    """One pass, one encoder call per batch, two decodes: the full-slice figure (what segment
    does without a prompt) and the oracle true-label box figure, each against hand values."""
    rects = [(0, 64, 16, 48), (10, 30, 0, 32), (5, 9, 40, 60), (0, 64, 0, 64)]
    root = _folder(tmp_path / "toy", rects, volume_manifest=True)
    model = BoxModel()
    res = evaluate_prompts(model, [root], quiet=True, batch_images=4)
    assert model.encodes == 1 and list(res) == ["full", "box"]
    areas = [(r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in rects]
    full = [2 * a / (a + 64 * 64) for a in areas]  # the whole slice predicted
    assert [r["dice"] for r in res["full"]["per_mask"]] == pytest.approx(full)
    assert [r["dice"] for r in res["box"]["per_mask"]] == pytest.approx([1.0] * 4)
    assert res["full"]["overall"]["dice"] == pytest.approx(np.mean(full))
    assert res["box"]["overall"]["n"] == res["full"]["overall"]["n"] == 4
    assert res["full"]["volumes"]["toy:vol0/label1"]["voxels_pred"] == 2 * 64 * 64
    text = markdown_comparison(res, prompt_mode="full-slice")
    assert "Dice (full-slice) | IoU (full-slice) | Dice (true-label box)" in text
    overall = next(line for line in text.splitlines() if line.startswith("| overall"))
    assert f"{np.mean(full):.4f}" in overall and "1.0000" in overall
    assert "trained for prompt mode `full-slice`" in text
    with pytest.raises(ValueError, match="must be one of"):
        evaluate_prompts(model, [root], prompts=("full", "oracle"), quiet=True)


def test_evaluate_cli_writes_json_and_markdown(tmp_path, capsys):
    root = _folder(tmp_path / "toy", [(0, 64, 16, 48), (10, 30, 0, 32)])
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    checkpoints.save_checkpoint(build_model("tiny"), ckpt, prompt="full")
    out = tmp_path / "eval"
    rc = cli.main(["evaluate", "-c", str(ckpt), "--data", str(root), "-o", str(out),
                   "--device", "cpu", "--quiet"])
    assert rc == 0
    res = json.loads((out / "evaluation.json").read_text())
    assert set(res["prompts"]) == {"full", "box"}  # both by default
    for r in res["prompts"].values():
        assert r["overall"]["n"] == 2 and 0 <= r["overall"]["dice"] <= 1
    assert res["model_info"]["prompt_mode"] == "full-slice"
    assert res["integrity"] == checkpoints.VERIFIED
    md = (out / "evaluation.md").read_text()
    assert "| overall |" in md and "Dice (full-slice)" in md and "Dice (true-label box)" in md
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["full"] == res["prompts"]["full"]["overall"]
    rc = cli.main(["evaluate", "-c", str(ckpt), "--data", str(root), "-o", str(out),
                   "--device", "cpu", "--quiet", "--prompt", "full"])
    assert rc == 0
    assert set(json.loads((out / "evaluation.json").read_text())["prompts"]) == {"full"}
    rc = cli.main(["evaluate", "-c", str(tmp_path / "missing.pt"), "--data", str(root)])
    assert rc == 1 and "missing.pt" in capsys.readouterr().err
