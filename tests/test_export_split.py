"""SAM's deployment split: encoder.onnx + decoder.onnx beside model.onnx, run by the backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import sam_unet
from sam_unet.checkpoints import load_model
from sam_unet.export.onnx import example_inputs, export_onnx, read_metadata
from sam_unet.export.onnx_split import (
    GRAPH_KEY,
    export_split_onnx,
    split_pair_for,
    split_paths,
    verify_split_onnx,
)

DEMO = Path(sam_unet.__file__).parent / "assets" / "demo_tiny.pt"


@pytest.fixture(scope="module")
def demo_model():
    return load_model(DEMO)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``sam-unet export onnx --split --verify`` of the demo checkpoint."""
    import contextlib
    import io

    from sam_unet.cli import main as cli

    path = tmp_path_factory.mktemp("split") / "demo.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = cli(["export", "onnx", "--checkpoint", str(DEMO), "-o", str(path), "--split",
                  "--verify"])
    text = printed.getvalue()
    assert rc == 0, text
    assert "demo.encoder.onnx and" in text and "encoder + decoder ONNX on batches" in text
    return path


def test_forward_is_decode_of_encode_bit_for_bit(demo_model):
    images, boxes = example_inputs(3, seed=1)
    with torch.inference_mode():
        whole = demo_model(images, boxes)
        emb, feat = demo_model.encode(images)
        split = demo_model.decode(emb, feat, boxes)
    assert emb.shape == (3, 64, 16, 16) and feat.shape == (3, 8, 64, 64)
    assert torch.equal(whole, split)


@pytest.mark.slow
def test_split_graphs_agree_with_the_whole_model(exported, demo_model):
    report = verify_split_onnx(demo_model, exported, batch_sizes=(1, 2, 5), threads=1)
    print(report)
    assert report.vs_whole < 1e-4 and report.vs_torch < 1e-4


@pytest.mark.slow
def test_split_graphs_names_shapes_and_metadata(exported):
    import onnx

    enc_path, dec_path = split_paths(exported)
    assert (enc_path.name, dec_path.name) == ("demo.encoder.onnx", "demo.decoder.onnx")
    whole = read_metadata(exported)

    def io(path):
        g = onnx.load(str(path), load_external_data=False).graph
        dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
        return ({v.name: dims(v) for v in g.input}, {v.name: dims(v) for v in g.output})

    assert io(enc_path) == ({"images": ["batch", 3, 256, 256]},
                            {"image_embeddings": ["batch", 64, 16, 16],
                             "features": ["batch", 8, 64, 64]})
    assert io(dec_path) == ({"image_embeddings": ["batch", 64, 16, 16],
                             "features": ["batch", 8, 64, 64], "boxes": ["batch", 4]},
                            {"logits": ["batch", 1, 64, 64]})
    for path, graph in ((enc_path, "encoder"), (dec_path, "decoder")):
        meta = read_metadata(path)
        assert meta[GRAPH_KEY] == graph
        # the whole model's provenance and feeding metadata travel with each half
        for key in ("sam_unet.variant", "sam_unet.checkpoint_sha256", "sam_unet.pixel_mean"):
            assert meta[key] == whole[key]
        for key in ("sam_unet.model_info", "sam_unet.weights_sha256"):
            if key in whole:
                assert meta[key] == whole[key]
    pair, why = split_pair_for(exported)
    assert pair is not None and why == ""


@pytest.mark.slow
def test_onnxruntime_backend_encode_decode(exported):
    from sam_unet.runtime.backends import make_backend

    b = make_backend("onnxruntime", onnx_path=exported, max_batch=2, threads=1)
    assert b.can_split
    images, boxes = example_inputs(3, seed=2)
    emb, feat = b.encode(images)  # 3 images in chunks of 2
    assert emb.shape == (3, 64, 16, 16) and feat.shape == (3, 8, 64, 64)
    logits = b.decode(emb, feat, boxes)
    whole = b.run(images, boxes)
    assert logits.dtype == torch.float32 and logits.shape == (3, 1, 64, 64)
    rel = float((logits - whole).abs().max() / whole.abs().max())
    assert rel < 1e-4, rel
    # several boxes on one encoded image: the decoder alone
    many = torch.tensor([[10.0, 20.0, 200.0, 180.0], [0.0, 0.0, 255.0, 215.0]])
    two = b.decode(emb[:1].expand(2, -1, -1, -1), feat[:1].expand(2, -1, -1, -1), many)
    ref = b.run(images[:1].expand(2, -1, -1, -1), many)
    assert float((two - ref).abs().max() / ref.abs().max()) < 1e-4
    with pytest.raises(ValueError, match="boxes"):
        b.decode(emb, feat, boxes[:2])


@pytest.mark.slow
def test_torch_backend_split_matches_run(demo_model):
    from sam_unet.runtime.torch_backend import TorchBackend

    b = TorchBackend(demo_model, max_batch=2)
    assert b.can_split
    images, boxes = example_inputs(3, seed=3)
    emb, feat = b.encode(images)
    assert torch.equal(b.decode(emb, feat, boxes), b.run(images, boxes))


@pytest.mark.slow
def test_stale_or_missing_split_graphs_are_not_used(tmp_path, demo_model, exported):
    """A re-exported model.onnx (other weights) beside an old pair: the pair is refused and
    the backend runs whole-model passes instead of answering with the wrong weights."""
    import shutil

    from sam_unet.runtime.backends import make_backend

    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "demo.onnx"
    for src, dst in zip((exported, *split_paths(exported)), (path, *split_paths(path)),
                        strict=True):
        shutil.copy(src, dst)
    assert split_pair_for(path)[0] is not None
    other = load_model(DEMO)
    with torch.no_grad():
        other.mask_decoder.med_token.weight.add_(0.5)
    export_onnx(other, path)
    pair, why = split_pair_for(path)
    assert pair is None and "other weights" in why
    b = make_backend("onnxruntime", onnx_path=path, threads=1)
    assert not b.can_split and "other weights" in b.split_reason
    with pytest.raises(RuntimeError, match="no encoder/decoder graphs"):
        b.encode(example_inputs(1)[0])
    split_paths(path)[1].unlink()
    assert split_pair_for(path)[0] is None
    assert not make_backend("onnxruntime", onnx_path=path, threads=1).can_split


def test_split_export_needs_the_whole_model_first(tmp_path, demo_model):
    with pytest.raises(FileNotFoundError, match="export the whole model first"):
        export_split_onnx(demo_model, tmp_path / "missing.onnx")
    assert list(tmp_path.iterdir()) == []


def test_tensorrt_split_engine_paths_and_missing_graphs(tmp_path):
    from sam_unet.export.tensorrt_split import build_split_engines, split_engine_paths

    enc, dec = split_engine_paths(tmp_path / "model.engine")
    assert (enc.name, dec.name) == ("model.encoder.engine", "model.decoder.engine")
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"")  # no split graphs beside it: nothing to build, TensorRT untouched
    assert build_split_engines(onnx_path, tmp_path / "model.engine") is None


def test_tensorrt_split_engines_are_used_only_with_their_whole_engine(tmp_path):
    """The pair beside X.engine is used when its sidecars name the whole ONNX that X.engine was
    built from (what build_split_engines records); a pair from another model is ignored.
    (Sidecars and files only: the engines themselves need TensorRT and a GPU.)"""
    import json

    from sam_unet.export.tensorrt_split import _tag_sidecar
    from sam_unet.runtime.tensorrt_backend import matching_split_engines, split_engine_paths
    from sam_unet.runtime.tensorrt_sidecar import EngineSpec, sidecar_path, write_sidecar

    def spec(onnx_sha):
        return EngineSpec(onnx_sha, "NVIDIA H200", "9.0", "10.9.0", "1:1:1,1:32:64")

    whole = tmp_path / "model.engine"
    whole.write_bytes(b"plan")
    write_sidecar(whole, spec("a" * 64))
    assert matching_split_engines(whole) is None  # none beside it
    enc, dec = split_engine_paths(whole)
    for path, sha in ((enc, "e" * 64), (dec, "d" * 64)):
        path.write_bytes(b"plan")
        write_sidecar(path, spec(sha))
    assert matching_split_engines(whole) is None  # not tagged: not known to belong
    _tag_sidecar(enc, "a" * 64)
    assert matching_split_engines(whole) is None  # one of two
    _tag_sidecar(dec, "a" * 64)
    assert matching_split_engines(whole) == (enc, dec)
    write_sidecar(whole, spec("b" * 64))  # X.engine rebuilt from another model
    assert matching_split_engines(whole) is None
    _tag_sidecar(enc, "b" * 64)
    _tag_sidecar(dec, "b" * 64)
    assert matching_split_engines(whole) == (enc, dec)
    doc = json.loads(sidecar_path(dec).read_text())
    doc["gpu_name"] = "edited"  # a sidecar whose key no longer matches: not trusted
    sidecar_path(dec).write_text(json.dumps(doc))
    assert matching_split_engines(whole) is None


def test_tensorrt_backend_needs_tensorrt_or_both_split_engines(tmp_path):
    pytest.importorskip("torch")
    from sam_unet.export.tensorrt import TensorRTUnavailableError
    from sam_unet.runtime.tensorrt_backend import TensorRTBackend

    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(TensorRTUnavailableError, match="pip install"):
            TensorRTBackend(tmp_path / "x.engine", encoder_engine_path=tmp_path / "e.engine",
                            decoder_engine_path=tmp_path / "d.engine")
    else:  # pragma: no cover - machines with TensorRT run tests/test_tensorrt.py too
        pytest.skip("TensorRT is installed: covered by the GPU tests")


def test_split_reference_numbers_are_finite(demo_model):
    """The decoder depends on the box only through the prompt encoder: a different box on the
    same embedding changes the logits (the split is not caching a box)."""
    images, _ = example_inputs(1, seed=4)
    with torch.inference_mode():
        emb, feat = demo_model.encode(images)
        a = demo_model.decode(emb, feat, torch.tensor([[0.0, 0.0, 255.0, 215.0]]))
        b = demo_model.decode(emb, feat, torch.tensor([[60.0, 60.0, 120.0, 120.0]]))
    assert np.isfinite(a.numpy()).all() and not torch.equal(a, b)
