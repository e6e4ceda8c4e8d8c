"""benchmarks/gpu_check.sh is strict: under SAMUNET_REQUIRE_GPU=1 a skipped gpu test fails.

Run as a user would: pytest in a subprocess on a test file that skips like a GPU test does where
no device is seen, with the project's conftest.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SKIPPING = '''
import pytest

@pytest.mark.gpu
@pytest.mark.skipif(True, reason="no CUDA device (simulated)")
def test_marked_gpu_skipif():
    pass

@pytest.mark.gpu
def test_marked_gpu_skip_inside():
    pytest.skip("cupy not installed (simulated)")

@pytest.mark.skipif(True, reason="not a gpu test")
def test_unmarked_skip():
    pass
'''


def _pytest(folder: Path, require: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SAMUNET_REQUIRE_GPU"}
    if require:
        env["SAMUNET_REQUIRE_GPU"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-c",
         os.devnull, "--rootdir", str(folder), str(folder / "test_skipping.py")],
        capture_output=True, text=True, timeout=120, env=env, cwd=folder)


def test_gpu_skips_fail_only_when_required(tmp_path):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    relaxed = _pytest(tmp_path, require=False)
    assert relaxed.returncode == 0, relaxed.stdout
    assert "3 skipped" in relaxed.stdout and "gpu test skipped" not in relaxed.stdout
    strict = _pytest(tmp_path, require=True)
    assert strict.returncode == 1, strict.stdout
    # a skip in setup (skipif) fails as an error, one inside the test as a failure
    assert "1 failed, 1 skipped" in strict.stdout and "1 error" in strict.stdout
    assert "SKIPPED [1] test_skipping.py:13: not a gpu test" in strict.stdout
    assert "gpu test skipped under SAMUNET_REQUIRE_GPU=1" in strict.stdout
    assert "no CUDA device (simulated)" in strict.stdout
    assert "cupy not installed (simulated)" in strict.stdout
