"""The ``sam-unet`` command line: a table of sub-commands, each living in its own module.

Every command module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and keeps its
heavy imports (torch, onnx) inside ``run`` so that ``sam-unet --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import warnings

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("sam_unet.commands.demo", "segment the bundled MNI152 MRI end to end"),
    "prepare": ("sam_unet.commands.prepare", "NIfTI volumes -> 2D training folders"),
    "train": ("sam_unet.commands.train", "train SAM-UNet (one process or torchrun DDP)"),
    "evaluate": ("sam_unet.commands.evaluate", "Dice/IoU of a checkpoint on test folders"),
    "export": ("sam_unet.commands.export", "export a checkpoint to ONNX"),
    "build-engine": ("sam_unet.commands.build_engine", "ONNX -> TensorRT FP16 engine"),
    "segment": ("sam_unet.commands.segment", "segment NIfTI volumes into label NIfTI files"),
    "bench": ("sam_unet.commands.bench", "benchmark the model, the ops and the pipeline"),
    "info": ("sam_unet.commands.info", "print the build and runtime environment"),
}


def build_parser() -> argparse.ArgumentParser:
    from sam_unet import __version__

    parser = argparse.ArgumentParser(prog="sam-unet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sam-unet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # command not available in this build
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        with _one_line_warnings(args):
            return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: one line, no traceback
        if getattr(args, "debug", False):
            raise
        print(f"sam-unet {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _one_line_warnings(args: argparse.Namespace):
    """Warnings reach users as ``sam-unet CMD: warning: ...`` lines (no file:line source
    echo); ``--debug`` keeps Python's format."""
    if getattr(args, "debug", False):
        yield
        return
    saved = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"sam-unet {args.command}: warning: {text}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message (whitespace collapsed), led by its class name
    unless it is one of the plain user-error types whose message says everything."""
    text = " ".join(str(exc).split())
    if isinstance(exc, ValueError | FileNotFoundError | RuntimeError | OSError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
