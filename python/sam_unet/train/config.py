"""What a training run is asked to do: :class:`TrainConfig`, checked before any work."""

from __future__ import annotations

from dataclasses import dataclass, field

AMP_MODES = ("none", "bf16", "fp16")
SCHEDULES = ("step", "cosine")
VAL_METRICS = ("mean", "volume")


@dataclass
class TrainConfig:
    """Every option of :func:`sam_unet.train.trainer.train` (``sam-unet train`` builds one).

    The whole config is saved in each checkpoint as "train_config" (a JSON-safe dict).
    """

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

    def check(self) -> None:
        """Raise ValueError naming the first option out of its range."""
        if self.val_metric not in VAL_METRICS:
            raise ValueError(f"val_metric must be 'mean' or 'volume', got {self.val_metric!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
