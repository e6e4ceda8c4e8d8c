"""``sam-unet demo``: the whole product on a real brain MRI, no download, no GPU needed.

Loads the MNI ICBM152 2009 T1 template bundled with the package, takes the bundled tiny demo
checkpoint (trained by ``sam-unet train`` on the template's white matter; ``--retrain`` makes it
again), exports it to ONNX, builds the best engine present (TensorRT on a GPU with TensorRT,
torch fp16 on a GPU without it, ONNX Runtime on the CPU), segments the whole volume, writes the
mask NIfTI and a PNG montage, and prints the 3D Dice against the white-matter map (p > 0.5) and
the throughput.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

EXAMPLES = """\
  sam-unet demo                    segment the bundled brain MRI: mask, PNG montage, Dice
  sam-unet demo --retrain          train the tiny demo model again first (about 6 minutes)
  sam-unet demo -o out --quiet     only the Dice line"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default="sam-unet-demo",
                        help="output folder (mask, ONNX file, PNG montage)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda when torch sees one, else cpu)")
    parser.add_argument("--retrain", action="store_true",
                        help="train the tiny demo model again from scratch (a few CPU minutes)")
    parser.add_argument("--threads", type=int, default=None,
                        help="--retrain: CPU threads (default: the cores not busy elsewhere)")
    parser.add_argument("--checkpoint", default=None,
                        help="use this checkpoint instead (default: the bundled tiny demo model)")
    parser.add_argument("--quiet", action="store_true", help="print only the Dice line")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def write_montage(t1_path: Path, mask_path: Path, png_path: Path, *, rows: int = 3,
                  cols: int = 4) -> None:
    """Axial slices of the T1 with the mask overlaid in red and a legend, as one PNG."""
    import nibabel as nib
    import numpy as np

    from sam_unet.runtime.preview import write_preview

    t1_img = nib.as_closest_canonical(nib.load(str(t1_path)))
    mask = np.asarray(nib.as_closest_canonical(nib.load(str(mask_path))).dataobj)
    write_preview(png_path, np.asarray(t1_img.dataobj, dtype=np.float32), mask,
                  {1: "white matter"}, zooms=t1_img.header.get_zooms()[:3], rows=rows,
                  cols=cols, colors={1: (255, 42, 42)},
                  title="sam-unet demo: white matter on MNI152 T1")


def _has_tensorrt() -> bool:
    """Whether TensorRT can be imported (then the ONNX engine builds a TensorRT engine)."""
    from sam_unet.runtime.tensorrt_engine import import_tensorrt

    try:
        import_tensorrt()
    except Exception:  # noqa: BLE001 - a broken install is as unusable as none
        return False
    return True


def run(args: argparse.Namespace) -> int:
    import nibabel as nib
    import numpy as np
    import torch

    from sam_unet.data.mni152 import WM_LABEL_THRESHOLD
    from sam_unet.data.mni152 import paths as mni_paths
    from sam_unet.runtime.devices import resolve_device
    from sam_unet.runtime.engine import Engine
    from sam_unet.runtime.files import segment_file
    from sam_unet.train.metrics import dice as dice_score

    say = (lambda *a: None) if args.quiet else print
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t1_path, wm_path = mni_paths()
    ckpt = Path(args.checkpoint) if args.checkpoint else (
        Path(__file__).resolve().parents[1] / "assets" / "demo_tiny.pt")
    t_all = time.perf_counter()
    if args.retrain:
        from sam_unet.train.demo_recipe import default_threads, train_demo_model

        ckpt = out / "demo_tiny_retrained.pt"
        threads = args.threads or default_threads()
        say(f"retraining the tiny demo model on {threads} CPU thread(s) -> {ckpt}")
        metrics = train_demo_model(ckpt, quiet=args.quiet, threads=threads)
        say(f"retrained: {metrics}")
    if not ckpt.is_file():
        raise FileNotFoundError(f"demo checkpoint not found: {ckpt}")

    device = resolve_device(args.device)
    onnx_path = out / "demo_tiny.onnx"
    t = time.perf_counter()
    from sam_unet.checkpoints import load_model
    from sam_unet.export.onnx import export_onnx

    model = load_model(ckpt)
    export_onnx(model, onnx_path, checkpoint=ckpt)
    say(f"exported {onnx_path} ({time.perf_counter() - t:.1f} s)")

    if device.startswith("cuda") and not _has_tensorrt():
        engine = Engine.from_checkpoint(ckpt, device=device)
    else:
        engine = Engine.from_onnx(onnx_path, device=device)
    say(f"engine: {engine.describe()}")

    mask_path = out / "mni152_t1_wm_mask.nii.gz"
    img = nib.load(str(t1_path))
    say(f"input {t1_path.name}: shape {img.shape}, {img.get_data_dtype()}")
    segment_file(t1_path, mask_path, engine)
    stats = engine.last_stats
    mask = np.asarray(nib.load(str(mask_path)).dataobj)
    # the map stores probability x 255 as uint8: p > 0.5 is a stored value > 127.5
    wm = np.asarray(nib.load(str(wm_path)).dataobj, dtype=np.float32) > WM_LABEL_THRESHOLD
    dice = dice_score(mask, wm)
    png = out / "mni152_t1_wm_montage.png"
    write_montage(t1_path, mask_path, png)
    say(f"mask   {mask_path}")
    say(f"png    {png}")
    stages = " ".join(f"{k}={v * 1000:.0f}ms" for k, v in stats.stages.items())
    say(f"throughput: {stats.slices} slices in {stats.seconds:.2f} s = "
        f"{stats.slices_per_second:.1f} slices/s ({stages}) on {device}"
        + (f" [{torch.cuda.get_device_name(device)}]" if device.startswith("cuda") else ""))
    print(f"white-matter 3D Dice vs MNI152 WM probability > 0.5: {dice:.4f}")
    say(f"total {time.perf_counter() - t_all:.1f} s")
    return 0
