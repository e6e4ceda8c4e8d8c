"""``sam-unet build-engine``: ONNX -> TensorRT (FP16) engine, with profiles and caches
(``EXAMPLES`` below, shown by ``--help``).

Without ``-o`` the engine goes to the engine cache (``--cache-dir``, ``$SAM_UNET_ENGINE_CACHE``
or ``~/.cache/sam_unet/engines``), named by a key over the ONNX sha256, GPU name and compute
capability, TensorRT version, profiles and precision; an up-to-date engine is reused.
"""

from __future__ import annotations

import argparse
import time

EXAMPLES = """\
  sam-unet build-engine model.onnx -o model.engine --timing-cache trt.cache
  sam-unet build-engine model.onnx                 into the engine cache, reused when up to date
  sam-unet segment -i scans/ -o masks/ --engine model.engine"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("onnx", help="exported ONNX model (sam-unet export onnx)")
    parser.add_argument("-o", "--output", default=None,
                        help="engine file; a JSON sidecar <engine>.json records what it was built "
                             "for (default: the engine cache)")
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                        help="FP16 engine with normalisation/softmax/reduce layers kept in FP32; "
                             "--no-fp16 builds FP32")
    parser.add_argument("--profiles", default="1:1:1,1:32:64",
                        help="optimisation profiles MIN:OPT:MAX,... over the batch (the default "
                             "serves one slice at a time and whole volumes)")
    parser.add_argument("--timing-cache", default=None,
                        help="timing cache file, read if present and written back")
    parser.add_argument("--cache-dir", default=None,
                        help="engine cache folder, without -o (default: "
                             "$SAM_UNET_ENGINE_CACHE, else ~/.cache/sam_unet/engines)")
    parser.add_argument("--workspace-gib", type=float, default=None,
                        help="builder workspace limit in GiB (default: TensorRT's)")
    parser.add_argument("--fp32-layers", default="NORMALIZATION,SOFTMAX,REDUCE",
                        help="TensorRT layer types kept in FP32 in an FP16 engine "
                             "(comma separated LayerType names; '' for none)")
    parser.add_argument("--fp32-name", action="append", default=[], metavar="REGEX",
                        help="also keep layers whose name matches REGEX in FP32 (repeatable)")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--verbose", action="store_true", help="TensorRT verbose log")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sam_unet.export.engine_cache import EngineCache, build_or_reuse
    from sam_unet.runtime.tensorrt_engine import import_tensorrt
    from sam_unet.runtime.tensorrt_profiles import format_profiles, parse_profiles
    from sam_unet.runtime.tensorrt_sidecar import sidecar_path

    profiles = parse_profiles(args.profiles)  # bad specs fail before anything heavy
    fp32_layers = tuple(t.strip().upper() for t in args.fp32_layers.split(",") if t.strip())
    onnx_path = Path(args.onnx)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file")
    import_tensorrt()  # clear error + install hint when TensorRT is absent
    cache = EngineCache(Path(args.cache_dir)) if args.cache_dir else None
    t0 = time.perf_counter()
    path, spec, built = build_or_reuse(
        onnx_path,
        args.output,
        cache=cache,
        force=args.force,
        device=args.device,
        fp16=args.fp16,
        profiles=profiles,
        timing_cache=args.timing_cache,
        workspace_gib=args.workspace_gib,
        fp32_layers=fp32_layers,
        fp32_name_patterns=tuple(args.fp32_name),
        verbose=args.verbose,
    )
    from sam_unet.export.tensorrt_split import build_split_engines

    # NAME.encoder.onnx / NAME.decoder.onnx beside the file (sam-unet export --split): their
    # engines go beside this one, for sessions and propagation (decoder-only calls)
    split = build_split_engines(
        onnx_path, path, force=args.force, device=args.device, fp16=args.fp16,
        profiles=profiles, timing_cache=args.timing_cache, workspace_gib=args.workspace_gib,
        fp32_layers=fp32_layers, fp32_name_patterns=tuple(args.fp32_name), verbose=args.verbose)
    what = "built" if built else "up to date, reused"
    print(f"{what}: {path} ({'fp16' if spec.fp16 else 'fp32'}, profiles "
          f"{format_profiles(spec.profiles)}, {spec.gpu_name} sm_"
          f"{spec.compute_capability.replace('.', '')}, TensorRT {spec.tensorrt_version}) "
          f"in {time.perf_counter() - t0:.1f} s; sidecar {sidecar_path(path)}")
    if split is not None:
        print(f"encoder and decoder engines: {split[0]}, {split[1]}")
    return 0
