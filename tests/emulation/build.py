"""Build the host emulation of the CUDA ops: the real csrc/cuda launchers and kernels, their
``<<<grid, block, smem, stream>>>`` launches rewritten to ``::emu::launch(...)`` in a temporary
copy, compiled with the system C++ compiler against the CUDA runtime shim in this folder, and
linked with the CPU sources they call into one shared library for ctypes.

The library is cached under the temporary folder by a hash of every input and flag, so a session
compiles it once. ``SAMUNET_EMU_CSRC`` points the build at another csrc tree (e.g. a copy with a
planted bug).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHIM = ("cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h", "emu_runtime.cpp", "emu_entry.cpp")
CXXFLAGS = ("-std=c++17", "-O2", "-fPIC", "-pthread", "-w")

# a launch head: kernel (qualified, optionally with one level of template arguments)
LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
EMPTY_ARGS = re.compile(r"(::emu::config\((?:[^()]|\([^()]*\))*\)),\s*\)")


class BuildError(RuntimeError):
    """The emulation did not compile: the message holds the compiler's output."""


def csrc_dir() -> Path:
    return Path(os.environ.get("SAMUNET_EMU_CSRC", ROOT / "csrc")).resolve()


def rewrite_launches(text: str) -> tuple[str, int]:
    """``k<<<cfg>>>(args)`` -> ``::emu::launch(k, ::emu::config(cfg), args)``; returns the text
    and the number of launches rewritten (every ``<<<`` must be one)."""
    out, count = LAUNCH.subn(lambda m: f"::emu::launch({m[1]}, ::emu::config({m[2]}), ", text)
    out = EMPTY_ARGS.sub(r"\1)", out)
    if "<<<" in out:
        raise BuildError("a kernel launch the rewrite did not recognise is left")
    return out, count


def _inputs(csrc: Path) -> list[Path]:
    files = [csrc / "cuda" / "ops_cuda.cu", csrc / "cuda" / "ops_kernels.cuh",
             csrc / "cuda" / "device_query.cu",
             csrc / "cpu" / "ops_cpu.cpp", csrc / "cpu" / "parallel.cpp"]  # fmt: skip
    files += sorted((csrc / "include" / "sam_unet").glob("*.h"))
    files += [HERE / name for name in SHIM]
    return files


def build(cxx: str | None = None) -> Path:
    """Compile (or find in the cache) the emulation library; returns its path."""
    cxx = cxx or os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise BuildError("no C++ compiler (g++ or $CXX) found")
    csrc = csrc_dir()
    digest = hashlib.sha256(" ".join((cxx, *CXXFLAGS)).encode())
    for path in _inputs(csrc):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    cache_root = Path(tempfile.gettempdir()) / f"sam_unet_cuda_emulation-{os.getuid()}"
    target = cache_root / digest.hexdigest()[:20]
    lib = target / "libsamunet_cuda_emu.so"
    if lib.exists():
        return lib
    cache_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache_root, prefix="build-"))
    try:
        _compile(cxx, csrc, work, lib.name)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        work.rename(target)
    except OSError:  # built concurrently by another session: use theirs
        shutil.rmtree(work, ignore_errors=True)
    return lib


def _compile(cxx: str, csrc: Path, work: Path, lib_name: str) -> None:
    """Rewrite the launches into `work`, compile every unit (two at a time) and link."""
    launches = 0
    for name in ("ops_cuda.cu", "ops_kernels.cuh"):
        text, count = rewrite_launches((csrc / "cuda" / name).read_text())
        (work / name).write_text(text)
        launches += count
    if launches == 0:
        raise BuildError("no kernel launch found in ops_cuda.cu: nothing would be tested")
    include = ["-I", str(csrc / "include")]
    cuda = ["-D__CUDACC__", "-DSAMUNET_WITH_CUDA=1", "-I", str(work), "-I", str(HERE)]
    units = [
        (work / "ops_cuda.cu", [*cuda, *include, "-x", "c++"]),
        (csrc / "cuda" / "device_query.cu", [*cuda, *include, "-x", "c++"]),
        (csrc / "cpu" / "ops_cpu.cpp", ["-DSAMUNET_WITH_CUDA=1", *include]),
        (csrc / "cpu" / "parallel.cpp", include),
        (HERE / "emu_runtime.cpp", ["-I", str(HERE)]),
        (HERE / "emu_entry.cpp", include),
    ]

    def compile_unit(i: int) -> subprocess.CompletedProcess:
        src, flags = units[i]
        cmd = [cxx, *CXXFLAGS, *flags, "-c", str(src), "-o", str(work / f"{i}_{src.stem}.o")]
        return subprocess.run(cmd, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=2) as pool:  # two compilers at a time (2-core machines)
        for done in pool.map(compile_unit, range(len(units))):
            if done.returncode != 0:
                raise BuildError(f"{' '.join(done.args)}\n{done.stdout}{done.stderr}")
    objs = sorted(str(p) for p in work.glob("*.o"))
    link = subprocess.run([cxx, "-shared", "-pthread", "-o", str(work / lib_name), *objs],
                          capture_output=True, text=True)  # fmt: skip
    if link.returncode != 0:
        raise BuildError(link.stdout + link.stderr)
