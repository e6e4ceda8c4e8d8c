"""``sam-unet export onnx``: a checkpoint -> ONNX (opset >= 17, dynamic batch, metadata);
``EXAMPLES`` below (shown by ``--help``).

The file records how the model must be fed (``sam_unet.model_info``: variant, normalization,
window, slice axis, prompt mode, label names) from the checkpoint; ``--normalize``, ``--window``,
``--axis``, ``--prompt-mode`` and ``--label`` set them where the checkpoint does not say (a
third-party checkpoint) or says wrong.
"""

from __future__ import annotations

import argparse
import sys
import time

EXAMPLES = """\
  sam-unet export onnx --checkpoint runs/mni/best.pt -o model.onnx --verify
  sam-unet export onnx --checkpoint runs/mni/best.pt -o model.onnx --split   + encoder/decoder
  sam-unet export onnx --checkpoint published.pt --prompt-mode box --label 1=liver -o model.onnx
  sam-unet export onnx --random-init --variant tiny -o tiny.onnx     testing only"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["onnx"], help="output format")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="SAM-UNet checkpoint (.pt)")
    src.add_argument(
        "--random-init",
        action="store_true",
        help="export a randomly initialised model (TESTING ONLY: its masks are meaningless)",
    )
    parser.add_argument("--variant", default=None,
                        help="res34 | res50 | tiny (default: from the checkpoint; res34 with "
                             "--random-init)")
    parser.add_argument("-o", "--output", required=True, help="output .onnx file")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.add_argument("--exporter", default="auto", choices=["auto", "torchscript", "dynamo"],
                        help="torch.onnx exporter (auto: torchscript, then dynamo if that fails)")
    parser.add_argument("--verify", action="store_true",
                        help="run the graph in ONNX Runtime (CPU) on random inputs and fail if "
                             "the logits differ from PyTorch by more than --rtol")
    parser.add_argument("--rtol", type=float, default=1e-4,
                        help="relative error limit for --verify (max|diff|/max|ref|)")
    parser.add_argument("--verify-batches", default="1,3",
                        help="batch sizes --verify runs (comma separated)")
    parser.add_argument("--split", action="store_true",
                        help="also write NAME.encoder.onnx and NAME.decoder.onnx beside the "
                             "file (SAM's deployment split: sessions and propagation decode a "
                             "new box without running the encoder again)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-init and --verify")
    info = parser.add_argument_group("model info (default: what the checkpoint records)")
    info.add_argument("--normalize", choices=["slice-minmax", "window"],
                      help="intensity normalization the model was trained with")
    info.add_argument("--window", nargs=2, type=float, metavar=("LO", "HI"),
                      help="intensity window the model was trained with")
    info.add_argument("--axis", type=int, choices=[-3, -2, -1, 0, 1, 2],
                      help="slicing axis of the canonical volume the model was trained on")
    info.add_argument("--prompt-mode", choices=["full-slice", "box", "both"],
                      help="full-slice (runs without prompts), box (needs a box) or both")
    info.add_argument("--label", action="append", default=[], metavar="VALUE=NAME",
                      help="a label value and the structure it names (repeatable)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ValueError(f"--verify-batches {text!r}: expected positive integers like 1,3,8")
    return values


def _label_names(items: list[str]) -> dict[int, str] | None:
    if not items:
        return None
    out: dict[int, str] = {}
    for item in items:
        value, sep, name = item.partition("=")
        try:
            label = int(value)
        except ValueError:
            label = 0
        if not sep or label < 1 or not name.strip():
            raise ValueError(f"--label {item!r}: expected VALUE=NAME with an integer VALUE >= 1, "
                             "e.g. --label 1=liver")
        out[label] = name.strip()
    return out


def model_info_with_overrides(info, args: argparse.Namespace):
    """``info`` (a ModelInfo) with the fields given on the command line replaced."""
    import dataclasses

    changes = {}
    if args.normalize is not None:
        changes["normalize"] = args.normalize
    if args.window is not None:
        changes["window"] = (float(args.window[0]), float(args.window[1]))
    elif args.normalize == "slice-minmax":
        changes["window"] = None
    if args.axis is not None:
        changes["axis"] = args.axis
    if args.prompt_mode is not None:
        changes["prompt_mode"] = args.prompt_mode
    labels = _label_names(args.label)
    if labels is not None:
        changes["label_names"] = labels
    return dataclasses.replace(info, **changes) if changes else info


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from sam_unet.export.onnx import export_onnx, sha256_file, verify_onnx
    from sam_unet.model_info import ModelInfo

    if args.opset < 17:
        raise ValueError(f"--opset {args.opset}: must be >= 17 (LayerNormalization)")
    batches = _batches(args.verify_batches)
    _label_names(args.label)  # a bad --label fails before anything heavy
    if args.checkpoint and Path(args.output).resolve() == Path(args.checkpoint).resolve():
        raise ValueError(f"-o {args.output}: that is the input checkpoint; choose another name")
    sha = None
    if args.random_init:
        from sam_unet.models.build import build_model

        torch.manual_seed(args.seed)
        variant = args.variant or "res34"
        model = build_model(variant)
        info = ModelInfo(variant=variant)
        print(f"warning: exporting a RANDOMLY INITIALISED {variant} model (--random-init); "
              "its outputs are meaningless", file=sys.stderr)
    else:
        ckpt = Path(args.checkpoint)
        if not ckpt.is_file():
            raise FileNotFoundError(f"{ckpt}: checkpoint not found")
        from sam_unet.checkpoints import load_model_with_report

        model, report = load_model_with_report(ckpt, variant=args.variant, map_location="cpu")
        info = report.model_info or ModelInfo(variant=model.variant)
        if args.variant is not None and info.variant != args.variant:
            import dataclasses

            info = dataclasses.replace(info, variant=args.variant)
        print(f"{ckpt}: {report.integrity}", file=sys.stderr)
        sha = sha256_file(ckpt)
    info = model_info_with_overrides(info, args)
    model = model.eval().float()
    t0 = time.perf_counter()
    out = export_onnx(model, args.output, checkpoint_sha256=sha, opset=args.opset,
                      exporter=args.exporter, model_info=info)
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} ({size_mb:.1f} MB, {getattr(model, 'variant', '?')}) in "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"model info: {info.to_json()}")
    if args.verify:
        try:
            report = verify_onnx(model, out, batch_sizes=batches, rtol=args.rtol, seed=args.seed)
        except Exception:
            # A graph that fails its check is not left behind as if it were good.
            out.unlink(missing_ok=True)
            raise
        print(f"verify: {report} -- OK")
    if args.split:
        from sam_unet.export.onnx_split import export_split_onnx, verify_split_onnx

        t0 = time.perf_counter()
        enc, dec = export_split_onnx(model, out, opset=args.opset, exporter=args.exporter)
        print(f"wrote {enc} and {dec} in {time.perf_counter() - t0:.1f} s")
        if args.verify:
            try:
                split_report = verify_split_onnx(model, out, batch_sizes=batches,
                                                 rtol=args.rtol, seed=args.seed)
            except Exception:
                enc.unlink(missing_ok=True)
                dec.unlink(missing_ok=True)
                raise
            print(f"verify: {split_report} -- OK")
    return 0
