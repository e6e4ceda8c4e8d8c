"""The native build: build_info, and CMake's SAMUNET_CUDA option (configure only)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_build_info_fields():
    from sam_unet._native import build_info

    info = build_info()
    assert set(info) >= {"version", "with_cuda", "cuda_version", "cuda_driver_version",
                         "device_count", "with_openmp"}
    assert isinstance(info["with_cuda"], bool)
    assert info["device_count"] >= 0  # 0, not an exception, where there is no driver
    if not info["with_cuda"]:
        assert info["cuda_version"] == 0 and info["device_count"] == 0
    import sam_unet

    assert info["version"] == sam_unet.__version__


def _configure(tmp_path: Path, mode: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    import pybind11

    if shutil.which("cmake") is None:
        pytest.skip("cmake not on PATH")
    return subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "b"), f"-DSAMUNET_CUDA={mode}",
         f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", "-DSKBUILD_PROJECT_VERSION=0.0.0"],
        capture_output=True, text=True, env=env, timeout=300,
    )


def _env_without_nvcc(tmp_path: Path) -> dict[str, str]:
    """The environment, with CUDACXX naming a compiler that does not exist: CMake takes
    CUDACXX before PATH or /usr/local/cuda, so this is a machine without nvcc to it."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_PATH", "CUDA_HOME")}
    env["CUDACXX"] = str(tmp_path / "no-such-nvcc")
    return env


@pytest.mark.slow
def test_cuda_on_without_nvcc_fails_clearly(tmp_path):
    env = _env_without_nvcc(tmp_path)
    proc = _configure(tmp_path, "ON", env)
    assert proc.returncode != 0
    assert "SAMUNET_CUDA=ON but no CUDA compiler (nvcc) was found" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_cuda_off_and_bad_value(tmp_path):
    ok = _configure(tmp_path, "OFF", dict(os.environ))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "sam_unet: CUDA" not in ok.stdout  # OFF never enables the CUDA language
    bad = _configure(tmp_path / "x", "MAYBE", dict(os.environ))
    assert bad.returncode != 0
    assert "SAMUNET_CUDA must be AUTO, ON or OFF" in bad.stdout + bad.stderr


def test_license_file_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # the table form builds with scikit-build-core 0.10 too (the GPU check builds without
    # isolation against whatever the image has)
    assert project["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "Copyright 2026 the sam-unet authors" in text and "[yyyy]" not in text
