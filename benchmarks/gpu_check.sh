#!/usr/bin/env bash
# One prepared check for a GPU machine with no network: build the extension with CUDA, run the
# GPU tests, run the full benchmark suite, and print a short table last. Target: under 5 min.
#
# Needs on that machine: python3 with torch (CUDA), pybind11, scikit-build-core, cmake, ninja,
# nvcc; everything else comes as wheels from a local folder (default .whl/, see README):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl nibabel==5.4.2
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-$PWD/gpu-check-out}}"
mkdir -p "$OUT_DIR"
WHEELS="${SAMUNET_WHEELS:-.whl}"
SITE=/tmp/sam_unet_site
export PYTHONUNBUFFERED=1

step() { printf '\n=== %s (%ss)\n' "$1" "$SECONDS"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv || exit 1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

if compgen -G "$WHEELS/*.whl" >/dev/null; then
  step "wheels from $WHEELS"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl || exit 1
fi

step "build (SAMUNET_CUDA=ON, arch ${SAMUNET_CUDA_ARCHS:-90})"
SAMUNET_CUDA=ON SAMUNET_CUDA_ARCHS="${SAMUNET_CUDA_ARCHS:-90}" \
  python3 -m pip install -q --no-build-isolation --no-deps --no-cache-dir --target "$SITE" . \
  >"$OUT_DIR/build.log" 2>&1 || { tail -40 "$OUT_DIR/build.log"; exit 1; }
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import sam_unet._C as c; print(c.build_info())" || exit 1

step "GPU tests"
python3 -m pytest -q -p no:cacheprovider -m "gpu or tensorrt" --timeout 240 tests \
  2>&1 | tee "$OUT_DIR/gpu_tests.log" | tail -25
TEST_RC=${PIPESTATUS[0]}

step "benchmarks"
python3 -m sam_unet.cli bench --device cuda --size full -o "$OUT_DIR/bench" --quiet \
  >"$OUT_DIR/bench.log" 2>&1
BENCH_RC=$?
[ $BENCH_RC -ne 0 ] && tail -40 "$OUT_DIR/bench.log"

step "summary"
python3 - "$OUT_DIR/bench/bench.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except OSError:
    sys.exit("no bench.json")
print("device:", r["env"].get("device_name"), "capability", r["env"].get("capability"))
for c in r.get("ceilings", []):
    print(f"  ceiling {c['what']:<28} {c.get('tflops', 0):8.1f} TFLOP/s {c.get('gbps', 0):8.0f} GB/s")
for m in r.get("model", []):
    print(f"  model {m['variant']} {m['backend']:<15} {m['precision']} b{m['batch']:<3} "
          f"{m['slices_per_s']:9.0f} slices/s {m['tflops']:6.1f} TFLOP/s")
for o in r.get("ops", []):
    print(f"  {o['op']:<11} {o['path']:<32} {o['seconds'] * 1e3:9.3f} ms {o['gbps']:8.1f} GB/s")
for p in r.get("pipeline", []):
    print(f"  {p['what']:<42} {p['slices_per_s']:9.0f} slices/s peak {p['peak_device_mib']:.0f} MiB")
PY
echo "tests rc=$TEST_RC bench rc=$BENCH_RC total ${SECONDS}s"
exit $(( TEST_RC != 0 || BENCH_RC != 0 ))
