"""``sam-unet evaluate``: Dice/IoU of a checkpoint on test folders (original resolution).

Example::

    sam-unet evaluate -c runs/mni/best.pt --data data/mni --prompt full -o runs/mni/eval
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--checkpoint", required=True, help="SAM-UNet checkpoint")
    parser.add_argument("--data", nargs="+", required=True,
                        help="dataset folder(s) with a test/ split (zero-shot folders too)")
    parser.add_argument("--prompt", choices=("box", "full"),
                        help="box (ground-truth largest-component box) or full slice; default: "
                             "what the checkpoint was trained with, else box")
    parser.add_argument("--variant", help="force the model variant")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch-images", type=int, default=4)
    parser.add_argument("--max-images", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("-o", "--out", help="folder for evaluation.json / evaluation.md")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    import torch

    from sam_unet import checkpoints
    from sam_unet.train.evaluate import evaluate_model, markdown_table, write_results

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    prompt = args.prompt
    if prompt is None:
        try:
            obj = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                prompt = (obj.get("train_config") or {}).get("prompt") or obj.get("prompt")
        except Exception:  # noqa: BLE001 - load_model below reports unreadable files clearly
            prompt = None
        prompt = prompt or "box"
    model = checkpoints.load_model(args.checkpoint, variant=args.variant, map_location=device)
    result = evaluate_model(model, args.data, prompt=prompt, device=device, quiet=args.quiet,
                            max_images=args.max_images, batch_images=args.batch_images)
    result["checkpoint"] = str(args.checkpoint)
    if args.out:
        jpath, mpath = write_results(result, args.out)
        if not args.quiet:
            print(f"wrote {jpath} and {mpath}", file=sys.stderr)
    print(markdown_table(result) if not args.quiet else json.dumps(result["overall"]))
    return 0
