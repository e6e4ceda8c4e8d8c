"""``sam-unet evaluate``: Dice/IoU of a checkpoint on test folders (original resolution).

By default each test mask is evaluated twice, side by side: with the full-slice box (what
``sam-unet segment`` gives a slice without a prompt, so the figure a user gets) and with the
ground truth's box (an oracle prompt ``segment`` never has). ``EXAMPLES`` below (shown by
``--help``).
"""

from __future__ import annotations

import argparse
import json
import sys

EXAMPLES = """\
  sam-unet evaluate -c runs/mni/best.pt --data data/mni -o runs/mni/eval
  sam-unet evaluate -c runs/mni/best.pt --data data/mni --prompt full"""

PROMPT_CHOICES = {"both": ("full", "box"), "full": ("full",), "box": ("box",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--checkpoint", required=True, help="SAM-UNet checkpoint")
    parser.add_argument("--data", nargs="+", required=True,
                        help="dataset folder(s) with a test/ split (zero-shot folders too)")
    parser.add_argument("--prompt", choices=tuple(PROMPT_CHOICES), default="both",
                        help="both: full-slice and true-label box side by side; full: the whole "
                             "slice as the box, as segment runs without a prompt; box: the "
                             "ground truth's largest-component box")
    parser.add_argument("--variant", help="force the model variant (default: the checkpoint's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-images", type=int, default=4, help="images per model call")
    parser.add_argument("--max-images", type=int,
                        help="evaluate only the first N test images (default: all)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("-o", "--out",
                        help="folder for evaluation.json and evaluation.md (default: print only)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress; print the overall figures as one JSON line")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    import torch

    from sam_unet import checkpoints
    from sam_unet.runtime.devices import resolve_device
    from sam_unet.train.evaluate import evaluate_prompts, markdown_comparison, write_results

    if args.batch_images < 1:
        raise ValueError(f"--batch-images {args.batch_images}: must be >= 1")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images {args.max_images}: must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, report = checkpoints.load_model_with_report(args.checkpoint, variant=args.variant,
                                                       map_location=device)
    info = report.model_info
    results = evaluate_prompts(model, args.data, prompts=PROMPT_CHOICES[args.prompt],
                               device=device, quiet=args.quiet, max_images=args.max_images,
                               batch_images=args.batch_images)
    prompt_mode = info.prompt_mode if info is not None else None
    document = {
        "checkpoint": str(args.checkpoint),
        "integrity": report.integrity,
        "model_info": info.to_dict() if info is not None else None,
        "prompts": results,
    }
    text = markdown_comparison(results, prompt_mode=prompt_mode)
    if args.out:
        jpath, mpath = write_results(document, args.out, markdown=text)
        if not args.quiet:
            print(f"wrote {jpath} and {mpath}", file=sys.stderr)
    if args.quiet:
        print(json.dumps({k: r["overall"] for k, r in results.items()}))
    else:
        print(text)
    return 0
