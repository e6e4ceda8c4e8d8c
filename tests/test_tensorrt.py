"""TensorRT: profiles, engine cache keys, sidecars and identity checks (plain Python, always run);
clear errors where TensorRT is absent (really absent, not mocked); and real engine builds marked
``tensorrt`` that skip without the package or a GPU."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch

from sam_unet.export import engine_cache as C
from sam_unet.export import fp32_layers as F
from sam_unet.export import tensorrt_build as B
from sam_unet.export.engine_cache import EngineCache
from sam_unet.export.profile_shapes import ProfileShapeError, profile_shapes
from sam_unet.runtime import tensorrt_engine as E
from sam_unet.runtime import tensorrt_profiles as P
from sam_unet.runtime import tensorrt_sidecar as S
from sam_unet.runtime.tensorrt_engine import TensorRTUnavailableError
from sam_unet.runtime.tensorrt_profiles import DEFAULT_PROFILES, Profile
from sam_unet.runtime.tensorrt_sidecar import EngineMismatchError, EngineSpec, GpuIdentity

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None

SPEC = EngineSpec(
    onnx_sha256="ab" * 32,
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability="9.0",
    tensorrt_version="10.3.0",
    profiles=DEFAULT_PROFILES,
    fp16=True,
)


# -- profiles ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1:1:1,1:32:64", (Profile(1, 1, 1), Profile(1, 32, 64))),
        (" 1:32:64 ", (Profile(1, 32, 64),)),
        ("8", (Profile(8, 8, 8),)),
        ("1:1:1,,4:8:16,", (Profile(1, 1, 1), Profile(4, 8, 16))),
    ],
)
def test_parse_profiles(text, expected):
    assert P.parse_profiles(text) == expected
    assert P.parse_profiles(P.format_profiles(expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "at least one"),
        ("1:2", "MIN:OPT:MAX"),
        ("a:b:c", "MIN:OPT:MAX"),
        ("1:64:32", "min <= opt <= max"),
        ("0:1:1", "min <= opt <= max"),
        ("1:-1:4", "MIN:OPT:MAX"),
        ("1:1:1,1:1:1", "duplicate"),
    ],
)
def test_parse_profiles_errors(text, message):
    with pytest.raises(ValueError, match=message):
        P.parse_profiles(text)


@pytest.mark.parametrize(("batch", "index"), [(1, 0), (2, 1), (32, 1), (64, 1)])
def test_select_profile(batch, index):
    assert P.select_profile(DEFAULT_PROFILES, batch) == index


def test_select_profile_outside():
    with pytest.raises(ValueError, match="batch 65 is outside"):
        P.select_profile(DEFAULT_PROFILES, 65)
    assert P.max_batch(DEFAULT_PROFILES) == 64


# -- cache keys --------------------------------------------------------------------------------


def test_key_is_deterministic():
    again = EngineSpec(**{f.name: getattr(SPEC, f.name) for f in dataclasses.fields(SPEC)})
    assert again.key() == SPEC.key()
    assert len(SPEC.key()) == 32 and int(SPEC.key(), 16) >= 0
    # Profiles may be given as text: same spec, same key.
    assert dataclasses.replace(SPEC, profiles="1:1:1,1:32:64").key() == SPEC.key()


@pytest.mark.parametrize(
    ("part", "value"),
    [
        ("onnx_sha256", "cd" * 32),
        ("gpu_name", "NVIDIA A100-SXM4-80GB"),
        ("compute_capability", "8.0"),
        ("tensorrt_version", "10.4.0"),
        ("profiles", (Profile(1, 1, 1), Profile(1, 32, 128))),
        ("profiles", (Profile(1, 32, 64), Profile(1, 1, 1))),  # order = profile index
        ("fp16", False),
        ("fp32_layers", ("NORMALIZATION",)),
    ],
)
def test_key_changes_with_each_part(part, value):
    changed = dataclasses.replace(SPEC, **{part: value})
    assert changed.key() != SPEC.key()
    cache = EngineCache("/cache")
    assert cache.path_for(changed) != cache.path_for(SPEC)


def test_engine_cache_paths_and_lookup(tmp_path):
    cache = EngineCache(tmp_path)
    path = cache.path_for(SPEC)
    assert path == EngineCache(tmp_path).path_for(SPEC)
    assert path.parent == tmp_path and SPEC.key() in path.name
    assert cache.lookup(SPEC) is None
    path.write_bytes(b"plan")
    assert cache.lookup(SPEC) is None  # no sidecar: not trusted
    S.write_sidecar(path, SPEC)
    assert cache.lookup(SPEC) == path
    other = dataclasses.replace(SPEC, tensorrt_version="10.4.0")
    assert cache.lookup(other) is None


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SAM_UNET_ENGINE_CACHE", str(tmp_path / "eng"))
    assert C.default_cache_dir() == tmp_path / "eng"
    assert EngineCache().root == tmp_path / "eng"


# -- sidecars and identity ---------------------------------------------------------------------


def _engine_with_sidecar(tmp_path, spec=SPEC, **extra):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a real plan")
    S.write_sidecar(engine, spec, onnx_path="/models/model.onnx", **extra)
    return engine


def test_sidecar_roundtrip(tmp_path):
    engine = _engine_with_sidecar(tmp_path)
    side = S.sidecar_path(engine)
    assert side.name == "model.engine.json"
    doc = json.loads(side.read_text())
    assert doc["key"] == SPEC.key()
    assert doc["gpu_name"] == SPEC.gpu_name and doc["compute_capability"] == "9.0"
    assert doc["tensorrt_version"] == "10.3.0" and doc["profiles"] == ["1:1:1", "1:32:64"]
    assert doc["fp16"] is True and doc["onnx_sha256"] == SPEC.onnx_sha256
    spec, _ = S.read_sidecar(engine)
    assert spec == SPEC
    same = S.check_engine_file(
        engine, gpu=GpuIdentity(SPEC.gpu_name, "9.0"), tensorrt_version="10.3.0"
    )
    assert same == SPEC


@pytest.mark.parametrize(
    ("gpu", "trt_version", "must_name"),
    [
        (GpuIdentity("NVIDIA A100-SXM4-80GB", "8.0"), "10.3.0",
         ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "9.0", "8.0"]),
        (GpuIdentity("NVIDIA H100 80GB HBM3", "9.1"), "10.3.0", ["9.0", "9.1"]),
        (GpuIdentity("NVIDIA H100 80GB HBM3", "9.0"), "10.4.0", ["TensorRT 10.3.0", "10.4.0"]),
        (GpuIdentity("NVIDIA L4", "8.9"), "8.6.1", ["NVIDIA L4", "TensorRT 10.3.0", "8.6.1"]),
    ],
)
def test_sidecar_mismatch_names_both_and_how_to_rebuild(tmp_path, gpu, trt_version, must_name):
    engine = _engine_with_sidecar(tmp_path)
    with pytest.raises(EngineMismatchError) as info:
        S.check_engine_file(engine, gpu=gpu, tensorrt_version=trt_version)
    msg = str(info.value)
    for text in must_name:
        assert text in msg, (text, msg)
    assert str(engine) in msg
    assert "rebuild" in msg and "sam-unet build-engine /models/model.onnx" in msg
    assert "--profiles 1:1:1,1:32:64 --fp16" in msg


def test_sidecar_missing_or_corrupt(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    gpu = GpuIdentity("x", "9.0")
    with pytest.raises(FileNotFoundError, match="no sidecar.*build-engine"):
        S.check_engine_file(engine, gpu=gpu, tensorrt_version="10.3.0")
    S.sidecar_path(engine).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable engine sidecar"):
        S.read_sidecar(engine)
    S.sidecar_path(engine).write_text(json.dumps({"gpu_name": "x"}))
    with pytest.raises(ValueError, match="missing or has a bad field"):
        S.read_sidecar(engine)
    # An edited sidecar (facts changed, key not) is caught.
    _engine_with_sidecar(tmp_path)
    doc = json.loads(S.sidecar_path(engine).read_text())
    doc["tensorrt_version"] = "10.9.9"
    S.sidecar_path(engine).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="does not match its contents"):
        S.read_sidecar(engine)
    with pytest.raises(FileNotFoundError, match="no such engine"):
        S.check_engine_file(tmp_path / "none.engine", gpu=gpu, tensorrt_version="10.3.0")


# -- precision constraints (selection logic) ----------------------------------------------------


def test_select_fp32_layers():
    layers = [
        ("/image_encoder/blocks.0/norm1/LayerNormalization", "NORMALIZATION", True),
        ("/blocks.0/attn/Softmax", "SOFTMAX", True),
        ("/shape/ReduceProd", "REDUCE", False),  # integer shape arithmetic: left alone
        ("/blocks.0/attn/MatMul", "MATRIX_MULTIPLY", True),
        ("/neck/Conv", "CONVOLUTION", True),
    ]
    assert F.select_fp32_layers(layers) == [
        "/image_encoder/blocks.0/norm1/LayerNormalization",
        "/blocks.0/attn/Softmax",
    ]
    assert F.select_fp32_layers(layers, (), [r"attn/MatMul$"]) == ["/blocks.0/attn/MatMul"]
    assert F.select_fp32_layers(layers, ("convolution",)) == ["/neck/Conv"]


# -- profile shapes, generic over the graph's inputs -------------------------------------------

WHOLE = [("images", (-1, 3, 256, 256)), ("boxes", (-1, 4))]
ENCODER = [("images", (-1, 3, 256, 256))]
DECODER = [("image_embeddings", (-1, 256, 16, 16)), ("features", (-1, 64, 64, 64)),
           ("boxes", (-1, 4))]


@pytest.mark.parametrize("inputs", [WHOLE, ENCODER, DECODER], ids=["whole", "encoder", "decoder"])
def test_profile_shapes_for_any_batch_first_graph(inputs):
    shapes = profile_shapes(inputs, Profile(1, 32, 64))
    assert list(shapes) == [name for name, _ in inputs]
    for name, dims in inputs:
        lo, opt, hi = shapes[name]
        assert lo == (1, *dims[1:]) and opt == (32, *dims[1:]) and hi == (64, *dims[1:])


def test_profile_shapes_errors():
    with pytest.raises(ProfileShapeError, match=r"'images' has dynamic dims \(-1, 3, -1, -1\)"):
        profile_shapes([("images", (-1, 3, -1, -1))], Profile(1, 1, 1), source="m.onnx")
    with pytest.raises(ProfileShapeError, match="'scale' is a scalar"):
        profile_shapes([("scale", ())], Profile(1, 1, 1))
    with pytest.raises(ProfileShapeError, match="fixed batch of 1.*--profiles 1"):
        profile_shapes([("images", (1, 3, 256, 256))], Profile(1, 32, 64))
    with pytest.raises(ProfileShapeError, match="no inputs"):
        profile_shapes([], Profile(1, 1, 1))
    # a fixed batch that the range is exactly: fine
    assert profile_shapes([("boxes", (8, 4))], Profile(8, 8, 8)) == {
        "boxes": ((8, 4), (8, 4), (8, 4))}


def _onnx_inputs(path):
    """(name, dims) of a real ONNX file's graph inputs, a symbolic dim as -1."""
    import onnx

    model = onnx.load(str(path))
    weights = {i.name for i in model.graph.initializer}
    return [(i.name, tuple(d.dim_value if d.HasField("dim_value") else -1
                           for d in i.type.tensor_type.shape.dim))
            for i in model.graph.input if i.name not in weights]


def test_profile_shapes_of_an_exported_graph(tmp_path):
    """A real ONNX file with the decoder's three batch-first inputs (dynamic batch, the
    exporter's own dims): every input gets the batch range and its fixed dims."""

    class Decoder(torch.nn.Module):
        def forward(self, image_embeddings, features, boxes):
            pooled = image_embeddings.mean((2, 3)) + features.mean((2, 3))
            return (pooled[:, :4] * boxes).sum(1, keepdim=True)

    decoder = tmp_path / "decoder.onnx"
    args = (torch.zeros(2, 96, 16, 16), torch.zeros(2, 96, 64, 64), torch.zeros(2, 4))
    names = ["image_embeddings", "features", "boxes"]
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(Decoder(), args, str(decoder), input_names=names,
                          output_names=["out"], dynamic_axes={n: {0: "batch"} for n in names},
                          dynamo=False)
    inputs = _onnx_inputs(decoder)
    assert inputs == [("image_embeddings", (-1, 96, 16, 16)), ("features", (-1, 96, 64, 64)),
                      ("boxes", (-1, 4))]
    shapes = profile_shapes(inputs, Profile(2, 4, 16), source=str(decoder))
    for name, dims in inputs:
        assert shapes[name] == tuple((b, *dims[1:]) for b in (2, 4, 16)), name


def test_runtime_loads_engines_without_export():
    """Loading and running engines is runtime's job: the TensorRT modules of runtime/ import
    nothing from sam_unet.export, at module level or inside functions."""
    import ast

    import sam_unet.runtime as runtime

    folder = Path(runtime.__file__).parent
    files = sorted(folder.glob("tensorrt_*.py"))
    assert {f.name for f in files} >= {"tensorrt_backend.py", "tensorrt_engine.py",
                                       "tensorrt_profiles.py", "tensorrt_sidecar.py"}
    for path in files:
        imported = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.append(node.module)
            elif isinstance(node, ast.Import):
                imported += [a.name for a in node.names]
        assert not [m for m in imported if m.startswith("sam_unet.export")], path.name


def test_export_package_names_resolve():
    import sam_unet.export as X
    from sam_unet.export import tensorrt as facade

    assert X.build_engine is B.build_engine and X.build_or_reuse is C.build_or_reuse
    assert X.EngineSpec is EngineSpec and X.TensorRTUnavailableError is TensorRTUnavailableError
    assert facade.build_engine_cached is C.build_engine_cached
    assert all(hasattr(facade, name) for name in facade.__all__)


# -- without TensorRT: clear errors (the package is really absent here) -------------------------

needs_no_trt = pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")


@needs_no_trt
def test_import_tensorrt_error_has_install_hint():
    with pytest.raises(TensorRTUnavailableError) as info:
        E.import_tensorrt()
    msg = str(info.value)
    assert "pip install tensorrt" in msg and 'pip install "sam-unet[trt]"' in msg


@needs_no_trt
def test_build_engine_cli_without_tensorrt(tmp_path, capsys):
    from sam_unet.cli import main

    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"x")
    rc = main(["build-engine", str(onnx_path), "-o", str(tmp_path / "m.engine"), "--fp16",
               "--profiles", "1:1:1,1:32:64", "--timing-cache", str(tmp_path / "t.cache")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "sam-unet build-engine: error: TensorRT is not available" in err
    assert "pip install tensorrt" in err and "sam-unet[trt]" in err
    assert not (tmp_path / "m.engine").exists() and not (tmp_path / "t.cache").exists()


@needs_no_trt
def test_load_engine_and_backend_without_tensorrt(tmp_path):
    from sam_unet.runtime.backends import make_backend

    engine = _engine_with_sidecar(tmp_path)
    with pytest.raises(TensorRTUnavailableError, match="pip install tensorrt"):
        E.load_engine(engine)
    with pytest.raises(TensorRTUnavailableError, match="pip install tensorrt"):
        make_backend("tensorrt", engine_path=engine, device="cuda")
    with pytest.raises(TensorRTUnavailableError):
        B.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine")


def test_build_engine_cli_argument_errors(tmp_path, capsys):
    from sam_unet.cli import main

    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"x")
    assert main(["build-engine", str(onnx_path), "--profiles", "1:64:32"]) == 1
    assert "min <= opt <= max" in capsys.readouterr().err
    assert main(["build-engine", str(tmp_path / "none.onnx")]) == 1
    assert "none.onnx: no such ONNX file" in capsys.readouterr().err


# -- real TensorRT (skipped where it is absent or there is no GPU) ------------------------------


@pytest.fixture(scope="module")
def trt_env():
    trt = pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but no CUDA device is visible")
    return trt


@pytest.fixture(scope="module")
def tiny_onnx(trt_env, tmp_path_factory):
    from sam_unet.export.onnx import export_onnx
    from sam_unet.models.build import build_model

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    path = tmp_path_factory.mktemp("trt") / "tiny.onnx"
    export_onnx(model, path)
    return model, path


@pytest.mark.tensorrt
def test_build_run_and_reuse_engine(trt_env, tiny_onnx, tmp_path):
    from sam_unet.export.onnx import example_inputs
    from sam_unet.runtime.backends import make_backend

    _, onnx_path = tiny_onnx
    engine = tmp_path / "tiny.engine"
    timing = tmp_path / "timing.cache"
    path, spec, built = C.build_or_reuse(
        onnx_path, engine, profiles="1:1:1,1:4:8", fp16=True, timing_cache=timing
    )
    assert built and path == engine and engine.stat().st_size > 0
    assert timing.stat().st_size > 0
    recorded, doc = S.read_sidecar(engine)
    assert recorded == spec and spec.tensorrt_version == trt_env.__version__
    assert spec.gpu == E.current_gpu(0)
    assert doc["fp32_pinned_layers"] > 0  # LayerNormalization layers were pinned
    # Same ONNX, same GPU, same options: reused, not rebuilt.
    _, _, built_again = C.build_or_reuse(onnx_path, engine, profiles="1:1:1,1:4:8", fp16=True)
    assert not built_again

    trt_backend = make_backend("tensorrt", engine_path=engine, device="cuda")
    ort_backend = make_backend("onnxruntime", onnx_path=onnx_path, device="cpu")
    assert trt_backend.precision == "fp16" and trt_backend.max_batch == 8
    for batch in (1, 3, 8, 11):  # 1 -> profile 0, 3/8 -> profile 1, 11 -> split 8 + 3
        images, boxes = example_inputs(batch, seed=batch)
        got = trt_backend.run(images.cuda(), boxes.cuda())
        ref = ort_backend.run(images, boxes)
        assert got.shape == (batch, 1, 64, 64) and got.dtype == torch.float32
        assert got.is_cuda and torch.isfinite(got).all()
        got = got.cpu()
        rel = ((got - ref).abs().max() / ref.abs().max()).item()
        agree = ((got > 0) == (ref > 0)).float().mean().item()
        print(f"TensorRT fp16 vs ORT fp32, batch {batch}: rel {rel:.3g}, agreement {agree:.5f}")
        assert rel < 5e-2 and agree >= 0.99
    assert sorted(trt_backend._contexts) == [0, 1]


@pytest.mark.tensorrt
def test_engine_cache_and_mismatch_on_real_engine(trt_env, tiny_onnx, tmp_path):
    _, onnx_path = tiny_onnx
    path = C.build_engine_cached(onnx_path, cache_dir=tmp_path, profiles="1:2:4")
    assert path.parent == tmp_path and (tmp_path / "timing.cache").is_file()
    assert C.build_engine_cached(onnx_path, cache_dir=tmp_path, profiles="1:2:4") == path
    loaded = E.load_engine(path)
    assert loaded.input_names and loaded.output_names == ["logits"]
    # Pretend it came from another TensorRT: refused before deserialisation.
    spec, _ = S.read_sidecar(path)
    S.write_sidecar(path, dataclasses.replace(spec, tensorrt_version="0.0.1"))
    with pytest.raises(EngineMismatchError, match="TensorRT 0.0.1"):
        E.load_engine(path)
