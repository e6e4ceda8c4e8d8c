"""The benchmark suite runs at small CPU sizes and writes its table, JSON and chart.

A smoke test that it works, not a timing assertion.
"""

from __future__ import annotations

import json

import pytest

from sam_unet.cli import main as cli


@pytest.mark.slow
def test_bench_suite_small_cpu(tmp_path, capsys):
    out = tmp_path / "bench"
    assert cli(["bench", "--device", "cpu", "--size", "small", "-o", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "## Model throughput" in printed and "## End to end" in printed
    results = json.loads((out / "bench.json").read_text())
    backends = {r["backend"] for r in results["model"]}
    assert {"eager-baseline", "torch", "onnxruntime"} <= backends
    assert all(r["slices_per_s"] > 0 and r["gflop_per_slice"] > 0 for r in results["model"])
    paths = {r["path"] for r in results["ops"]}
    assert {"C++ CPU"} <= paths and any(p.startswith("reference") for p in paths)
    assert results["ops_speedups"]
    assert results["pipeline"][0]["slices_per_s"] > 0
    assert (out / "bench.md").read_text().startswith("# sam-unet bench")
    assert (out / "bench.png").stat().st_size > 1000


def test_bench_rejects_unknown_part(capsys):
    assert cli(["bench", "--device", "cpu", "--parts", "model,warp"]) == 1
    assert "unknown --parts" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--configs", "torch"], "--configs 'torch': expected BACKEND:PRECISION"),
    (["--configs", "warp:fp16"], "--configs 'warp:fp16': expected BACKEND:PRECISION"),
    (["--configs", "tensorrt:fp16"], "pass the engine to time with --engine"),
    (["--batches", "4", "0"], "--batches 4 0: must be positive"),
    (["--runs", "0"], "--runs 0: must be positive"),
])
def test_bench_option_errors(args, message, tmp_path, capsys):
    out = tmp_path / "bench"
    assert cli(["bench", "--device", "cpu", "--parts", "model", "-o", str(out), *args]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_model_bench_tensorrt_needs_an_engine():
    from sam_unet.bench.model import run_model_bench

    with pytest.raises(ValueError, match="needs an engine file"):
        run_model_bench("tiny", "cpu", batches=(1,), configs=(("tensorrt", "fp16"),), runs=1,
                        baseline=False)
