"""The ``sam-unet`` command line: a table of sub-commands, each living in its own module.

Every command module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and keeps its
heavy imports (torch, onnx) inside ``run`` so that ``sam-unet --help`` stays fast. Every parser
uses :class:`HelpFormatter`, so ``--help`` shows each option's default.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import warnings

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("sam_unet.commands.demo",
             "try it: segment white matter in the bundled brain MRI (CPU, no download)"),
    "segment": ("sam_unet.commands.segment",
                "segment a volume file or a folder of them into label maps"),
    "prepare": ("sam_unet.commands.prepare",
                "turn your images and label volumes into a training dataset"),
    "train": ("sam_unet.commands.train",
              "train a model on a prepared dataset (CPU, one GPU or torchrun)"),
    "evaluate": ("sam_unet.commands.evaluate",
                 "measure Dice and IoU of a trained model on a dataset's test split"),
    "export": ("sam_unet.commands.export", "export a trained model to ONNX for deployment"),
    "build-engine": ("sam_unet.commands.build_engine",
                     "build a TensorRT engine from an ONNX file (NVIDIA GPU)"),
    "bench": ("sam_unet.commands.bench", "measure speed: the model, the ops, whole volumes"),
    "info": ("sam_unet.commands.info",
             "show what this install can use (CUDA, ONNX Runtime, TensorRT)"),
}

DESCRIPTION = """\
Segment structures in CT, MRI and PET volumes with SAM-UNet, slice by slice, on the CPU or a GPU.
Train a model for your own structure, export it, and run it on NIfTI, NRRD/MetaImage or DICOM
scans, one file or a whole folder."""

EPILOG = """\
examples:
  sam-unet demo                                      try it on the bundled brain MRI
  sam-unet segment -i scans/ -o masks/ --onnx model.onnx
                                                     one <name>_seg.nii.gz per scan
  sam-unet prepare --image ct.nii.gz --label liver.nii.gz -o data/liver
  sam-unet train --data data/liver -o runs/liver
  sam-unet COMMAND --help                            the options of one command"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` keeps the line breaks of descriptions and examples, and ends each option's
    help with "(default: X)" unless its default is None, a flag's False/True, an empty list or
    already spelled out in the help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("(default" in text or not action.option_strings or default is None
                or default is argparse.SUPPRESS or default == []
                or (action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction))):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    from sam_unet import __version__

    parser = argparse.ArgumentParser(prog="sam-unet", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"sam-unet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # command not available in this build
        p = sub.add_parser(name, help=help_text, description=_description(module, help_text),
                           formatter_class=HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _description(module, help_text: str) -> str:
    """A command's ``--help`` text: its one-line help, then its module's ``EXAMPLES``."""
    examples = getattr(module, "EXAMPLES", "").strip("\n")
    text = f"{help_text[0].upper()}{help_text[1:]}."
    return f"{text}\n\nexamples:\n{examples}" if examples else text


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
        if getattr(args, "debug", False):
            raise
        again = " (finished outputs are kept; rerun with --continue for the rest)" \
            if getattr(args, "resume", None) is not None else ""
        print(f"sam-unet {args.command}: interrupted{again}", file=sys.stderr)
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
