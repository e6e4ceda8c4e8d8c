"""Train SAM-UNet: one process, or DDP under torchrun.

The published recipe: focal + 20 x Dice (see :mod:`sam_unet.train.losses`), Adam lr 1e-4,
MultiStepLR at epochs 5 and 10 (gamma 0.5), several masks per image (5, drawn with
replacement), box prompts from the largest component with jitter, SAM ViT frozen.

:class:`Trainer` runs it in named steps: :meth:`~Trainer.start_process` (device, process
group), :meth:`~Trainer.setup` (model, data, optimizer, schedule), :meth:`~Trainer.resume`,
:meth:`~Trainer.train_epoch` (made of :meth:`~Trainer.train_step`), :meth:`~Trainer.end_epoch`
(schedule, :meth:`~Trainer.validate`, :meth:`~Trainer.save_checkpoint`) and
:meth:`~Trainer.finish`; :func:`train` is ``Trainer(cfg).run()``.

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

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sam_unet.train.config import AMP_MODES, SCHEDULES, TrainConfig
from sam_unet.train.reproducibility import rng_state, seed_all, set_rng_state, state_hash
from sam_unet.train.run_log import RunLog
from sam_unet.train.schedule import (
    cosine_lr_factor,
    load_scheduler_state,
    make_scheduler,
    scheduler_state,
)

__all__ = ["AMP_MODES", "SCHEDULES", "TrainConfig", "Trainer", "build_training_model",
           "cosine_lr_factor", "state_hash", "train"]


def train(cfg: TrainConfig) -> dict:
    """Run training as configured; returns a summary dict (rank 0's view)."""
    return Trainer(cfg).run()


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _resolve_device(spec: str, local_rank: int):
    import torch

    from sam_unet.runtime.devices import resolve_device

    dev = torch.device(resolve_device(spec, local_rank=local_rank))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def _joint_forward(model):
    """A module whose forward is encode + decode, so DDP sees one forward per step."""
    import torch

    class EncodeDecode(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

        def forward(self, images, boxes, image_index):
            emb, ms = self.model.encode(images)
            return self.model.decode(emb, ms, boxes, image_index)

    return EncodeDecode(model)


def _collate(batch):
    """Dataset items -> (images (B,3,256,256) f32, masks (B,K,256,256) u8, boxes (B,K,4) f32,
    resized_hw (B,2))."""
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


def _read_training_checkpoint(path: str) -> dict:
    import torch

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint to resume from")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
        raise ValueError(f"{path}: cannot read the checkpoint ({exc})") from exc
    if "train_state" not in ckpt:
        raise ValueError(f"{path}: not a training checkpoint (no 'train_state')")
    from sam_unet.checkpoints import verify_checkpoint

    verify_checkpoint(ckpt, ckpt["model"], source=f"checkpoint {path!r}")
    return ckpt


def _training_model_info(cfg: TrainConfig, model):
    """How the trained model must be fed, saved in every checkpoint: normalization, window and
    axis from the data folders' prepare manifests, prompt mode from ``cfg.prompt``."""
    from sam_unet.data import layout
    from sam_unet.data.prepare import read_manifest
    from sam_unet.model_info import model_info_from_training

    manifests = []
    for folder in layout.dataset_folders(list(cfg.data)):
        try:
            manifests.append(read_manifest(folder))
        except (OSError, ValueError):  # unreadable manifest: that folder's settings are unknown
            manifests.append(None)
    variant = str(getattr(model, "variant", None) or cfg.variant)
    return model_info_from_training(variant, cfg.prompt, manifests)


class Trainer:
    """One training run of ``cfg``, in this process (one rank under torchrun).

    State shared by the steps: ``model`` (the plain SamUNet, saved as is), ``forward`` (its
    encode + decode step, DDP-wrapped when distributed), ``optimizer``, ``scheduler``,
    ``scaler``, ``sampler``, the datasets, ``epoch`` / ``step`` (completed ones) and ``best``
    (best validation Dice so far, -1 before any).
    """

    def __init__(self, cfg: TrainConfig) -> None:
        cfg.check()
        self.cfg = cfg
        self.world, self.rank, self.local_rank = _dist_env()
        self.distributed = self.world > 1
        self.is_main = self.rank == 0
        self.out = Path(cfg.out)
        self.epoch, self.step, self.best = 0, 0, -1.0
        self.resumed = False
        self.have_best = False
        self.last_loss: float | None = None
        self.losses: list[float] = []
        self.val_result: dict | None = None
        self.logs: RunLog | None = None

    # -- the whole run ----------------------------------------------------------------------

    def run(self) -> dict:
        """start_process -> setup -> resume -> epochs -> finish; returns the summary."""
        import torch.distributed as dist

        self.start_process()
        try:
            self.setup()
            path = self.resume_path()
            if path:
                self.resume(path)
            # Decided on every rank before any checkpoint of this run is written (no races).
            self.have_best = self.resumed and (self.out / "best.pt").exists()
            self.logs = RunLog(self.out, enabled=self.is_main, append=self.resumed,
                               tensorboard=self.cfg.tensorboard)
            self.config_dict = json.loads(json.dumps(dataclasses.asdict(self.cfg)))
            self.t_start = time.time()
            self.model.train()
            while self.step < self.max_steps and self.epoch < self.cfg.epochs:
                self.train_epoch()
                if self.step - self.epoch * self.steps_per_epoch >= self.steps_per_epoch:
                    self.end_epoch()
            return self.finish()
        finally:
            if self.distributed and dist.is_initialized():
                dist.destroy_process_group()

    def log(self, msg: str) -> None:
        if self.is_main and not self.cfg.quiet:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)

    # -- steps ------------------------------------------------------------------------------

    def start_process(self) -> None:
        """Device, CPU threads, the process group (under torchrun) and the run folder."""
        import torch
        import torch.distributed as dist

        self.device = _resolve_device(self.cfg.device, self.local_rank)
        if self.cfg.threads:
            torch.set_num_threads(int(self.cfg.threads))
        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        if self.distributed:
            dist.barrier()

    def setup(self) -> None:
        """Seed, build the model, the datasets, the optimizer, AMP and the schedule.

        The order is fixed: it decides the initial weights (global RNG after seeding)."""
        import torch

        from sam_unet.data.dataset import TestDataset, TrainDataset
        from sam_unet.train.losses import SegLoss

        cfg, device = self.cfg, self.device
        seed_all(cfg.seed)
        model = build_training_model(cfg, self.log)
        model.to(device)
        if self.distributed and cfg.sync_bn and device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif self.distributed and cfg.sync_bn:
            self.log("note: SyncBatchNorm needs a GPU; on the CPU BatchNorm statistics are "
                     "local and the buffers are broadcast from rank 0 at every step (DDP "
                     "broadcast_buffers)")
        self.model = model
        self.model_info = _training_model_info(cfg, model)
        self.train_ds = TrainDataset(cfg.data, masks_per_image=cfg.masks_per_image,
                                     prompt=cfg.prompt, jitter=cfg.jitter, augment=cfg.augment,
                                     seed=cfg.seed)
        val_folders = cfg.val if cfg.val is not None else _default_val_folders(cfg.data)
        val_ds = TestDataset(val_folders, prompt=cfg.prompt) if val_folders else None
        self.val_ds = val_ds if val_ds is not None and len(val_ds) > 0 else None

        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                          fused=True)
        self.criterion = SegLoss(cfg.focal_weight, cfg.dice_weight)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=(cfg.amp == "fp16" and device.type == "cuda"))
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        if self.amp_dtype is not None and device.type != "cuda":
            self.log("note: AMP is used on CUDA only; training in float32")
            self.amp_dtype = None

        step_module = _joint_forward(model)
        if self.distributed:
            self.forward = torch.nn.parallel.DistributedDataParallel(
                step_module,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True,
                broadcast_buffers=True,
            )
        else:
            self.forward = step_module

        self.sampler = torch.utils.data.DistributedSampler(
            range(len(self.train_ds)), num_replicas=self.world, rank=self.rank, shuffle=True,
            seed=cfg.seed, drop_last=False)
        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.batch_size)
        self.per_step_schedule = cfg.schedule == "cosine"
        self.scheduler = make_scheduler(
            self.optimizer, schedule=cfg.schedule, steps_per_epoch=self.steps_per_epoch,
            epochs=cfg.epochs, milestones=cfg.milestones, gamma=cfg.gamma,
            warmup_epochs=cfg.warmup_epochs, min_lr_ratio=cfg.min_lr_ratio)
        max_steps = cfg.max_steps if cfg.max_steps is not None else \
            self.steps_per_epoch * cfg.epochs
        self.max_steps = min(max_steps, self.steps_per_epoch * cfg.epochs)

    def resume_path(self) -> str | None:
        """The checkpoint to resume from: ``cfg.resume``, or with "auto" out/last.pt if any."""
        resume = self.cfg.resume
        if resume == "auto":
            last = self.out / "last.pt"
            return str(last) if last.exists() else None
        return resume or None

    def resume(self, path: str) -> None:
        """Load weights, optimizer, schedule, scaler, counters and this rank's RNG states."""
        ckpt = _read_training_checkpoint(path)
        saved, now = ckpt.get("config"), self.model.config.to_dict()
        if isinstance(saved, dict) and saved != now:
            diff = ", ".join(f"{k} {saved.get(k)} in the checkpoint, {now.get(k)} now"
                             for k in sorted(set(saved) | set(now))
                             if saved.get(k) != now.get(k))
            raise ValueError(f"{path}: trained with a different model config ({diff}); "
                             "pass the same --variant and --model-option values to resume")
        self.model.load_state_dict(ckpt["model"], strict=True)
        ts = ckpt["train_state"]
        self.optimizer.load_state_dict(ts["optimizer"])
        load_scheduler_state(self.scheduler, ts["scheduler"])
        if "scaler" in ts and ts["scaler"]:
            self.scaler.load_state_dict(ts["scaler"])
        self.epoch, self.step, self.best = int(ts["epoch"]), int(ts["step"]), \
            float(ts["best_dice"])
        rng = ts.get("rng", {})
        set_rng_state(rng[self.rank] if isinstance(rng, list) and self.rank < len(rng) else
                      (rng[0] if isinstance(rng, list) and rng else {}))
        self.resumed = True
        self.log(f"resumed from {path}: epoch {self.epoch}, step {self.step}, best Dice "
                 f"{self.best:.4f}")

    def train_epoch(self) -> None:
        """The steps left in epoch ``self.epoch`` (all of them, or up to ``max_steps``)."""
        import torch
        from tqdm import tqdm

        cfg = self.cfg
        self.sampler.set_epoch(self.epoch)
        indices = list(self.sampler)
        done_in_epoch = self.step - self.epoch * self.steps_per_epoch
        keys = [(self.epoch, i) for i in indices[done_in_epoch * cfg.batch_size:]]
        loader = torch.utils.data.DataLoader(
            self.train_ds, batch_size=cfg.batch_size, sampler=keys, collate_fn=_collate,
            num_workers=cfg.num_workers, drop_last=False,
            pin_memory=self.device.type == "cuda", persistent_workers=False)
        bar = tqdm(total=self.steps_per_epoch, initial=done_in_epoch, desc=f"epoch {self.epoch}",
                   unit="step", disable=not self.is_main or cfg.quiet, file=sys.stderr,
                   dynamic_ncols=True)
        for batch in loader:
            self.train_step(batch)
            bar.set_postfix(loss=f"{self.last_loss:.4f}")
            bar.update(1)
            if self.step >= self.max_steps:
                break
        bar.close()

    def train_step(self, batch: tuple[Any, Any, Any, Any]) -> None:
        """One optimizer step on a collated batch; logs its row."""
        import torch

        t0 = time.time()
        device, cfg = self.device, self.cfg
        images, masks, boxes, hw = batch
        b, k = masks.shape[:2]
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True).reshape(b * k, *masks.shape[2:])
        boxes = boxes.to(device).reshape(b * k, 4)
        hw = hw.to(device).repeat_interleave(k, dim=0)
        index = torch.arange(b, device=device).repeat_interleave(k)
        with torch.autocast(device_type=device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            logits = self.forward(images, boxes, index)
        loss, parts = self.criterion(logits.float(), masks, hw)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.per_step_schedule:
            self.scheduler.step()
        self.step += 1
        self.last_loss = float(loss.detach())
        self.losses.append(self.last_loss)
        if self.is_main and self.step % cfg.log_every == 0:
            self.logs.train_step({
                "step": self.step, "epoch": self.epoch, "loss": self.last_loss,
                "focal": float(parts["focal"]), "dice_loss": float(parts["dice_loss"]),
                "lr": self.optimizer.param_groups[0]["lr"],
                "seconds": round(time.time() - t0, 4)})

    def end_epoch(self) -> None:
        """After a complete epoch: step the per-epoch schedule, validate when due (best.pt on
        a new best Dice), write last.pt."""
        cfg = self.cfg
        if not self.per_step_schedule:
            self.scheduler.step()
        self.epoch += 1
        if self.epoch == cfg.epochs or (self.epoch >= cfg.val_start
                                        and self.epoch % max(cfg.val_every, 1) == 0):
            self.val_result = self.validate()
            if self.val_result is not None and self.val_result["dice"] > self.best:
                self.best = self.val_result["dice"]
                self.save_checkpoint("best.pt")
                self.have_best = True
        self.save_checkpoint("last.pt")

    def validate(self) -> dict | None:
        """Dice/IoU on the validation set, computed by rank 0 and broadcast to every rank;
        None without a validation set."""
        import torch.distributed as dist

        from sam_unet.train.evaluate import evaluate_model

        cfg, result = self.cfg, None
        if self.val_ds is not None and self.is_main:
            self.model.eval()
            res = evaluate_model(self.model, self.val_ds, device=self.device, quiet=True,
                                 max_images=cfg.val_max_images, amp=self.amp_dtype)
            self.model.train()
            result = dict(res["overall"])
            if cfg.val_metric == "volume" and res["volumes"]:
                vols = res["volumes"].values()
                result["dice"] = float(np.mean([v["dice_3d"] for v in vols]))
                result["iou"] = float(np.mean([v["iou_3d"] for v in vols]))
            self.logs.validation({"step": self.step, "epoch": self.epoch, **result})
            self.log(f"epoch {self.epoch} step {self.step}: val Dice {result['dice']:.4f} "
                     f"IoU {result['iou']:.4f} ({result['n']} masks)")
        if self.distributed:
            box = [result]
            dist.broadcast_object_list(box, src=0)
            result = box[0]
        return result

    def train_state(self) -> dict:
        """Everything besides the weights that resuming needs; collective under DDP (the RNG
        states of every rank are gathered), so every rank calls it."""
        import torch.distributed as dist

        rng = rng_state()
        if self.distributed:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, rng)
            rng = gathered
        else:
            rng = [rng]
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler_state(self.scheduler),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": self.epoch,
            "step": self.step,
            "best_dice": self.best,
            "rng": rng,
            "world_size": self.world,
        }

    def save_checkpoint(self, name: str) -> None:
        """``out/<name>``: the model in the published layout, the train state and the config
        (written by rank 0, atomically; every rank takes part in gathering the state)."""
        from sam_unet import checkpoints

        ts = self.train_state()
        if self.is_main:
            checkpoints.save_checkpoint(self.model, self.out / name, train_state=ts,
                                        train_config=self.config_dict,
                                        model_info=self.model_info)

    def finish(self) -> dict:
        """last.pt when stopped inside an epoch, a final validation when no best.pt exists,
        equal buffers on every rank, the weights' digest and summary.json."""
        import torch
        import torch.distributed as dist

        if not (self.step > 0 and self.step % self.steps_per_epoch == 0):
            self.save_checkpoint("last.pt")  # stopped inside an epoch: --resume continues
        if self.val_ds is not None and not self.have_best:
            self.val_result = self.validate()
            if self.val_result is not None:
                self.best = max(self.best, self.val_result["dice"])
                self.save_checkpoint("best.pt")
        if self.distributed:
            # BatchNorm running statistics are updated locally by each rank's last forward (on
            # the CPU, without SyncBatchNorm): make every rank hold rank 0's, as saved.
            with torch.no_grad():
                for buf in self.model.buffers():
                    dist.broadcast(buf, src=0)
            dist.barrier()
        digest = state_hash(self.model)
        if self.cfg.write_state_hash:
            (self.out / f"state_rank{self.rank}.sha256").write_text(digest + "\n")
        summary = {
            "epoch": self.epoch, "step": self.step, "best_dice": self.best,
            "last_loss": self.last_loss, "first_loss": self.losses[0] if self.losses else None,
            "losses": self.losses, "seconds": time.time() - self.t_start,
            "world_size": self.world, "state_sha256": digest, "val": self.val_result,
            "out": str(self.out),
        }
        if self.is_main:
            (self.out / "summary.json").write_text(json.dumps(
                {k: v for k, v in summary.items() if k != "losses"}, indent=1) + "\n")
        self.logs.close()
        return summary
