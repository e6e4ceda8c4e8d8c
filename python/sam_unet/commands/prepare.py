"""``sam-unet prepare``: NIfTI (image, label) volumes -> 2D training folders (published layout).

``EXAMPLES`` below (shown by ``--help``).
"""

from __future__ import annotations

import argparse
import json
import sys

EXAMPLES = """\
  sam-unet prepare --image t1.nii.gz --label wm.nii.gz --label-threshold 127.5 \\
      --test-slices every:5 -o data/mni
  sam-unet prepare --images-dir imagesTr --labels-dir labelsTr --modality ct -o data/ct
  sam-unet prepare --sammed2d-root SAMed2Dv1 -o data/sammed2d    split an SA-Med2D release"""

# Kept here so that --help does not import numpy (sam_unet.data.prepare holds the same values).
DEFAULT_MIN_FOREGROUND_RATIO = 100 / 65536
DEFAULT_MAX_LABELS = 128


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("inputs")
    src.add_argument("--image", action="append", default=[], metavar="NIFTI",
                     help="image volume (repeat, paired in order with --label)")
    src.add_argument("--label", action="append", default=[], metavar="NIFTI",
                     help="label volume (repeat)")
    src.add_argument("--images-dir", help="folder of image volumes (paired by name)")
    src.add_argument("--labels-dir", help="folder of label volumes")
    src.add_argument("--sammed2d-root", metavar="DIR",
                     help="split an SA-Med2D-16M style release per modality instead")
    src.add_argument("--sammed2d-json", default="SAMed2D_v1.json",
                     help="its image -> masks JSON (relative to the root)")
    src.add_argument("--link", choices=("symlink", "hardlink", "copy"), default="symlink",
                     help="how SA-Med2D files are placed")
    src.add_argument("--modalities", help="comma-separated SA-Med2D modalities to keep")
    parser.add_argument("-o", "--out", required=True, help="output dataset folder")
    parser.add_argument("--modality", default="mr", help="modality tag in file names")
    parser.add_argument("--dataset",
                        help="dataset name in file names (default: the output folder's name)")
    parser.add_argument("--axis", type=int, default=-1,
                        help="slice axis after canonical (RAS) reorientation: 0 sagittal, "
                             "1 coronal, 2 or -1 axial")
    parser.add_argument("--normalize", choices=("slice-minmax", "window"), default="slice-minmax",
                        help="8-bit intensity mode, as the engine")
    parser.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"),
                        help="intensity window (clip), e.g. -160 240 for abdominal CT")
    parser.add_argument("--min-foreground-ratio", type=float, default=DEFAULT_MIN_FOREGROUND_RATIO,
                        help="a mask is kept when its area exceeds this fraction of the slice "
                             "(default: 100/65536, 100 pixels of a 256x256 slice)")
    parser.add_argument("--components", action="store_true",
                        help="one mask per connected component (default: per label value)")
    parser.add_argument("--labels", help="comma-separated label values to keep (default: all)")
    parser.add_argument("--label-threshold", type=float, metavar="T",
                        help="binarise the label volume as value > T (probability maps, e.g. "
                             "0.5 for 0..1 or 127.5 for 0..255)")
    parser.add_argument("--max-labels", type=int, default=DEFAULT_MAX_LABELS, metavar="N",
                        help="refuse a label volume with more than N distinct values, as a "
                             "probability map")
    parser.add_argument("--keep-empty", action="store_true",
                        help="keep every slice, writing empty masks too (full-slice prompts)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="fraction of VOLUMES held out for test")
    parser.add_argument("--test-volumes",
                        help="comma-separated volume names for test (default: drawn by "
                             "--test-fraction)")
    parser.add_argument("--test-slices", metavar="SPEC",
                        help="one volume only: hold out slices 'every:N[:OFFSET]' or "
                             "'range:A:B' (NOT a patient-level split)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test draw")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.sammed2d_root:
        from sam_unet.data.sammed2d import split_sammed2d

        summary = split_sammed2d(
            args.sammed2d_root, args.out, mapping=args.sammed2d_json,
            test_fraction=args.test_fraction, seed=args.seed, link=args.link,
            modalities=args.modalities.split(",") if args.modalities else None)
        print(json.dumps(summary, indent=1))
        return 0

    from sam_unet.data.prepare import find_pairs, prepare_dataset

    options = options_from_args(args)
    if len(args.image) != len(args.label):
        raise ValueError(f"{len(args.image)} --image but {len(args.label)} --label: give them "
                         "in pairs")
    pairs = list(zip(args.image, args.label, strict=True))
    if args.images_dir or args.labels_dir:
        if not (args.images_dir and args.labels_dir):
            raise ValueError("--images-dir and --labels-dir go together")
        pairs += find_pairs(args.images_dir, args.labels_dir)
    if not pairs:
        raise ValueError("no inputs: give --image/--label pairs, --images-dir/--labels-dir or "
                         "--sammed2d-root")
    for img, lab in pairs:
        for p in (img, lab):
            if not Path(p).exists():
                raise FileNotFoundError(f"{p}: no such file")
    manifest = prepare_dataset(pairs, args.out, options)
    if not args.quiet:
        c = manifest["counts"]
        print(f"wrote {args.out}: {c['train_images']} train images ({c['train_masks']} masks), "
              f"{c['test_images']} test images ({c['test_masks']} masks) from "
              f"{c['volumes']} volume(s); split: {manifest['split']['method']}", file=sys.stderr)
        if not manifest["split"].get("patient_level", True):
            print("note: slice-level split of one volume, NOT a patient-level evaluation",
                  file=sys.stderr)
    return 0


def _csv(text: str | None, option: str, kind=str) -> tuple | None:
    if not text:
        return None
    try:
        return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected comma-separated integers, e.g. 1,2"
                         ) from None


def options_from_args(args: argparse.Namespace):
    """The :class:`~sam_unet.data.prepare.PrepareOptions` the command line asks for."""
    from sam_unet.data.prepare import PrepareOptions

    return PrepareOptions(
        modality=args.modality, dataset=args.dataset, axis=args.axis,
        normalize=args.normalize, window=tuple(args.window) if args.window else None,
        min_foreground_ratio=args.min_foreground_ratio, components=args.components,
        labels=_csv(args.labels, "--labels", int), label_threshold=args.label_threshold,
        max_labels=args.max_labels, keep_empty=args.keep_empty,
        test_fraction=args.test_fraction, test_volumes=_csv(args.test_volumes, "--test-volumes"),
        test_slices=args.test_slices, seed=args.seed, overwrite=args.overwrite,
        quiet=args.quiet)
