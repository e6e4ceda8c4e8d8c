"""``sam-unet train``: train SAM-UNet in one process or under torchrun (DDP).

``EXAMPLES`` below (shown by ``--help``).
"""

from __future__ import annotations

import argparse
import json

EXAMPLES = """\
  sam-unet train --data data/mni --variant tiny --prompt full --epochs 10 -o runs/mni
  torchrun --nproc_per_node 2 -m sam_unet.cli train --data data/ct -o runs/ct \\
      --variant res34 --sam-checkpoint sam_vit_b_01ec64.pth --resnet-checkpoint resnet34.pth
  sam-unet train --data data/mni -o runs/mni --resume      continue from runs/mni/last.pt"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", required=True,
                        help="dataset folder(s) holding train/ (and test/ for validation)")
    parser.add_argument("--val", nargs="*", help="validation dataset folder(s) (default: the "
                        "test/ split of --data)")
    parser.add_argument("-o", "--out", required=True, help="run folder (checkpoints, logs)")
    parser.add_argument("--variant", default="res34", help="res34, res50 or tiny")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the variant's config for a new model, e.g. "
                             "window_size=16 (repeatable; saved in the checkpoints)")
    parser.add_argument("--sam-checkpoint",
                        help="original SAM ViT-B checkpoint (initial weights; default: none, "
                             "random)")
    parser.add_argument("--resnet-checkpoint",
                        help="torchvision ResNet weights for the branch (default: none, random)")
    parser.add_argument("--init-checkpoint", help="start from a SAM-UNet checkpoint (fine-tuning)")
    fz = parser.add_mutually_exclusive_group()
    fz.add_argument("--freeze-encoder", dest="freeze_encoder", action="store_true", default=None,
                    help="freeze the SAM image encoder (default unless tiny without SAM weights)")
    fz.add_argument("--train-encoder", dest="freeze_encoder", action="store_false",
                    help="train the SAM image encoder too")
    parser.add_argument("--prompt", choices=("box", "full", "both"), default="box",
                        help="box: largest-component boxes; full: the whole slice (no prompts); "
                             "both: each mask gets one of the two (alternating)")
    parser.add_argument("--masks-per-image", type=int, default=5,
                        help="masks sampled per image and step (as published)")
    parser.add_argument("--no-jitter", dest="jitter", action="store_false",
                        help="no box jitter in training")
    parser.add_argument("--augment", default="",
                        help="comma-separated: hflip, vflip, intensity (default: none)")
    parser.add_argument("--batch-size", type=int, default=2, help="images per process")
    parser.add_argument("--epochs", type=int, default=15, help="passes over the training set")
    parser.add_argument("--max-steps", type=int,
                        help="stop after this many optimizer steps (default: no limit)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay")
    parser.add_argument("--schedule", choices=("step", "cosine"), default="step",
                        help="step: MultiStepLR at --milestones (published); cosine: per-step "
                             "warm-up then cosine decay to --min-lr-ratio x lr")
    parser.add_argument("--milestones", default="5,10",
                        help="--schedule step: epochs where the lr is multiplied by --gamma")
    parser.add_argument("--gamma", type=float, default=0.5, help="--schedule step: lr factor")
    parser.add_argument("--warmup-epochs", type=float, default=0.0,
                        help="--schedule cosine: warm-up length in epochs")
    parser.add_argument("--min-lr-ratio", type=float, default=0.01,
                        help="--schedule cosine: final lr as a fraction of --lr")
    parser.add_argument("--focal-weight", type=float, default=1.0, help="weight of the focal loss")
    parser.add_argument("--dice-weight", type=float, default=20.0, help="weight of the Dice loss")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, sampling and jitter")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                        help="mixed precision on GPU")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads per process (default: torch's)")
    parser.add_argument("--resume", nargs="?", const="auto",
                        help="continue from a last.pt; without a path: OUT/last.pt (default: "
                             "start anew)")
    parser.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    parser.add_argument("--val-start", type=int, default=1,
                        help="first epoch to validate (the last epoch always is)")
    parser.add_argument("--val-max-images", type=int,
                        help="validate on the first N images only (default: all)")
    parser.add_argument("--val-metric", choices=("mean", "volume"), default="mean",
                        help="best.pt by mean per-mask Dice or by mean 3D Dice per volume")
    parser.add_argument("--no-sync-bn", dest="sync_bn", action="store_false",
                        help="under torchrun: keep batch-norm statistics per process")
    parser.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                        help="no TensorBoard event files in OUT")
    parser.add_argument("--write-state-hash", action="store_true",
                        help="each rank writes OUT/state_rank<R>.sha256 of its final weights")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def parse_model_options(items: list[str]) -> dict:
    """["window_size=16", "resnet_layers=1,1,1,1"] -> {"window_size": 16, "resnet_layers":
    (1, 1, 1, 1)}; numbers become int or float, comma lists tuples of them."""

    def number(text: str):
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--model-option {item!r}: expected KEY=VALUE, e.g. window_size=16")
        value = value.strip()
        options[key.strip()] = tuple(number(v) for v in value.split(",")) if "," in value \
            else number(value)
    return options


def config_from_args(args: argparse.Namespace):
    from sam_unet.train.trainer import TrainConfig

    milestones = tuple(int(m) for m in args.milestones.split(",") if m.strip())
    return TrainConfig(
        data=list(args.data), out=args.out, val=args.val, variant=args.variant,
        model_options=parse_model_options(args.model_option),
        sam_checkpoint=args.sam_checkpoint, resnet_checkpoint=args.resnet_checkpoint,
        init_checkpoint=args.init_checkpoint, freeze_encoder=args.freeze_encoder,
        prompt=args.prompt, masks_per_image=args.masks_per_image, jitter=args.jitter,
        augment=args.augment, batch_size=args.batch_size, epochs=args.epochs,
        max_steps=args.max_steps, lr=args.lr, weight_decay=args.weight_decay,
        schedule=args.schedule, milestones=milestones, gamma=args.gamma,
        warmup_epochs=args.warmup_epochs, min_lr_ratio=args.min_lr_ratio,
        focal_weight=args.focal_weight,
        dice_weight=args.dice_weight, seed=args.seed, num_workers=args.workers,
        device=args.device, amp=args.amp, threads=args.threads, resume=args.resume,
        val_every=args.val_every, val_start=args.val_start,
        val_max_images=args.val_max_images,
        val_metric=args.val_metric, sync_bn=args.sync_bn,
        quiet=args.quiet, tensorboard=args.tensorboard, write_state_hash=args.write_state_hash,
    )


def run(args: argparse.Namespace) -> int:
    from sam_unet.train.trainer import train

    summary = train(config_from_args(args))
    if not args.quiet and summary.get("val") is not None:
        print(json.dumps({k: summary[k] for k in ("step", "epoch", "best_dice", "last_loss")}))
    return 0
