"""The top-level scripts in export/ and benchmarks/ are thin: they run the ``sam-unet`` command
they name, with its error handling (one line, exit 1) and its options."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(rel: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / rel), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_bench_model_script_runs_the_suite(tmp_path):
    out = tmp_path / "bench"
    proc = _script("benchmarks/bench_model.py", "--device", "cpu", "--parts", "ceilings",
                   "--runs", "1", "-o", str(out), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "bench.json").read_text())
    assert [c["what"] for c in results["ceilings"]][0].startswith("matmul")
    assert "## Ceilings" in proc.stdout


def test_bench_pipeline_script_errors_as_the_cli(tmp_path):
    proc = _script("benchmarks/bench_pipeline.py", "--device", "cpu", "--volume", "0", "8", "8",
                   cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "sam-unet bench: error: --volume 0 8 8: must be positive"
    assert not list(tmp_path.iterdir())


def test_export_onnx_script(tmp_path):
    proc = _script("export/export_onnx.py", cwd=tmp_path)
    assert proc.returncode == 1 and "python export/export_onnx.py CKPT model.onnx" in proc.stderr
    proc = _script("export/export_onnx.py", str(tmp_path / "none.pt"), str(tmp_path / "m.onnx"),
                   cwd=tmp_path)
    assert proc.returncode == 1
    assert "sam-unet export: error:" in proc.stderr and "none.pt" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "m.onnx").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                    reason="TensorRT is installed here")
def test_build_engine_script_without_tensorrt(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"x")
    proc = _script("export/build_engine.py", str(onnx_path), "-o", str(tmp_path / "m.engine"),
                   cwd=tmp_path)
    assert proc.returncode == 1
    assert "sam-unet build-engine: error: TensorRT is not available" in proc.stderr
    assert "sam-unet[trt]" in proc.stderr and not (tmp_path / "m.engine").exists()
