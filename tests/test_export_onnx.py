"""ONNX export: graph structure, metadata, ORT parity with dynamic batch, atomic writes, CLI."""

from __future__ import annotations

import copy
import json
import time

import onnx
import pytest
import torch

from sam_unet.export.onnx import (
    OnnxExportError,
    OnnxParityError,
    export_onnx,
    read_metadata,
    sha256_file,
    verify_onnx,
)
from sam_unet.model_info import ModelInfo
from sam_unet.models.build import build_model

TIMINGS: dict[str, float] = {}


def _build(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(variant).eval()


def shared_tiny_onnx(tmp_path_factory):
    """The tiny model (seed 0) and its ONNX export, exported once per test session (the same
    helper lives in test_backends.py)."""
    model = _build("tiny", seed=0)
    path = tmp_path_factory.getbasetemp() / "shared_tiny_seed0.onnx"
    if not path.exists():
        t0 = time.perf_counter()
        export_onnx(model, path)
        TIMINGS["export tiny"] = time.perf_counter() - t0
    return model, path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return shared_tiny_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def res34(tmp_path_factory):
    model = _build("res34")
    path = tmp_path_factory.mktemp("onnx") / "res34.onnx"
    t0 = time.perf_counter()
    export_onnx(model, path)
    TIMINGS["export res34"] = time.perf_counter() - t0
    return model, path


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _check_structure(path):
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 17
    ins = {v.name: _dims(v) for v in proto.graph.input}
    outs = {v.name: _dims(v) for v in proto.graph.output}
    assert ins == {"images": ["batch", 3, 256, 256], "boxes": ["batch", 4]}
    assert outs == {"logits": ["batch", 1, 64, 64]}
    ops = [n.op_type for n in proto.graph.node]
    # LayerNorm and LayerNorm2d are single LayerNormalization nodes, never the decomposed
    # ReduceMean / Sub / Pow / Sqrt pattern.
    assert ops.count("LayerNormalization") > 0
    assert "ReduceMean" not in ops and "Sqrt" not in ops and "Pow" not in ops
    return proto, ops


def test_tiny_graph_structure(tiny):
    _, path = tiny
    _, ops = _check_structure(path)
    # 12-block ViT: norm1/norm2 per block + the neck + LayerNorm2d in adapters and decoder.
    assert ops.count("LayerNormalization") >= 2 * 12 + 2


def test_tiny_metadata(tiny):
    from sam_unet import __version__, transforms

    _, path = tiny
    meta = read_metadata(path)
    assert meta["sam_unet.variant"] == "tiny"
    assert meta["sam_unet.version"] == __version__
    assert meta["sam_unet.checkpoint_sha256"].startswith("none")
    assert json.loads(meta["sam_unet.pixel_mean"]) == list(transforms.PIXEL_MEAN)
    assert json.loads(meta["sam_unet.pixel_std"]) == list(transforms.PIXEL_STD)
    assert int(meta["sam_unet.image_size"]) == transforms.IMAGE_SIZE == 256
    assert int(meta["sam_unet.opset"]) >= 17
    # how to feed the model (defaults for a bare model) and which weights the file holds
    assert ModelInfo.from_json(meta["sam_unet.model_info"]) == ModelInfo(variant="tiny")
    from sam_unet.checkpoints import weights_sha256

    assert meta["sam_unet.weights_sha256"] == weights_sha256(tiny[0])


def test_tiny_ort_parity_dynamic_batch(tiny):
    model, path = tiny
    t0 = time.perf_counter()
    report = verify_onnx(model, path, batch_sizes=(1, 3, 8))
    TIMINGS["verify tiny 1/3/8"] = time.perf_counter() - t0
    print(report)
    assert report.ok and report.rel_error <= 1e-4
    assert report.max_abs_ref > 0


def test_parity_failure_is_detected(tiny):
    model, path = tiny
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with pytest.raises(OnnxParityError, match="relative error"):
        verify_onnx(other, path, batch_sizes=(1,))


def test_res34_export_and_parity(res34):
    model, path = res34
    _, ops = _check_structure(path)
    size_mb = path.stat().st_size / 1e6
    assert 400 < size_mb < 520, size_mb  # ~116M fp32 parameters
    t0 = time.perf_counter()
    report = verify_onnx(model, path, batch_sizes=(1,))
    TIMINGS["verify res34 b1"] = time.perf_counter() - t0
    print(report, TIMINGS)
    assert report.rel_error <= 1e-4


class _Broken(torch.nn.Module):
    variant = "broken"

    def forward(self, images, boxes):
        raise RuntimeError("cannot trace this")


def test_failed_export_leaves_nothing(tmp_path):
    out = tmp_path / "sub" / "model.onnx"
    with pytest.raises(OnnxExportError, match="cannot trace this"):
        export_onnx(_Broken(), out, exporter="torchscript")
    assert not out.exists()
    assert list((tmp_path / "sub").iterdir()) == []  # no temp files either
    # An existing file is not clobbered by a failed export.
    out.write_bytes(b"previous")
    with pytest.raises(OnnxExportError):
        export_onnx(_Broken(), out, exporter="torchscript")
    assert out.read_bytes() == b"previous"


def test_opset_below_17_rejected(tmp_path):
    with pytest.raises(ValueError, match="opset 16"):
        export_onnx(_Broken(), tmp_path / "m.onnx", opset=16)


def test_cli_export_from_checkpoint(tmp_path, capsys):
    checkpoints = pytest.importorskip("sam_unet.checkpoints")
    from sam_unet.cli import main

    model = _build("tiny", seed=3)
    ckpt = tmp_path / "tiny.pt"
    checkpoints.save_checkpoint(model, ckpt, prompt="full")
    out = tmp_path / "out" / "tiny.onnx"
    t0 = time.perf_counter()
    rc = main(["export", "onnx", "--checkpoint", str(ckpt), "-o", str(out), "--verify",
               "--verify-batches", "1", "--normalize", "window", "--window", "-160", "240",
               "--label", "1=liver"])
    TIMINGS["cli export+verify tiny"] = time.perf_counter() - t0
    captured = capsys.readouterr()
    text = captured.out
    assert rc == 0, text
    assert "verify:" in text and "OK" in text
    assert "content hash verified" in captured.err
    meta = read_metadata(out)
    assert meta["sam_unet.checkpoint_sha256"] == sha256_file(ckpt)
    assert meta["sam_unet.variant"] == "tiny"
    # the checkpoint's prompt mode, with the model info given on the command line
    assert ModelInfo.from_json(meta["sam_unet.model_info"]) == ModelInfo(
        variant="tiny", normalize="window", window=(-160.0, 240.0), prompt_mode="full-slice",
        label_names={1: "liver"})
    assert meta["sam_unet.weights_sha256"] == checkpoints.weights_sha256(model)


def test_cli_export_errors(tmp_path, capsys):
    from sam_unet.cli import main

    rc = main(["export", "onnx", "--checkpoint", str(tmp_path / "missing.pt"),
               "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == 1 and "missing.pt" in err and "not found" in err
    assert not (tmp_path / "m.onnx").exists()
    rc = main(["export", "onnx", "--random-init", "--variant", "tiny", "--opset", "16",
               "-o", str(tmp_path / "m.onnx")])
    assert rc == 1 and ">= 17" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # neither --checkpoint nor --random-init
        main(["export", "onnx", "-o", str(tmp_path / "m.onnx")])
    capsys.readouterr()
    from sam_unet import checkpoints

    model = _build("tiny", seed=1)
    with torch.no_grad():
        model.mask_decoder.med_token.weight[0, 0] = float("nan")
    nan_ckpt = tmp_path / "nan.pt"
    checkpoints.save_checkpoint(model, nan_ckpt)
    before = nan_ckpt.read_bytes()
    for extra, needle in ((["-o", str(tmp_path / "m.onnx")], "non-finite weights"),
                          (["-o", str(nan_ckpt)], "that is the input checkpoint"),
                          (["-o", str(tmp_path / "m.onnx"), "--label", "liver"], "VALUE=NAME")):
        rc = main(["export", "onnx", "--checkpoint", str(nan_ckpt), *extra])
        err = capsys.readouterr().err
        assert rc == 1 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m.onnx").exists() and nan_ckpt.read_bytes() == before
    good = tmp_path / "good.pt"
    checkpoints.save_checkpoint(_build("tiny", seed=2), good)
    rc = main(["export", "onnx", "--checkpoint", str(good), "-o", str(tmp_path / "m.onnx"),
               "--normalize", "window"])
    err = capsys.readouterr().err
    assert rc == 1 and "normalize 'window' needs a window" in err
    assert not (tmp_path / "m.onnx").exists()
