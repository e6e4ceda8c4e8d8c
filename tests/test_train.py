"""Training: losses, a few real steps on MNI152 slices (loss falls), exact --resume."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch

from sam_unet import checkpoints, cli
from sam_unet.data import mni152
from sam_unet.train.losses import SegLoss, dice_loss, focal_loss, valid_region
from sam_unet.train.trainer import cosine_lr_factor


@pytest.fixture(scope="module")
def mni_small(tmp_path_factory):
    """12 axial MNI152 slices with white matter > 0.5: 9 train, 3 held out."""
    root = tmp_path_factory.mktemp("mni_small")
    t1, wm = mni152.paths()
    for src, name in ((t1, "t1"), (wm, "wm")):
        img = nib.load(src)
        data = np.asarray(img.dataobj)[:, :, 80:92]
        nib.save(nib.Nifti1Image(data, img.affine), root / f"{name}.nii.gz")
    out = root / "data"
    assert cli.main(["prepare", "--image", str(root / "t1.nii.gz"), "--label",
                     str(root / "wm.nii.gz"), "--label-threshold", "127.5",
                     "--test-slices", "every:4", "-o", str(out), "--quiet"]) == 0
    return out


def _train_args(data, out, *extra):
    return ["train", "--data", str(data), "-o", str(out), "--variant", "tiny", "--threads", "1",
            "--batch-size", "2", "--masks-per-image", "2", "--val-max-images", "1",
            "--no-tensorboard", "--quiet", *extra]


def _losses(run):
    with open(run / "train_log.csv") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def test_losses():
    hw = torch.tensor([[200, 256]])
    valid = valid_region(hw)
    assert valid.shape == (1, 1, 256, 256) and valid.sum() == 200 * 256
    target = torch.zeros(1, 1, 256, 256)
    target[..., 50:100, 50:100] = 1
    logits = torch.where(target > 0, 20.0, -20.0)
    assert dice_loss(logits, target, valid) < 1e-3
    assert focal_loss(logits, target, valid) < 1e-6
    # one pixel, logit 0: focal = alpha_t * log(2) * 0.5 ** gamma
    one = torch.zeros(1, 1, 1, 1)
    f = focal_loss(one, torch.ones_like(one), torch.ones_like(one))
    assert torch.isclose(f, torch.tensor(0.25 * np.log(2) * 0.25, dtype=torch.float32))
    # the padded region (rows >= 200) is ignored
    crit = SegLoss()
    small = torch.randn(2, 1, 64, 64)
    masks = (torch.rand(2, 256, 256) > 0.5).float()
    masks[:, 200:] = 0
    base, _ = crit(small, masks, hw.repeat(2, 1))
    changed = small.clone()
    changed[..., 52:, :] = 50.0  # logits wholly inside the padding after upsampling
    masks2 = masks.clone()
    masks2[:, 210:] = 1
    other, _ = crit(changed, masks2, hw.repeat(2, 1))
    assert torch.allclose(base, other)


def test_tiny_trains_and_loss_falls(mni_small, tmp_path):
    run = tmp_path / "run"
    assert cli.main(_train_args(mni_small, run, "--max-steps", "8", "--lr", "1e-3")) == 0
    losses = _losses(run)
    assert len(losses) == 8
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["train_state"]["step"] == 8 and ckpt["variant"] == "tiny"
    model = checkpoints.load_model(run / "best.pt")
    assert model.variant == "tiny"
    assert (run / "val_log.csv").exists() and (run / "summary.json").exists()


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_resume_is_bitwise_exact(mni_small, tmp_path, schedule):
    # 9 training images, batch 2: 5 steps per epoch; stop at 3 (mid-epoch) and resume to 7,
    # crossing an epoch boundary (and the LR milestone at epoch 1, or the per-step cosine).
    common = ("--epochs", "2", "--milestones", "1", "--augment", "hflip,intensity", "--lr",
              "5e-4", "--seed", "7", "--schedule", schedule, "--warmup-epochs", "0.5")
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli.main(_train_args(mni_small, full, *common, "--max-steps", "7")) == 0
    assert cli.main(_train_args(mni_small, part, *common, "--max-steps", "3")) == 0
    mid = torch.load(part / "last.pt", map_location="cpu", weights_only=True)
    assert mid["train_state"]["step"] == 3 and mid["train_state"]["epoch"] == 0
    assert cli.main(_train_args(mni_small, part, *common, "--max-steps", "7",
                                "--resume")) == 0
    a = torch.load(full / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(part / "last.pt", map_location="cpu", weights_only=True)
    assert a["train_state"]["step"] == b["train_state"]["step"] == 7
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert _losses(full) == _losses(part)
    lr = [g["lr"] for g in b["train_state"]["optimizer"]["param_groups"]]
    if schedule == "step":
        assert lr == [2.5e-4]
    else:  # 10 steps in all, 2 of warm-up (round(0.5 x 5)); the lr the 8th step would use
        assert lr == pytest.approx([5e-4 * cosine_lr_factor(7, 10, 2, 0.01)], rel=1e-12)


def test_cosine_lr_factor():
    f = [cosine_lr_factor(i, 20, 4, 0.05) for i in range(20)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f[4] == pytest.approx(1.0) and f[-1] == pytest.approx(0.05)
    assert all(a > b for a, b in zip(f[4:], f[5:], strict=False))
    assert cosine_lr_factor(12, 20, 4, 0.05) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + np.cos(
        np.pi * 8 / 15)))
    assert cosine_lr_factor(0, 5, 0, 0.0) == pytest.approx(1.0)


def test_resume_errors(mni_small, tmp_path, capsys):
    rc = cli.main(_train_args(mni_small, tmp_path / "r", "--resume", str(tmp_path / "no.pt")))
    assert rc == 1 and "no.pt" in capsys.readouterr().err


def test_model_options(mni_small, tmp_path, capsys):
    from sam_unet.commands.train import parse_model_options

    assert parse_model_options(["window_size=16", "vit_mlp_ratio=2.5", "resnet_layers=1,2,1,1"]) \
        == {"window_size": 16, "vit_mlp_ratio": 2.5, "resnet_layers": (1, 2, 1, 1)}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_options(["window_size"])
    run = tmp_path / "ws16"
    args = _train_args(mni_small, run, "--max-steps", "2", "--model-option", "window_size=16")
    assert cli.main(args) == 0
    for name in ("last.pt", "best.pt"):
        model = checkpoints.load_model(run / name)
        assert model.config.window_size == 16
        assert model.image_encoder.sam_img_encoder.blocks[0].attn.rel_pos_h.shape[0] == 31
    # resuming with another architecture, an unknown option, options on a checkpoint: errors
    rc = cli.main(_train_args(mni_small, run, "--max-steps", "3", "--resume"))
    assert rc == 1 and "window_size" in capsys.readouterr().err
    rc = cli.main(_train_args(mni_small, tmp_path / "x", "--model-option", "windowsize=16"))
    assert rc == 1 and "windowsize" in capsys.readouterr().err
    rc = cli.main(_train_args(mni_small, tmp_path / "y", "--init-checkpoint", str(run / "last.pt"),
                              "--model-option", "window_size=8"))
    assert rc == 1 and "init-checkpoint" in capsys.readouterr().err


def test_demo_recipe_smoke(tmp_path):
    from sam_unet.train.demo_recipe import train_demo_model

    out = tmp_path / "demo.pt"
    metrics = train_demo_model(out, quiet=True, threads=1, max_steps=2, workdir=tmp_path,
                               test_slices="every:20")
    assert metrics["steps"] == 2 and metrics["heldout_slices"] == 10
    assert 0.0 <= metrics["heldout_dice"] <= 1.0
    obj = torch.load(out, map_location="cpu", weights_only=True)
    assert obj["weights_dtype"] == "float16" and obj["prompt"] == "both"
    assert obj["model_info"]["prompt_mode"] == "both"
    assert 0.0 <= metrics["heldout_box_dice"] <= 1.0
    assert all(v.dtype == torch.float16 for v in obj["model"].values() if v.is_floating_point())
    model = checkpoints.load_model(out)
    assert next(model.parameters()).dtype == torch.float32
    assert [p.name for p in tmp_path.iterdir()] == ["demo.pt"]  # the work folder is removed


def test_shipped_demo_checkpoint():
    from pathlib import Path

    import sam_unet

    path = Path(sam_unet.__file__).parent / "assets" / "demo_tiny.pt"
    if not path.exists():
        pytest.skip("assets/demo_tiny.pt not built")
    assert path.stat().st_size < 5 * 2**20
    obj = torch.load(path, map_location="cpu", weights_only=True)
    assert obj["variant"] == "tiny" and obj["prompt"] in ("full", "both")
    model = checkpoints.load_model(path)
    assert model.variant == "tiny"
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 256, 256), torch.tensor([[0.0, 0.0, 255.0, 215.0]]))
    assert logits.shape == (1, 1, 64, 64)
