"""Train SAM-UNet: one process, or DDP under torchrun.

The published recipe: focal + 20 x Dice (see :mod:`sam_unet.train.losses`), Adam lr 1e-4,
MultiStepLR at epochs 5 and 10 (gamma 0.5), several masks per image (5, drawn with
replacement), box prompts from the largest component with jitter, SAM ViT frozen.

Reproducibility: the order of the data (a DistributedSampler seeded with ``seed`` and the epoch)
and every augmentation choice (``numpy.random.default_rng([seed, epoch, index])`` in the
dataset) depend on (seed, epoch, index) only, never on global RNG state, so ``resume`` from a
``last.pt`` written at any step continues exactly: on the CPU the weights are bitwise identical
to those of the uninterrupted run.

Checkpoints (``out/last.pt`` and ``out/best.pt``, by validation Dice) are written with
checkpoints.save_checkpoint: the model state dict in the published layout under "model", plus
"train_state" (optimizer, scheduler, epoch, step, RNG states, best Dice) and "train_config".
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

AMP_MODES = ("none", "bf16", "fp16")
SCHEDULES = ("step", "cosine")


def cosine_lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """lr multiplier before optimizer step ``step + 1`` of ``total``: linear warm-up over
    ``warmup`` steps, then a cosine from 1 down to ``min_ratio`` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup - 1)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass
class TrainConfig:
    data: list[str]
    out: str
    val: list[str] | None = None  # default: the test/ split of ``data`` folders that have one
    variant: str = "tiny"
    model_options: dict = field(default_factory=dict)  # SamUNetConfig overrides for a new model
    sam_checkpoint: str | None = None
    resnet_checkpoint: str | None = None
    init_checkpoint: str | None = None  # start from a SAM-UNet checkpoint (fine-tuning)
    freeze_encoder: bool | None = None  # None: frozen unless tiny without SAM weights
    prompt: str = "box"
    masks_per_image: int = 5
    jitter: bool = True
    augment: str = ""
    batch_size: int = 2
    epochs: int = 15
    max_steps: int | None = None
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: str = "step"  # "step": MultiStepLR per epoch (published); "cosine": per step
    milestones: tuple[int, ...] = (5, 10)
    gamma: float = 0.5
    warmup_epochs: float = 0.0  # cosine: linear warm-up from 0 over this many epochs
    min_lr_ratio: float = 0.01  # cosine: the last step's lr as a fraction of lr
    focal_weight: float = 1.0
    dice_weight: float = 20.0
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    amp: str = "none"
    threads: int | None = None
    resume: str | None = None  # a last.pt, or "auto" (out/last.pt when it exists)
    val_every: int = 1  # epochs
    val_start: int = 1  # the first epoch validated (best.pt is chosen from epochs >= this)
    val_max_images: int | None = None
    val_metric: str = "mean"  # "mean": mean per-mask Dice; "volume": mean 3D Dice per volume
    sync_bn: bool = True
    quiet: bool = False
    tensorboard: bool = True
    write_state_hash: bool = False
    log_every: int = 1
    extra: dict = field(default_factory=dict)


def state_hash(model) -> str:
    """SHA-256 over the state dict (keys in order, dtype, shape and bytes)."""
    import torch

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.dim() else
                 t.reshape(1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _resolve_device(spec: str, local_rank: int):
    import torch

    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {spec!r} asked for but CUDA is not available")
        torch.cuda.set_device(dev)
    return dev


class _TrainStep:
    """A module wrapper so DDP sees encode + decode as one forward."""

    @staticmethod
    def make(model):
        import torch

        class Step(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.model = m

            def forward(self, images, boxes, image_index):
                emb, ms = self.model.encode(images)
                return self.model.decode(emb, ms, boxes, image_index)

        return Step(model)


def _rng_state() -> dict:
    """Global RNG states in a form torch.load(weights_only=True) accepts."""
    import random

    import torch

    mt = np.random.get_state()  # noqa: NPY002 - saving the legacy global state on purpose
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(mt[1].astype(np.int64)), "pos": int(mt[2]),
                  "has_gauss": int(mt[3]), "cached_gaussian": float(mt[4])},
        "python": {"version": py[0], "state": list(py[1]), "gauss": py[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import torch

    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        n = state["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        legacy = ("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"])
        np.random.set_state(legacy)  # noqa: NPY002 - restoring the legacy global state
    if "python" in state:
        p = state["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _scheduler_state(scheduler) -> dict:
    sd = dict(scheduler.state_dict())
    if "milestones" in sd:
        sd["milestones"] = {int(k): int(v) for k, v in dict(sd["milestones"]).items()}
    return sd


def _load_scheduler_state(scheduler, sd: dict) -> None:
    from collections import Counter

    sd = dict(sd)
    if "milestones" in sd:
        sd["milestones"] = Counter({int(k): int(v) for k, v in sd["milestones"].items()})
    scheduler.load_state_dict(sd)


def _seed_all(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code may use the global RNG
    torch.manual_seed(seed)


def _save(model, path: Path, **extra) -> None:
    from sam_unet import checkpoints

    checkpoints.save_checkpoint(model, path, **extra)  # atomic (temporary file + os.replace)


class _CsvLog:
    def __init__(self, path: Path, fields: list[str], append: bool) -> None:
        self.path, self.fields = path, fields
        new = not (append and path.exists())
        self.fh = open(path, "w" if new else "a", newline="", encoding="utf-8")
        self.w = csv.DictWriter(self.fh, fieldnames=fields)
        if new:
            self.w.writeheader()

    def write(self, row: dict) -> None:
        self.w.writerow({k: row.get(k, "") for k in self.fields})
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _collate(batch):
    import torch

    images = torch.from_numpy(np.stack([b["image"] for b in batch]))
    masks = torch.from_numpy(np.stack([b["masks"] for b in batch]))
    boxes = torch.from_numpy(np.stack([b["boxes"] for b in batch]))
    hw = torch.from_numpy(np.stack([b["resized_hw"] for b in batch]))
    return images, masks, boxes, hw


def _default_val_folders(data: list[str]) -> list[str]:
    from sam_unet.data import layout

    out = []
    for folder in layout.dataset_folders(data):
        test_json = folder / "test" / layout.TEST_JSON
        if test_json.is_file() and layout.read_test_json(test_json):
            out.append(str(folder))
    return out


def build_training_model(cfg: TrainConfig, log=print):
    """The model with initial weights and encoder freezing as the config says."""
    from sam_unet import checkpoints
    from sam_unet.models import build_model

    if cfg.init_checkpoint:
        if cfg.model_options:
            raise ValueError(
                f"model options {sorted(cfg.model_options)} cannot change the architecture of "
                f"--init-checkpoint {cfg.init_checkpoint}; the checkpoint defines it")
        model = checkpoints.load_model(cfg.init_checkpoint, variant=cfg.variant)
    else:
        model = build_model(cfg.variant, **dict(cfg.model_options))
    if cfg.sam_checkpoint:
        checkpoints.load_sam_checkpoint(model, cfg.sam_checkpoint)
    if cfg.resnet_checkpoint:
        checkpoints.load_resnet_checkpoint(model, cfg.resnet_checkpoint)
    freeze = cfg.freeze_encoder
    if freeze is None:
        freeze = not (cfg.variant == "tiny" and not cfg.sam_checkpoint and not cfg.init_checkpoint)
    if freeze and not (cfg.sam_checkpoint or cfg.init_checkpoint):
        log("warning: the image encoder is frozen but no SAM weights were given "
            "(--sam-checkpoint); it stays at its random initialisation")
    model.freeze_encoder(bool(freeze))
    return model


def train(cfg: TrainConfig) -> dict:
    """Run training as configured; returns a summary dict (rank 0's view)."""
    import torch
    import torch.distributed as dist
    from tqdm import tqdm

    from sam_unet.data.dataset import TestDataset, TrainDataset
    from sam_unet.train.evaluate import evaluate_model
    from sam_unet.train.losses import SegLoss

    if cfg.val_metric not in ("mean", "volume"):
        raise ValueError(f"val_metric must be 'mean' or 'volume', got {cfg.val_metric!r}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    if cfg.amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {cfg.amp!r}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    world, rank, local_rank = _dist_env()
    distributed = world > 1
    device = _resolve_device(cfg.device, local_rank)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    is_main = rank == 0
    out = Path(cfg.out)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    if distributed:
        dist.barrier()

    def log(msg: str) -> None:
        if is_main and not cfg.quiet:
            tqdm.write(msg, file=sys.stderr)

    try:
        _seed_all(cfg.seed)
        model = build_training_model(cfg, log)
        model.to(device)
        use_sync_bn = distributed and cfg.sync_bn and device.type == "cuda"
        if use_sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif distributed and cfg.sync_bn:
            log("note: SyncBatchNorm needs a GPU; on the CPU BatchNorm statistics are local and "
                "the buffers are broadcast from rank 0 at every step (DDP broadcast_buffers)")
        train_ds = TrainDataset(cfg.data, masks_per_image=cfg.masks_per_image, prompt=cfg.prompt,
                                jitter=cfg.jitter, augment=cfg.augment, seed=cfg.seed)
        val_folders = cfg.val if cfg.val is not None else _default_val_folders(cfg.data)
        val_ds = TestDataset(val_folders, prompt=cfg.prompt) if val_folders else None
        if val_ds is not None and len(val_ds) == 0:
            val_ds = None

        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        criterion = SegLoss(cfg.focal_weight, cfg.dice_weight)
        scaler = torch.amp.GradScaler("cuda", enabled=(cfg.amp == "fp16" and device.type == "cuda"))
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        if amp_dtype is not None and device.type != "cuda":
            log("note: AMP is used on CUDA only; training in float32")
            amp_dtype = None

        step_module = _TrainStep.make(model)
        if distributed:
            ddp = torch.nn.parallel.DistributedDataParallel(
                step_module,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True,
                broadcast_buffers=True,
            )
        else:
            ddp = step_module

        sampler = torch.utils.data.DistributedSampler(
            range(len(train_ds)), num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
            drop_last=False)
        steps_per_epoch = math.ceil(len(sampler) / cfg.batch_size)
        per_step_schedule = cfg.schedule == "cosine"
        if per_step_schedule:
            total = steps_per_epoch * cfg.epochs
            warm = round(cfg.warmup_epochs * steps_per_epoch)
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda i: cosine_lr_factor(i, total, warm, cfg.min_lr_ratio))
        else:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(
                optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)

        epoch, step, best = 0, 0, -1.0
        resume = cfg.resume
        if resume == "auto":
            resume = str(out / "last.pt") if (out / "last.pt").exists() else None
        if resume:
            if not Path(resume).is_file():
                raise FileNotFoundError(f"{resume}: no such checkpoint to resume from")
            try:
                ckpt = torch.load(resume, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
                raise ValueError(f"{resume}: cannot read the checkpoint ({exc})") from exc
            if "train_state" not in ckpt:
                raise ValueError(f"{resume}: not a training checkpoint (no 'train_state')")
            saved, now = ckpt.get("config"), model.config.to_dict()
            if isinstance(saved, dict) and saved != now:
                diff = ", ".join(f"{k} {saved.get(k)} in the checkpoint, {now.get(k)} now"
                                 for k in sorted(set(saved) | set(now))
                                 if saved.get(k) != now.get(k))
                raise ValueError(f"{resume}: trained with a different model config ({diff}); "
                                 "pass the same --variant and --model-option values to resume")
            model.load_state_dict(ckpt["model"], strict=True)
            ts = ckpt["train_state"]
            optimizer.load_state_dict(ts["optimizer"])
            _load_scheduler_state(scheduler, ts["scheduler"])
            if "scaler" in ts and ts["scaler"]:
                scaler.load_state_dict(ts["scaler"])
            epoch, step, best = int(ts["epoch"]), int(ts["step"]), float(ts["best_dice"])
            rng = ts.get("rng", {})
            _set_rng_state(rng[rank] if isinstance(rng, list) and rank < len(rng) else
                           (rng[0] if isinstance(rng, list) and rng else {}))
            log(f"resumed from {resume}: epoch {epoch}, step {step}, best Dice {best:.4f}")

        # Decided on every rank before any checkpoint of this run is written (no file races).
        have_best = bool(resume) and (out / "best.pt").exists()
        max_steps = cfg.max_steps if cfg.max_steps is not None else steps_per_epoch * cfg.epochs
        max_steps = min(max_steps, steps_per_epoch * cfg.epochs)
        train_csv = _CsvLog(out / "train_log.csv",
                            ["step", "epoch", "loss", "focal", "dice_loss", "lr", "seconds"],
                            append=bool(resume)) if is_main else None
        val_csv = _CsvLog(out / "val_log.csv", ["step", "epoch", "dice", "iou", "n"],
                          append=bool(resume)) if is_main else None
        tb = None
        if is_main and cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                tb = SummaryWriter(str(out / "tensorboard"))
            except Exception:  # noqa: BLE001 - tensorboard absent or broken: CSV only
                tb = None

        config_dict = json.loads(json.dumps(dataclasses.asdict(cfg)))

        def train_state() -> dict:
            rng = _rng_state()
            if distributed:
                gathered = [None] * world
                dist.all_gather_object(gathered, rng)
                rng = gathered
            else:
                rng = [rng]
            return {
                "optimizer": optimizer.state_dict(),
                "scheduler": _scheduler_state(scheduler),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "epoch": epoch,
                "step": step,
                "best_dice": best,
                "rng": rng,
                "world_size": world,
            }

        def save(path: Path, ts: dict) -> None:
            if is_main:
                _save(model, path, train_state=ts, train_config=config_dict)

        def validate() -> dict | None:
            nonlocal best
            result = None
            if val_ds is not None and is_main:
                model.eval()
                res = evaluate_model(model, val_ds, device=device, quiet=True,
                                     max_images=cfg.val_max_images, amp=amp_dtype)
                model.train()
                result = dict(res["overall"])
                if cfg.val_metric == "volume" and res["volumes"]:
                    result["dice"] = float(np.mean([v["dice_3d"] for v in
                                                    res["volumes"].values()]))
                    result["iou"] = float(np.mean([v["iou_3d"] for v in
                                                   res["volumes"].values()]))
                val_csv.write({"step": step, "epoch": epoch, **result})
                if tb is not None:
                    tb.add_scalar("val/dice", result["dice"], step)
                log(f"epoch {epoch} step {step}: val Dice {result['dice']:.4f} "
                    f"IoU {result['iou']:.4f} ({result['n']} masks)")
            if distributed:
                box = [result]
                dist.broadcast_object_list(box, src=0)
                result = box[0]
            return result

        t_start = time.time()
        last_loss = None
        losses: list[float] = []
        model.train()
        done = step >= max_steps
        val_result = None
        while not done and epoch < cfg.epochs:
            indices = list(iter(_EpochSampler(sampler, epoch)))
            skip = (step - epoch * steps_per_epoch) * cfg.batch_size
            keys = [(epoch, i) for i in indices[skip:]]
            loader = torch.utils.data.DataLoader(
                train_ds, batch_size=cfg.batch_size, sampler=keys, collate_fn=_collate,
                num_workers=cfg.num_workers, drop_last=False,
                pin_memory=device.type == "cuda",
                persistent_workers=False)
            bar = tqdm(total=steps_per_epoch, initial=step - epoch * steps_per_epoch,
                       desc=f"epoch {epoch}", unit="step", disable=not is_main or cfg.quiet,
                       file=sys.stderr, dynamic_ncols=True)
            for images, masks, boxes, hw in loader:
                t0 = time.time()
                b, k = masks.shape[:2]
                images = images.to(device, non_blocking=True)
                masks = masks.to(device, non_blocking=True).reshape(b * k, *masks.shape[2:])
                boxes = boxes.to(device).reshape(b * k, 4)
                hw = hw.to(device).repeat_interleave(k, dim=0)
                index = torch.arange(b, device=device).repeat_interleave(k)
                with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    logits = ddp(images, boxes, index)
                loss, parts = criterion(logits.float(), masks, hw)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if per_step_schedule:
                    scheduler.step()
                step += 1
                last_loss = float(loss.detach())
                losses.append(last_loss)
                if is_main and step % cfg.log_every == 0:
                    row = {"step": step, "epoch": epoch, "loss": last_loss,
                           "focal": float(parts["focal"]), "dice_loss": float(parts["dice_loss"]),
                           "lr": optimizer.param_groups[0]["lr"],
                           "seconds": round(time.time() - t0, 4)}
                    train_csv.write(row)
                    if tb is not None:
                        tb.add_scalar("train/loss", last_loss, step)
                bar.set_postfix(loss=f"{last_loss:.4f}")
                bar.update(1)
                if step >= max_steps:
                    break
            bar.close()
            epoch_done = step - epoch * steps_per_epoch >= steps_per_epoch
            if epoch_done:
                if not per_step_schedule:
                    scheduler.step()
                epoch += 1
                if epoch == cfg.epochs or (epoch >= cfg.val_start
                                           and epoch % max(cfg.val_every, 1) == 0):
                    val_result = validate()
                    if val_result is not None and val_result["dice"] > best:
                        best = val_result["dice"]
                        save(out / "best.pt", train_state())
                        have_best = True
                save(out / "last.pt", train_state())
            if step >= max_steps:
                done = True
        if not (step > 0 and step % steps_per_epoch == 0):
            # stopped inside an epoch (max_steps): save where we are so --resume continues
            ts = train_state()
            save(out / "last.pt", ts)
        if val_ds is not None and not have_best:
            val_result = validate()
            if val_result is not None:
                best = max(best, val_result["dice"])
                save(out / "best.pt", train_state())
        if distributed:
            # BatchNorm running statistics are updated locally by each rank's last forward (on
            # the CPU, without SyncBatchNorm): make every rank hold rank 0's, as saved.
            with torch.no_grad():
                for buf in model.buffers():
                    dist.broadcast(buf, src=0)
            dist.barrier()
        digest = state_hash(model)
        if cfg.write_state_hash:
            (out / f"state_rank{rank}.sha256").write_text(digest + "\n")
        summary = {
            "epoch": epoch, "step": step, "best_dice": best, "last_loss": last_loss,
            "first_loss": losses[0] if losses else None,
            "losses": losses,
            "seconds": time.time() - t_start, "world_size": world, "state_sha256": digest,
            "val": val_result, "out": str(out),
        }
        if is_main:
            (out / "summary.json").write_text(json.dumps(
                {k: v for k, v in summary.items() if k != "losses"}, indent=1) + "\n")
        if train_csv:
            train_csv.close()
            val_csv.close()
        if tb is not None:
            tb.close()
        return summary
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


class _EpochSampler:
    def __init__(self, sampler, epoch: int) -> None:
        self.sampler, self.epoch = sampler, epoch

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        return iter(self.sampler)
