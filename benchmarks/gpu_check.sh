#!/usr/bin/env bash
# One prepared check for a GPU machine with no network: build the extension with CUDA, require
# the native module to see the device, run every GPU test strictly (a skipped gpu test fails),
# compare the CUDA engine's masks with the CPU engine's, run the benchmark suite, and print the
# performance targets last. Every step has a time limit; the whole stays under 8 min.
#
# Needs on that machine: python3 with torch (CUDA), pybind11, scikit-build-core, cmake, ninja,
# nvcc; everything else comes as wheels from a local folder (default .whl/, see README):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl nibabel==5.4.2
# (add a cupy-cuda12x wheel the same way: the CuPy volume tests need it; without it they skip,
# and a skip fails the check.)
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]    exit status 0 only when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT_DIR="${1:-${OUT:-$PWD/gpu-check-out}}"
mkdir -p "$OUT_DIR"
WHEELS="${SAMUNET_WHEELS:-.whl}"
SITE=/tmp/sam_unet_site
export PYTHONUNBUFFERED=1
FAILED=()

step() { printf '\n=== %s (%ss)\n' "$1" "$SECONDS"; }
# check NAME RC: record a failed step (124 = its time limit was reached)
check() {
  if [ "$2" -eq 124 ]; then FAILED+=("$1 (time limit)")
  elif [ "$2" -ne 0 ]; then FAILED+=("$1 (exit $2)"); fi
}

step "machine"
timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
check "nvidia-smi" $?
timeout 30 python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'devices', torch.cuda.device_count())"
check "torch" $?

if compgen -G "$WHEELS/*.whl" >/dev/null; then
  step "wheels from $WHEELS"
  timeout 60 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "$WHEELS"/*.whl
  check "wheels" $?
fi

step "build (SAMUNET_CUDA=ON, arch ${SAMUNET_CUDA_ARCHS:-90})"
SAMUNET_CUDA=ON SAMUNET_CUDA_ARCHS="${SAMUNET_CUDA_ARCHS:-90}" timeout 150 \
  python3 -m pip install -q --no-build-isolation --no-deps --no-cache-dir --target "$SITE" . \
  >"$OUT_DIR/build.log" 2>&1
RC=$?
if [ $RC -ne 0 ]; then tail -40 "$OUT_DIR/build.log"; check "build" $RC; fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

step "native module sees the device"
timeout 30 python3 - <<'PY'
import sys
import sam_unet._C as c
info = c.build_info()
print(info)
if not info.get("with_cuda"):
    sys.exit("sam_unet._C was built without CUDA")
if int(info.get("device_count", 0)) < 1:
    sys.exit("sam_unet._C sees no CUDA device (device_count 0): driver/runtime mismatch?")
PY
RC=$?
check "native device" $RC
if [ $RC -ne 0 ]; then
  printf '\nFAILED: %s\n' "${FAILED[*]}"
  exit 1  # every GPU test would skip or fail: stop here
fi

step "GPU tests (strict: a skipped gpu test fails)"
SAMUNET_REQUIRE_GPU=1 timeout 130 python3 -m pytest -q -rs -s -p no:cacheprovider \
  -m "gpu or tensorrt" tests >"$OUT_DIR/gpu_tests.log" 2>&1
RC=$?
grep -E '^(FAILED|ERROR|SKIPPED)|gpu test skipped under' "$OUT_DIR/gpu_tests.log" | head -40
tail -3 "$OUT_DIR/gpu_tests.log"
check "GPU tests" $RC

step "host side: slab gather/scatter vs memcpy (this machine's CPU)"
timeout 30 python3 benchmarks/bench_ops.py --slabs --runs 5 --json "$OUT_DIR/slabs.json" \
  2>&1 | tail -12
check "slab copies" $?

step "benchmarks"
timeout 150 python3 -m sam_unet.cli bench --device cuda --size full --runs 5 \
  -o "$OUT_DIR/bench" --quiet >"$OUT_DIR/bench.log" 2>&1
RC=$?
[ $RC -ne 0 ] && tail -40 "$OUT_DIR/bench.log"
check "benchmarks" $RC

step "summary"
if [ ${#FAILED[@]} -ne 0 ]; then
  printf 'FAILED: %s (after %ss)\n' "${FAILED[*]}" "$SECONDS"
else
  echo "every step passed (after ${SECONDS}s)"
fi
echo "CUDA engine vs CPU engine (tests/test_engine_cuda.py) and fp16/bf16 fidelity:"
grep -E '^\[' "$OUT_DIR/gpu_tests.log" | sed 's/^/  /'
timeout 20 python3 - "$OUT_DIR/bench/bench.json" <<'PY'
import json
import sys

try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    sys.exit("no bench.json: the benchmarks did not finish")
print("device:", r["env"].get("device_name"), "capability", r["env"].get("capability"))
for c in r.get("ceilings", []):
    print(f"  ceiling {c['what']:<28} {c.get('tflops', 0):8.1f} TFLOP/s {c.get('gbps', 0):8.0f} GB/s")
for m in r.get("model", []):
    print(f"  model {m['variant']} {m['backend']:<15} {m['precision']} b{m['batch']:<3} "
          f"{m['slices_per_s']:9.0f} slices/s {m['tflops']:6.1f} TFLOP/s")
for o in r.get("ops", []):
    print(f"  {o['op']:<11} {o['path']:<32} {o['seconds'] * 1e3:9.3f} ms {o['gbps']:8.1f} GB/s")
for p in r.get("pipeline", []):
    stages = ", ".join(f"{k} {v * 1e3:.0f}" for k, v in p.get("stages", {}).items())
    print(f"  {p['what']:<42} {p['slices_per_s']:9.0f} slices/s peak "
          f"{p['peak_device_mib']:.0f} MiB" + (f" (ms: {stages})" if stages else ""))

# the performance targets, last
model = [m for m in r.get("model", []) if m["variant"] == "res34" and m["backend"] == "torch"
         and m["precision"] == "fp16" and m["batch"] == 64]
e2e = [p for p in r.get("pipeline", []) if p["what"].startswith("volume 512x512x300 int16")]
mem = [p for p in r.get("pipeline", []) if p["what"].startswith("peak memory 512x512x1000")]
rows = [
    ("model only, res34 fp16 batch 64", "slices/s", ">=", 3000,
     model[0]["slices_per_s"] if model else None),
    ("end to end 512x512x300 int16 host->host", "slices/s", ">=", 2500,
     e2e[0]["slices_per_s"] if e2e else None),
    ("peak GPU memory 512x512x1000", "MiB", "<", 4096,
     mem[0]["peak_device_mib"] if mem else None),
]
print(f"\nperformance targets on {r['env'].get('device_name')}:")
for what, unit, op, goal, got in rows:
    if got is None:
        verdict, shown = "NOT MEASURED", "-"
    else:
        ok = got >= goal if op == ">=" else got < goal
        verdict, shown = ("met" if ok else "MISSED"), f"{got:,.0f}"
    print(f"  {what:<42} {op} {goal:>6,} {unit:<9} measured {shown:>9}  {verdict}")
PY
RC=$?
[ ${#FAILED[@]} -eq 0 ] && [ $RC -eq 0 ]
