"""Backend protocol: torch and onnxruntime give the same logits; construction and input errors;
CUDA paths (torch fp16 + CUDA graphs, ORT IO binding) where a GPU is visible."""

from __future__ import annotations

import pytest
import torch

from sam_unet.export.onnx import example_inputs, export_onnx
from sam_unet.models.build import build_model
from sam_unet.runtime.backends import Backend, make_backend
from sam_unet.runtime.onnxruntime_backend import resolve_providers

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model (seed 0) and its ONNX file, exported once per session (shared with
    test_export_onnx.py through the session's base temp folder)."""
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    path = tmp_path_factory.getbasetemp() / "shared_tiny_seed0.onnx"
    if not path.exists():
        export_onnx(model, path)
    return model, path


@pytest.fixture(scope="module")
def cpu_backends(tiny):
    model, path = tiny
    return (
        make_backend("torch", model=model, device="cpu", max_batch=2),
        make_backend("onnxruntime", onnx_path=path, device="cpu", max_batch=2, threads=1),
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def test_torch_and_onnxruntime_agree(tiny, cpu_backends):
    model, _ = tiny
    tb, ob = cpu_backends
    for b in (tb, ob):
        assert isinstance(b, Backend)
        assert b.device == "cpu" and b.precision == "fp32" and b.max_batch == 2
        assert isinstance(b.describe(), str) and b.name in b.describe()
    assert tb.name == "torch" and ob.name == "onnxruntime"
    assert "tiny" in ob.describe() and "CPUExecutionProvider" in ob.describe()
    images, boxes = example_inputs(3, seed=7)  # 3 > max_batch: split 2 + 1
    out_t = tb.run(images, boxes)
    out_o = ob.run(images, boxes)
    for out in (out_t, out_o):
        assert out.shape == (3, 1, 64, 64) and out.dtype == torch.float32
        assert out.device.type == "cpu"
    assert _rel(out_o, out_t) <= 1e-4
    with torch.inference_mode():
        direct = model(images[:1], boxes[:1])
    assert _rel(out_t[:1], direct) <= 1e-5
    # float16 images are accepted (cast to the graph's float32).
    half = ob.run(images[:1].half(), boxes[:1])
    assert _rel(half, out_o[:1]) < 1e-2


def test_torch_backend_keeps_callers_model(tiny):
    model, _ = tiny
    before = next(model.parameters()).dtype
    b = make_backend("torch", model=model, device="cpu", precision="bf16", max_batch=4)
    assert b.precision == "bf16" and next(b.model.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == before == torch.float32
    images, boxes = example_inputs(2, seed=2)
    out = b.run(images, boxes)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("images", "boxes", "message"),
    [
        (torch.zeros(2, 3, 128, 128), torch.zeros(2, 4), r"\(B, 3, 256, 256\)"),
        (torch.zeros(2, 3, 256, 256), torch.zeros(3, 4), r"boxes: expected shape \(2, 4\)"),
        (torch.zeros(2, 3, 256, 256, dtype=torch.int32), torch.zeros(2, 4), "dtype"),
        (torch.zeros(1, 3, 256, 256), torch.zeros(1, 4, dtype=torch.int64), "float"),
    ],
)
def test_input_validation(cpu_backends, images, boxes, message):
    for b in cpu_backends:
        with pytest.raises(ValueError, match=message):
            b.run(images, boxes)


def test_make_backend_errors(tiny, tmp_path):
    model, path = tiny
    with pytest.raises(ValueError, match="backend 'jax'"):
        make_backend("jax", model=model)
    with pytest.raises(ValueError, match="precision 'int8'"):
        make_backend("torch", model=model, precision="int8")
    with pytest.raises(ValueError, match="device 'gpu'"):
        make_backend("torch", model=model, device="gpu")
    with pytest.raises(ValueError, match="pass model= or checkpoint="):
        make_backend("torch")
    with pytest.raises(ValueError, match="pass onnx_path="):
        make_backend("onnxruntime")
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        make_backend("ort", onnx_path=tmp_path / "none.onnx")
    with pytest.raises(ValueError, match="fp32 graph only"):
        make_backend("onnxruntime", onnx_path=path, precision="fp16")
    with pytest.raises(ValueError, match="tensorrt backend needs a CUDA device|TensorRT"):
        make_backend("trt", engine_path=tmp_path / "x.engine", device="cpu")


def test_torch_backend_from_checkpoint(tiny, tmp_path):
    checkpoints = pytest.importorskip("sam_unet.checkpoints")
    model, _ = tiny
    ckpt = tmp_path / "tiny.pt"
    checkpoints.save_checkpoint(model, ckpt)
    b = make_backend("torch", checkpoint=ckpt)
    images, boxes = example_inputs(1, seed=4)
    with torch.inference_mode():
        ref = model(images, boxes)
    assert _rel(b.run(images, boxes), ref) <= 1e-6


def test_resolve_providers():
    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("cpu", "auto", gpu) == ["CPUExecutionProvider"]
    assert resolve_providers("cuda:1", "auto", gpu, device_id=1) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    trt = resolve_providers("cuda:0", "tensorrt", gpu, precision="fp16")
    assert trt[0] == ("TensorrtExecutionProvider", {"device_id": 0, "trt_fp16_enable": True})
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        resolve_providers("cuda:0", "auto", cpu_only)
    with pytest.raises(RuntimeError, match="no TensorrtExecutionProvider"):
        resolve_providers("cuda:0", "tensorrt", cpu_only)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_providers("cpu", "cuda", gpu)


# -- CUDA ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_torch_cuda_graphs(tiny, precision):
    model, _ = tiny
    graphs = make_backend("torch", model=model, device="cuda", precision=precision, max_batch=8)
    eager = make_backend("torch", model=model, device="cuda", precision=precision, max_batch=8,
                         cuda_graphs=False)
    assert graphs.cuda_graphs
    for batch in (8, 3, 8, 1):  # 3 and 1 are padded into the batch-8 graph
        images, boxes = example_inputs(batch, seed=batch, device="cuda")
        got = graphs.run(images, boxes)
        ref = eager.run(images, boxes)
        assert got.shape == (batch, 1, 64, 64) and got.dtype == torch.float32 and got.is_cuda
        assert _rel(got, ref) < 1e-2, graphs.describe()
    assert sorted(graphs._graphs) == [8], graphs.describe()
    # Two results do not alias the graph's static output buffer.
    a = graphs.run(*example_inputs(2, seed=1, device="cuda"))
    b = graphs.run(*example_inputs(2, seed=2, device="cuda"))
    assert not torch.equal(a, b)


@pytest.mark.gpu
@cuda
def test_onnxruntime_cuda_io_binding(tiny):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without CUDAExecutionProvider")
    model, path = tiny
    ob = make_backend("onnxruntime", onnx_path=path, device="cuda")
    images, boxes = example_inputs(3, seed=5)
    got = ob.run(images.cuda(), boxes.cuda())
    assert got.is_cuda
    with torch.inference_mode():
        ref = model(images, boxes)
    assert _rel(got.cpu(), ref) <= 1e-3


def test_compile_cache_dir_is_persistent(tmp_path, monkeypatch):
    from sam_unet.runtime.torch_backend import compile_cache_dir, enable_compile_cache

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compile_cache_dir() == str(tmp_path / ".cache" / "sam_unet" / "inductor")
    path = enable_compile_cache()
    assert (tmp_path / ".cache" / "sam_unet" / "inductor").is_dir()
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == path
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache_dir() == str(tmp_path / "mine")
