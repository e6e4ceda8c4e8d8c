"""``sam-unet segment``: volume file(s) in, uint8 label NIfTI file(s) out.

Order of work: plan the outputs and refuse any that resolves to an input, skip complete outputs
(``--continue``), create the output folder and sweep leftovers of killed runs, then load the
model and segment file by file. Every user error is one line
``sam-unet segment: error: <input>: <problem>; <fix>`` (``--debug`` shows the traceback); a
folder ends with ``segmented N, skipped K (already done), failed F``.

Under torchrun (RANK / WORLD_SIZE set) the file list is sharded by rank, so several GPUs or
nodes share one input folder; each rank uses the GPU of its LOCAL_RANK when ``--device cuda``.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

PROG = "sam-unet segment"

EXAMPLES = """\
  sam-unet segment -i ct.nii.gz -o masks/ --onnx model.onnx       masks/ct_seg.nii.gz
  sam-unet segment -i scans/ -o masks/ --checkpoint best.pt --continue
  sam-unet segment -i ct.nii.gz -o ct_liver.nii.gz --onnx model.onnx \\
      --box 100 80 20 180 160 60                         a 3D box prompt, voxels of the file
  sam-unet segment -i t1.nii.gz -o wm.nii.gz --checkpoint best.pt --seed-box 100 40 50 160 190
                                                       one box on slice 100, followed in 3D"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True,
                        help="a .nii/.nii.gz file (NIfTI-1 or -2), a .nrrd/.nhdr/.mha/.mhd "
                             "file (needs the sitk extra), a DICOM series (a folder, a zip or "
                             "one multi-frame file; slices ordered by position; gantry tilt "
                             "kept as a sheared affine, missing slices refused), or a folder "
                             "of any of these")
    parser.add_argument("-o", "--output", required=True,
                        help="for a folder of inputs: an output folder (created if missing; not "
                             "the input folder) receiving <name>_seg.nii.gz per input; for one "
                             "input: the output file if it ends in .nii/.nii.gz, else a folder "
                             "(created if missing) receiving <name>_seg.nii.gz. An output never "
                             "replaces an input")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="SAM-UNet checkpoint (.pt)")
    src.add_argument("--onnx", help="exported ONNX model")
    src.add_argument("--engine", help="TensorRT engine file")
    parser.add_argument("--backend", default="auto",
                        choices=["auto", "torch", "onnxruntime", "tensorrt"],
                        help="inference backend (default: auto: TensorRT for --onnx on a GPU "
                             "with TensorRT, else ONNX Runtime for --onnx, torch for "
                             "--checkpoint)")
    parser.add_argument("--variant", default=None,
                        help="model variant if the checkpoint lacks it (default: the "
                             "checkpoint's); with --onnx, the variant the file must hold")
    parser.add_argument("--force", action="store_true",
                        help="use an ONNX file that lacks SAM-UNet model metadata (or carries "
                             "another model's) anyway, with the default settings")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda when torch sees one, else cpu)")
    parser.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"],
                        help="model precision (default: fp16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--window", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                        help="intensity window (default: the model file's, else none)")
    parser.add_argument("--normalize", default=None, choices=["slice-minmax", "window"],
                        help="intensity to 8 bits: per-slice min-max (the published recipe) or "
                             "the fixed --window (default: the model file's, else "
                             "slice-minmax)")
    parser.add_argument("--axis", type=int, default=None, choices=[-3, -2, -1, 0, 1, 2],
                        help="slicing axis of the volume reoriented to RAS: 0 sagittal, "
                             "1 coronal, 2 or -1 axial (default: the model file's, else -1)")
    parser.add_argument("--box", nargs=6, type=float, default=None,
                        metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"),
                        help="3D box prompt in voxel indices of each input FILE's own voxel "
                             "frame (its array axes 0, 1, 2 as stored, whatever its "
                             "orientation; corners inclusive), mapped through the "
                             "reorientation; slices outside it along the slicing axis stay "
                             "empty (default: none, full-slice prompts)")
    parser.add_argument("--seed-box", nargs=5, type=float, default=None,
                        metavar=("Z", "X0", "Y0", "X1", "Y1"),
                        help="propagation: one 2D box on slice Z (Z along the FILE axis that "
                             "becomes the slicing axis; the box over the two other file axes "
                             "in increasing order, corners inclusive); the structure is followed "
                             "slice by slice in both directions until it ends (default: none)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="slices per model call (default: 32 on CUDA, 8 on the CPU)")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="skip inputs whose output exists and is complete (a readable label "
                             "map of the input's shape and affine)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar and no engine line")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    from sam_unet.runtime.clinical_outputs import add_cli_arguments

    add_cli_arguments(parser)  # --series, --prompts, --per-structure, --seg, --statistics, ...


def _rank() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


# Errors whose message is the whole story; any other exception also shows its class.
_PLAIN = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


MODEL_FIX = ("check that it is a SAM-UNet checkpoint (.pt), an ONNX file made by `sam-unet "
             "export` or a TensorRT engine built on this machine")


def _fix_for(exc: BaseException, text: str, default: str = "") -> str:
    code = getattr(exc, "errno", None)
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return "use a smaller --batch-size or free memory"
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return "free space on the output disk (or raise the file size limit), then rerun " \
               "with --continue"
    if isinstance(exc, PermissionError):
        return "check the permissions of the file and folder"
    if "nan" in text.lower().split() or "nan/inf" in text.lower() or "nan or inf" in text.lower():
        return "replace the NaN/Inf voxels (e.g. by 0) and run again"
    return default or "rerun with --debug for the full traceback"


def error_line(subject: object, exc: BaseException, *, what: str = "", fix: str = "") -> str:
    """``sam-unet segment: error: <subject>: [what: ]<problem>; <fix>`` on one line."""
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.strerror and not text.startswith(str(subject)):
        text = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    if text.startswith(str(subject)):  # the message names the subject itself: once is enough
        text = text[len(str(subject)):].lstrip(": ")
        text = text[3:] if text.startswith("is ") else text
    if not isinstance(exc, _PLAIN) or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if "; " not in text:
        text = f"{text}; {_fix_for(exc, text, fix)}"
    return f"{PROG}: error: {subject}: {what}{text}"


def _say(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def _load_engine(args: argparse.Namespace, device: str | None):
    from sam_unet.runtime.engine import Engine

    if args.checkpoint:
        return Engine.from_checkpoint(args.checkpoint, backend=args.backend, device=device,
                                      precision=args.precision, batch_size=args.batch_size,
                                      variant=args.variant)
    if args.onnx:
        return Engine.from_onnx(args.onnx, backend=args.backend, device=device,
                                precision=args.precision, batch_size=args.batch_size,
                                variant=args.variant, force=args.force)
    return Engine.from_engine_file(args.engine, device=device, batch_size=args.batch_size)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sam_unet.atomic import sweep_stale_temps
    from sam_unet.io.inputs import is_input
    from sam_unet.runtime.clinical_outputs import add_outputs, read_prompts, requested_kinds
    from sam_unet.runtime.files import run_job, shard
    from sam_unet.runtime.outputs import output_is_complete, plan_jobs, refuse_overwriting_inputs

    started = time.time()
    rank, world, local_rank = _rank()
    device = args.device
    if device == "cuda" and world > 1:
        device = f"cuda:{local_rank}"
    if args.batch_size is not None and args.batch_size < 1:
        print(f"{PROG}: error: --batch-size {args.batch_size}: must be >= 1; give a positive "
              "number of slices", file=sys.stderr)
        return 2

    try:
        seed = _seed(args)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    # 1. outputs planned and checked against the inputs before anything is read or written
    in_path = Path(args.input)
    folder_input = in_path.is_dir() and not is_input(in_path)
    try:
        jobs = plan_jobs(in_path, args.output)
        structures = read_prompts(args)
        add_outputs(jobs, requested_kinds(args))
        refuse_overwriting_inputs(jobs, input_folder=in_path if folder_input else None)
    except Exception as exc:  # noqa: BLE001 - one line at the CLI boundary
        if args.debug:
            raise
        print(error_line(in_path, exc), file=sys.stderr)
        return 1
    model_path = Path(args.checkpoint or args.onnx or args.engine)
    if not model_path.is_file():
        print(f"{PROG}: error: {model_path}: no such model file; check the path",
              file=sys.stderr)
        return 1
    mine = shard(jobs, rank, world)

    # 2. --continue: only complete outputs are skipped
    todo, skipped = [], 0
    for job in mine:
        if args.resume and output_is_complete(job, series_uid=args.series) and all(
                p.exists() for p in job.outputs.values()):
            skipped += 1
            continue
        if args.resume and job.labels.exists():
            print(f"{PROG}: note: {job.labels}: incomplete or not made from {job.source}; "
                  "segmenting it again", file=sys.stderr)
        todo.append(job)

    done = failed = 0
    if todo:
        # 3. the model, before any folder is made: a refused model leaves nothing behind
        try:
            engine = _load_engine(args, device)
        except Exception as exc:  # noqa: BLE001 - loaders raise library errors of every kind
            if args.debug:
                raise
            print(error_line(model_path, exc, what="cannot load the model: ", fix=MODEL_FIX),
                  file=sys.stderr)
            # under torchrun the load can fail on one rank only (its device): it still joins
            # the summary, so the other ranks finish their shares instead of waiting for it
            _report(rank, world, 0, skipped, len(todo), solo=False)
            return 1
        info = getattr(engine, "model_info", None)
        if args.normalize == "window" and args.window is None and getattr(info, "window",
                                                                           None) is None:
            print(f"{PROG}: error: --normalize window: needs a window and the model file "
                  "records none; give --window LO HI", file=sys.stderr)
            return 2
    # 4. output folders, and leftovers of killed runs swept
    for folder in sorted({p.parent for job in jobs for p in job.outputs.values()}):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            sweep_stale_temps(folder, older_than=started)
        except OSError as exc:
            if args.debug:
                raise
            print(error_line(folder, exc, what="cannot use the output folder: ",
                             fix="give another -o folder"), file=sys.stderr)
            _report(rank, world, 0, skipped, len(todo), solo=False)
            return 1
    if todo:
        if not args.quiet:
            print(f"[rank {rank}/{world}] {engine.describe()}", file=sys.stderr)

        # 5. file by file: a bad file is named with its reason, the others go on
        bar = tqdm(todo, disable=args.quiet, unit="vol", desc=f"segment[{rank}]")
        for job in bar:
            try:
                run_job(job, engine, axis=args.axis, window=args.window,
                        normalize=args.normalize, boxes=args.box, batch_size=args.batch_size,
                        seed=seed,
                        structures=structures, series_uid=args.series)
            except Exception as exc:  # noqa: BLE001 - one line per failed file
                if args.debug:
                    raise
                failed += 1
                _say(error_line(job.source, exc))
                continue
            done += 1
            stats = getattr(engine, "last_stats", None)
            if stats is not None and stats.seconds > 0:
                bar.set_postfix_str(f"{stats.slices / stats.seconds:.0f} slices/s")
        bar.close()
    _report(rank, world, done, skipped, failed)
    return 1 if failed else 0


def _seed(args: argparse.Namespace):
    """--seed-box as a SeedPrompt (None without it); ValueError for a bad or clashing one."""
    if args.seed_box is None:
        return None
    from sam_unet.runtime.propagate import SeedPrompt

    z, *box = args.seed_box
    if z != int(z) or z < 0:
        raise ValueError(f"--seed-box: the slice Z must be an index >= 0, got {z:g}")
    if args.box is not None or getattr(args, "prompts", None):
        raise ValueError("--seed-box cannot be combined with --box or --prompts; for several "
                         'structures put a "propagate" prompt in the prompts file')
    return SeedPrompt(int(z), tuple(box))


def summary_line(done: int, skipped: int, failed: int) -> str:
    return f"segmented {done}, skipped {skipped} (already done), failed {failed}"


def _report(rank: int, world: int, done: int, skipped: int, failed: int, *,
            solo: bool = True) -> None:
    """The summary line; under torchrun, every rank's counts gathered over gloo on rank 0
    (``solo`` False: a single process that stopped on an error prints no summary)."""
    if world == 1:
        if solo:
            print(summary_line(done, skipped, failed))
        return
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        # a rank that could not load the model waits here for the others' whole shares
        dist.init_process_group("gloo", timeout=timedelta(hours=24))
    try:
        counts: list = [None] * world
        dist.all_gather_object(counts, (rank, done, skipped, failed))
        if rank == 0:
            for r, d, _s, f in counts:
                print(f"rank {r} segmented {d} file(s), {f} failed", file=sys.stderr)
            print(summary_line(*(sum(c[i] for c in counts) for i in (1, 2, 3))))
    finally:
        if owned:
            dist.destroy_process_group()
