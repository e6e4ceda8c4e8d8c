"""Model metadata and model-file safety: ModelInfo in checkpoints and ONNX files, ONNX files
without it (or with another model's) refused unless forced, unreadable ONNX files, the cached
ONNX export behind ``from_checkpoint(backend="onnxruntime")``, the one device resolver, and
weights made non-finite after loading."""

from __future__ import annotations

import gc
import os
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch

from sam_unet import checkpoints, cli
from sam_unet.export.onnx import InvalidOnnxError, export_onnx, read_metadata
from sam_unet.export.onnx_cache import CACHE_ENV, cache_key, prune
from sam_unet.model_info import (
    ONNX_METADATA_KEY,
    ONNX_WEIGHTS_KEY,
    ModelInfo,
    ModelMismatchError,
    model_info_from_training,
)
from sam_unet.models import build_model
from sam_unet.runtime.backends import make_backend, normalize_device
from sam_unet.runtime.devices import resolve_device
from sam_unet.runtime.engine import Engine

DEMO_CKPT = Path(checkpoints.__file__).parent / "assets" / "demo_tiny.pt"


def _tiny(seed: int):
    torch.manual_seed(seed)
    return build_model("tiny").eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoint A (seed 0, prompt mode "box", window normalization), its ONNX export with
    that model info, checkpoint B (seed 1), and a copy of A's ONNX without the metadata."""
    root = tmp_path_factory.mktemp("model_info")
    info = ModelInfo(variant="tiny", normalize="window", window=(-100.0, 300.0), axis=-1,
                     prompt_mode="box", label_names={1: "liver"})
    a, b = _tiny(0), _tiny(1)
    ckpt_a, ckpt_b = root / "a.pt", root / "b.pt"
    checkpoints.save_checkpoint(a, ckpt_a, model_info=info)
    checkpoints.save_checkpoint(b, ckpt_b)
    onnx_a = export_onnx(a, root / "a.onnx", checkpoint=ckpt_a)
    proto = onnx.load(str(onnx_a))
    del proto.metadata_props[:]
    bare = root / "bare.onnx"
    onnx.save(proto, str(bare))
    return {"root": root, "info": info, "a": a, "ckpt_a": ckpt_a, "ckpt_b": ckpt_b,
            "onnx_a": onnx_a, "bare": bare}


# ---------------------------------------------------------------------------------------------
# ModelInfo itself


def test_model_info_roundtrip_and_validation():
    info = ModelInfo(variant="res34", normalize="window", window=(-160, 240), axis=0,
                     prompt_mode="both", label_names={1: "liver", 2: "spleen"})
    assert ModelInfo.from_json(info.to_json()) == info
    assert ModelInfo.from_dict({"variant": "tiny"}) == ModelInfo(variant="tiny")
    for bad, field in (({"variant": "x", "prompt_mode": "points"}, "prompt_mode"),
                       ({"variant": "x", "normalize": "window"}, "needs a window"),
                       ({"variant": "x", "window": [5, 1]}, "window"),
                       ({"variant": "x", "axis": 3}, "axis"),
                       ({"variant": "x", "label_names": {"0": "bg"}}, "label_names"),
                       ({"normalize": "window"}, "malformed")):
        with pytest.raises(ValueError, match=field):
            ModelInfo.from_dict(bad)
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelInfo.from_json("{variant: tiny")


def test_model_info_from_training_manifests():
    m = {"normalize": "window", "window": [-160.0, 240.0], "axis": "x"}
    info = model_info_from_training("res34", "full", [m, dict(m), None])
    assert (info.normalize, info.window, info.axis, info.prompt_mode) == (
        "window", (-160.0, 240.0), 0, "full-slice")
    assert model_info_from_training("tiny", "both", []).prompt_mode == "both"
    assert model_info_from_training("tiny", "box", [{"normalize": "slice-minmax",
                                                     "axis": "z"}]).axis == -1
    # folders prepared differently: the settings are not knowable, the defaults stay
    mixed = model_info_from_training("tiny", "box", [m, {"normalize": "slice-minmax"}])
    assert (mixed.normalize, mixed.window) == ("slice-minmax", None)


# ---------------------------------------------------------------------------------------------
# checkpoints


def test_checkpoint_carries_model_info(files):
    raw = torch.load(files["ckpt_a"], weights_only=True)
    assert ModelInfo.from_dict(raw["model_info"]) == files["info"]
    model, report = checkpoints.load_model_with_report(files["ckpt_a"])
    assert report.model_info == files["info"] and report.hash_checked
    engine = Engine.from_checkpoint(files["ckpt_a"], device="cpu")
    assert engine.model_info == files["info"]
    assert engine.load_report.integrity == checkpoints.VERIFIED
    # a bare engine around a backend knows nothing about its model
    assert Engine(make_backend("torch", model=model, device="cpu")).model_info is None


def test_old_checkpoints_get_derived_model_info(tmp_path):
    model = _tiny(0)
    old = tmp_path / "old.pt"  # the layout written before model info existed
    torch.save({"model": model.state_dict(), "variant": "tiny", "prompt": "full"}, old)
    _, report = checkpoints.load_model_with_report(old)
    assert report.model_info == ModelInfo(variant="tiny", prompt_mode="full-slice")
    assert not report.hash_checked and report.integrity == checkpoints.NO_HASH
    trained = tmp_path / "trained.pt"
    torch.save({"model": model.state_dict(), "train_config": {"prompt": "box"}}, trained)
    info = checkpoints.load_model_with_report(trained)[1].model_info
    assert info.variant == "tiny" and info.prompt_mode == "box"  # variant from the shapes
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    assert checkpoints.load_model_with_report(bare)[1].model_info == ModelInfo(variant="tiny")


def test_bundled_demo_checkpoint_model_info():
    raw = torch.load(DEMO_CKPT, weights_only=True)
    _, report = checkpoints.load_model_with_report(DEMO_CKPT)
    if "model_info" in raw:
        assert report.model_info == ModelInfo.from_dict(raw["model_info"])
    else:  # the checkpoint of before: {"prompt": "full"}
        assert raw["prompt"] == "full"
        assert report.model_info == ModelInfo(variant="tiny", prompt_mode="full-slice")
        assert report.integrity == checkpoints.NO_HASH


@pytest.mark.slow
def test_trainer_writes_model_info(tmp_path):
    """prepare with a window, train two steps with full-slice prompts: the checkpoints say so."""
    from sam_unet.data import mni152

    t1, wm = mni152.paths()
    for src, name in ((t1, "t1"), (wm, "wm")):
        img = nib.load(src)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, 84:88], img.affine),
                 str(tmp_path / f"{name}.nii.gz"))
    data = tmp_path / "data"
    assert cli.main(["prepare", "--image", str(tmp_path / "t1.nii.gz"), "--label",
                     str(tmp_path / "wm.nii.gz"), "--label-threshold", "127.5",
                     "--normalize", "window", "--window", "0", "8000",
                     "--test-slices", "every:2", "-o", str(data), "--quiet"]) == 0
    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(data), "-o", str(run), "--variant", "tiny",
                     "--threads", "1", "--batch-size", "1", "--masks-per-image", "1",
                     "--max-steps", "2", "--prompt", "full", "--val-max-images", "1",
                     "--no-tensorboard", "--quiet"]) == 0
    want = ModelInfo(variant="tiny", normalize="window", window=(0.0, 8000.0), axis=-1,
                     prompt_mode="full-slice")
    for name in ("last.pt", "best.pt"):
        _, report = checkpoints.load_model_with_report(run / name)
        assert report.model_info == want and report.hash_checked


# ---------------------------------------------------------------------------------------------
# ONNX metadata


def test_onnx_carries_model_info_and_weights_identity(files):
    meta = read_metadata(files["onnx_a"])
    assert ModelInfo.from_json(meta[ONNX_METADATA_KEY]) == files["info"]
    assert meta[ONNX_WEIGHTS_KEY] == checkpoints.weights_sha256(files["a"])
    engine = Engine.from_onnx(files["onnx_a"], device="cpu")
    assert engine.model_info == files["info"]
    # the same weights expected: accepted
    same = Engine.from_onnx(files["onnx_a"], device="cpu", variant="tiny",
                            checkpoint=files["ckpt_a"])
    assert same.model_info == files["info"]


def test_onnx_without_metadata_refused_unless_forced(files):
    bare = files["bare"]
    with pytest.raises(ModelMismatchError) as info:
        Engine.from_onnx(bare, device="cpu")
    msg = str(info.value)
    assert "\n" not in msg and str(bare) in msg and "no SAM-UNet model metadata" in msg
    assert "sam-unet export onnx" in msg and "--force" in msg
    with pytest.warns(RuntimeWarning, match="forced"):
        engine = Engine.from_onnx(bare, device="cpu", force=True)
    assert engine.model_info is None
    vol = np.random.default_rng(0).random((24, 20, 3)).astype(np.float32)
    assert engine.segment(vol, boxes=(2, 2, 0, 20, 16, 2)).shape == vol.shape


@pytest.mark.slow
def test_onnx_of_another_model_refused_unless_forced(files):
    with pytest.raises(ModelMismatchError, match=r"holds a 'tiny' model but variant 'res34'"):
        Engine.from_onnx(files["onnx_a"], device="cpu", variant="res34")
    with pytest.raises(ModelMismatchError) as info:
        Engine.from_onnx(files["onnx_a"], device="cpu", checkpoint=files["ckpt_b"])
    msg = str(info.value)
    assert "exported from other weights than checkpoint" in msg and "b.pt" in msg
    assert "--force" in msg and "\n" not in msg
    with pytest.warns(RuntimeWarning, match="other weights"):
        forced = Engine.from_onnx(files["onnx_a"], device="cpu", checkpoint=files["ckpt_b"],
                                  force=True)
    assert forced.model_info == files["info"]  # what the file says
    # metadata that does not parse is not trusted either
    proto = onnx.load(str(files["onnx_a"]))
    for p in proto.metadata_props:
        if p.key == ONNX_METADATA_KEY:
            p.value = '{"variant": "tiny", "prompt_mode": "points"}'
    odd = files["root"] / "odd.onnx"
    onnx.save(proto, str(odd))
    with pytest.raises(ModelMismatchError, match="unreadable model metadata.*prompt_mode"):
        Engine.from_onnx(odd, device="cpu")


def test_engine_file_model_info_from_its_sidecar(files, tmp_path):
    """A TensorRT engine knows how its model is fed from its sidecar (written at build time),
    or from the ONNX file it was built from while that is still there."""
    import json

    from sam_unet.runtime.engine import _engine_model_info

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"serialised engine")
    sidecar = tmp_path / "m.engine.json"
    sidecar.write_text(json.dumps({"model_info": files["info"].to_json()}))
    assert _engine_model_info(engine) == files["info"]
    sidecar.write_text(json.dumps({"onnx_path": str(files["onnx_a"])}))  # an older sidecar
    assert _engine_model_info(engine) == files["info"]
    sidecar.write_text(json.dumps({"onnx_path": str(tmp_path / "gone.onnx")}))
    assert _engine_model_info(engine) is None


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_unreadable_onnx_file_is_a_clear_error(files, tmp_path, kind):
    path = tmp_path / f"{kind}.onnx"
    data = files["onnx_a"].read_bytes()
    path.write_bytes({"garbage": b"not a model" * 50, "truncated": data[: len(data) // 2],
                      "empty": b""}[kind])
    with pytest.raises(InvalidOnnxError) as info:
        Engine.from_onnx(path, device="cpu", backend="onnxruntime")
    msg = str(info.value)
    assert msg.startswith(f"{path} is not a valid ONNX model (") and "\n" not in msg
    with pytest.raises(InvalidOnnxError):
        read_metadata(path)


def _nifti(path: Path) -> Path:
    data = np.random.default_rng(1).normal(100, 20, (24, 20, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


@pytest.mark.slow
def test_cli_segment_onnx_metadata_and_force(files, tmp_path, capsys):
    src = _nifti(tmp_path / "scan.nii.gz")
    before = src.read_bytes()
    out = tmp_path / "mask.nii.gz"
    args = ["segment", "-i", str(src), "-o", str(out), "--device", "cpu", "--quiet"]
    assert cli.main([*args, "--onnx", str(files["bare"])]) == 1
    err = capsys.readouterr().err
    assert "no SAM-UNet model metadata" in err and "--force" in err
    assert "Traceback" not in err and not out.exists()
    assert cli.main([*args, "--onnx", str(files["onnx_a"]), "--variant", "res50"]) == 1
    assert "variant 'res50'" in capsys.readouterr().err and not out.exists()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00" * 100)
    assert cli.main([*args, "--onnx", str(garbage)]) == 1
    err = capsys.readouterr().err
    assert "not a valid ONNX model" in err and "Traceback" not in err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert cli.main([*args, "--onnx", str(files["bare"]), "--force"]) == 0
    assert nib.load(str(out)).shape == (24, 20, 3)
    assert src.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# from_checkpoint(backend="onnxruntime"): the ONNX cache


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.slow
def test_onnxruntime_from_checkpoint_exports_once(files, tmp_path, monkeypatch):
    """Repeated engines share one cached export; nothing accumulates in the temporary folder;
    a damaged cache entry is exported again."""
    cache, tmp = tmp_path / "cache", tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv(CACHE_ENV, str(cache))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    key = cache_key(checkpoints.weights_sha256(files["a"]), files["info"])
    entry = cache / f"sam_unet-tiny-{key}.onnx"
    cache.mkdir()
    entry.write_bytes(b"truncated by a crash" * 10)  # damaged: exported again, not trusted
    t0 = time.perf_counter()
    first = Engine.from_checkpoint(files["ckpt_a"], backend="onnxruntime", device="cpu")
    t_first = time.perf_counter() - t0
    stem = entry.name[: -len(".onnx")]
    cached = {entry.name, f"{stem}.encoder.onnx", f"{stem}.decoder.onnx"}
    assert _names(cache) == cached  # the whole model and its encoder/decoder split
    assert first.backend.can_split
    inode = entry.stat().st_ino
    vol = np.random.default_rng(0).normal(50, 30, (24, 20, 3)).astype(np.float32)
    box = (2, 3, 0, 18, 15, 2)
    ref = Engine.from_checkpoint(files["ckpt_a"], device="cpu").segment(vol, boxes=box)
    assert np.array_equal(first.segment(vol, boxes=box), ref)
    for _ in range(3):
        again = Engine.from_checkpoint(files["ckpt_a"], backend="onnxruntime", device="cpu")
        assert again.model_info == files["info"] and "cached" in again.describe()
    assert _names(cache) == cached and entry.stat().st_ino == inode  # not re-exported
    assert _names(tmp) == set()
    print(f"\nfirst engine (export) {t_first:.1f} s")


@pytest.mark.slow
def test_onnx_export_falls_back_to_a_private_temp_folder(files, tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder would be")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    engine = Engine.from_checkpoint(files["ckpt_b"], backend="onnxruntime", device="cpu")
    assert len(_names(tmp)) == 1  # the private export, while the engine lives
    assert engine.segment(np.ones((8, 8, 2), np.float32)).shape == (8, 8, 2)
    del engine  # garbage collection (or engine.close(), or the interpreter's exit) removes it
    gc.collect()
    assert _names(tmp) == set()


def test_cache_prune_removes_least_recently_used(tmp_path):
    now = time.time()
    for i in range(4):
        p = tmp_path / f"m{i}.onnx"
        p.write_bytes(b"x" * 1000)
        os.utime(p, (now - 3600 + i, now - 3600 + i))  # m0 oldest
    recent = tmp_path / "recent.onnx"
    recent.write_bytes(b"x" * 1000)  # just used by someone: kept
    removed = prune(tmp_path, max_bytes=2500, keep=tmp_path / "m0.onnx")
    assert [p.name for p in removed] == ["m1.onnx", "m2.onnx", "m3.onnx"]
    assert _names(tmp_path) == {"m0.onnx", "recent.onnx"}


# ---------------------------------------------------------------------------------------------
# one device resolver


def test_resolve_device():
    gpu = torch.cuda.is_available()
    assert resolve_device(None) == resolve_device("auto") == ("cuda:0" if gpu else "cpu")
    assert resolve_device(" CPU ") == "cpu" == resolve_device(torch.device("cpu"))
    assert resolve_device("cuda", check=False) == "cuda:0"
    assert resolve_device("cuda", local_rank=3, check=False) == "cuda:3"
    assert resolve_device("cuda:2", check=False) == "cuda:2" == normalize_device("cuda:2")
    for bad in ("gpu", "cuda:x", "cuda:-1", "tpu:0"):
        with pytest.raises(ValueError, match="expected 'auto', 'cpu', 'cuda' or 'cuda:N'"):
            resolve_device(bad)
    if not gpu:
        with pytest.raises(RuntimeError, match="use --device cpu"):
            resolve_device("cuda")
        with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
            Engine.from_checkpoint(DEMO_CKPT, device="cuda:1")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(RuntimeError, match=f"only {n} CUDA device"):
            resolve_device(f"cuda:{n}")


# ---------------------------------------------------------------------------------------------
# weights made non-finite after the load check


def test_nan_weights_after_loading_raise_a_named_error(files):
    model = checkpoints.load_model(files["ckpt_b"])  # finite when loaded
    with torch.no_grad():
        for p in model.mask_decoder.parameters():
            p.fill_(float("nan"))
    engine = Engine(make_backend("torch", model=model, device="cpu", precision="fp32",
                                 max_batch=4))
    vol = np.random.default_rng(0).random((24, 20, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="NaN/Inf logits"):
        engine.segment(vol)

