"""The logs of one training run: train_log.csv, val_log.csv and TensorBoard scalars.

Only rank 0 writes them; on other ranks (``enabled=False``) every call does nothing.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

TRAIN_FIELDS = ["step", "epoch", "loss", "focal", "dice_loss", "lr", "seconds"]
VAL_FIELDS = ["step", "epoch", "dice", "iou", "n"]


class CsvLog:
    """Rows appended to a CSV file and flushed at once (a killed run keeps what it logged)."""

    def __init__(self, path: Path, fields: list[str], append: bool) -> None:
        self.path, self.fields = path, fields
        new = not (append and path.exists())
        self.fh = open(path, "w" if new else "a", newline="", encoding="utf-8")  # noqa: SIM115
        self.w = csv.DictWriter(self.fh, fieldnames=fields)
        if new:
            self.w.writeheader()

    def write(self, row: dict) -> None:
        self.w.writerow({k: row.get(k, "") for k in self.fields})
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class RunLog:
    """``out/train_log.csv`` (one row per logged step), ``out/val_log.csv`` (one per
    validation) and, when asked for and importable, TensorBoard scalars under
    ``out/tensorboard``. ``append=True`` (a resumed run) continues existing CSV files."""

    def __init__(self, out: Path, *, enabled: bool, append: bool, tensorboard: bool) -> None:
        self.train_csv = self.val_csv = None
        self.tb: Any = None
        if not enabled:
            return
        self.train_csv = CsvLog(out / "train_log.csv", TRAIN_FIELDS, append)
        self.val_csv = CsvLog(out / "val_log.csv", VAL_FIELDS, append)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except Exception:  # noqa: BLE001 - tensorboard absent or broken: CSV only
                self.tb = None

    def train_step(self, row: dict) -> None:
        """A training step: the TRAIN_FIELDS of ``row``; its loss also to TensorBoard."""
        if self.train_csv is not None:
            self.train_csv.write(row)
        if self.tb is not None:
            self.tb.add_scalar("train/loss", row["loss"], row["step"])

    def validation(self, row: dict) -> None:
        """A validation result: the VAL_FIELDS of ``row``; its Dice also to TensorBoard."""
        if self.val_csv is not None:
            self.val_csv.write(row)
        if self.tb is not None:
            self.tb.add_scalar("val/dice", row["dice"], row["step"])

    def close(self) -> None:
        for log in (self.train_csv, self.val_csv):
            if log is not None:
                log.close()
        if self.tb is not None:
            self.tb.close()
