"""Evaluate a model on test folders: Dice and IoU at the original resolution.

Each test mask is predicted from its box prompt (largest-component box of the ground truth, no
jitter) or from the full-slice box (``prompt="full"``); the 64x64 logits go through
transforms.postprocess_logits (upsample, crop, resize to the original size, threshold logit > 0)
and are compared with the mask at its original resolution. Results: mean per-mask Dice/IoU
overall, per dataset folder (for an SA-Med2D split: per modality folder), per dataset name and
per modality (from the file names); for folders written by ``sam-unet prepare`` also the 3D
Dice per (volume, label) over the volume's test slices (the manifest says which slice came from
which volume). Both-empty prediction and ground truth count as Dice = IoU = 1.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from sam_unet.train.metrics import MetricAccumulator

_MASK_SUFFIX = re.compile(r"--(\d+)_(\d+)$")


def _volume_lookup(folder: Path) -> dict[str, str]:
    """{absolute mask path: "volume/label"} from a prepare manifest (empty if none)."""
    from sam_unet.data.prepare import read_manifest

    manifest = read_manifest(folder)
    if not manifest:
        return {}
    out = {}
    for vol in manifest["volumes"]:
        for sl in vol.get("slices", []):
            for m in sl.get("masks", []):
                out[str((folder / m["file"]).resolve())] = f"{vol['name']}/label{m['label']}"
    return out


def evaluate_model(
    model,
    dataset,
    *,
    prompt: str | None = None,
    device=None,
    quiet: bool = False,
    max_images: int | None = None,
    batch_images: int = 4,
    amp=None,
) -> dict:
    """Evaluate ``model`` on a TestDataset (or a list of dataset folders)."""
    import torch
    from tqdm import tqdm

    from sam_unet import transforms
    from sam_unet.data.dataset import TestDataset

    if not isinstance(dataset, TestDataset):
        dataset = TestDataset(dataset, prompt=prompt or "box")
    elif prompt is not None and prompt != dataset.prompt:
        dataset.prompt = prompt
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    was_training = model.training
    model.eval()
    acc = MetricAccumulator()
    lookups: dict[str, dict[str, str]] = {}
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    per_mask_rows = []
    bar = tqdm(total=n, desc="evaluate", unit="img", disable=quiet)
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_images):
                items = [dataset[i] for i in range(start, min(n, start + batch_images))]
                images = torch.from_numpy(np.stack([it["image"] for it in items])).to(device)
                boxes = torch.from_numpy(np.concatenate([it["boxes"] for it in items])).to(device)
                index = torch.cat([torch.full((len(it["masks"]),), j, dtype=torch.long)
                                   for j, it in enumerate(items)]).to(device)
                with torch.autocast(device_type=device.type, dtype=amp or torch.float32,
                                    enabled=amp is not None):
                    emb, ms = model.encode(images)
                    logits = model.decode(emb, ms, boxes, index)
                logits = logits.float().cpu().numpy()
                r = 0
                for it in items:
                    folder = it["folder"]
                    if folder not in lookups:
                        lookups[folder] = _volume_lookup(Path(folder))
                    for mask, mpath in zip(it["masks"], it["mask_paths"], strict=True):
                        pred = transforms.postprocess_logits(
                            logits[r, 0], it["resized_hw"], it["original_hw"])
                        r += 1
                        vkey = lookups[folder].get(str(Path(mpath).resolve()))
                        if vkey is None and lookups[folder] == {}:
                            stem = Path(mpath).name.rsplit(".", 1)[0]
                            mm = _MASK_SUFFIX.search(stem)
                            vkey = (f"{it['case']}/label{int(mm.group(1))}" if mm else None)
                        if vkey is not None:
                            vkey = f"{Path(folder).name}:{vkey}"
                        groups = (f"folder:{Path(folder).name}", f"dataset:{it['dataset']}",
                                  f"modality:{it['modality']}")
                        d, j = acc.add(pred, mask, groups, volume_key=vkey)
                        per_mask_rows.append({"mask": mpath, "dice": d, "iou": j})
                bar.update(len(items))
    finally:
        bar.close()
        model.train(was_training)
    summary = acc.summary()
    result = {
        "prompt": dataset.prompt,
        "overall": summary.get("overall", {"dice": float("nan"), "iou": float("nan"), "n": 0}),
        "per_folder": {k.split(":", 1)[1]: v for k, v in summary.items()
                       if k.startswith("folder:")},
        "per_dataset": {k.split(":", 1)[1]: v for k, v in summary.items()
                        if k.startswith("dataset:")},
        "per_modality": {k.split(":", 1)[1]: v for k, v in summary.items()
                         if k.startswith("modality:")},
        "volumes": acc.volumes(),
        "per_mask": per_mask_rows,
    }
    return result


def markdown_table(result: dict, title: str = "Evaluation") -> str:
    lines = [f"# {title}", "", f"Prompt: `{result.get('prompt')}`. Dice/IoU at the original "
             "resolution, mean over masks (both empty = 1).", "",
             "| group | name | masks | Dice | IoU |", "|---|---|---:|---:|---:|"]
    o = result["overall"]
    lines.append(f"| overall | all | {o['n']} | {o['dice']:.4f} | {o['iou']:.4f} |")
    for section, label in (("per_folder", "folder"), ("per_dataset", "dataset"),
                           ("per_modality", "modality")):
        for name, v in sorted(result[section].items()):
            lines.append(f"| {label} | {name} | {v['n']} | {v['dice']:.4f} | {v['iou']:.4f} |")
    if result.get("volumes"):
        lines += ["", "3D Dice per volume and label (over the volume's test slices):", "",
                  "| volume | Dice 3D | IoU 3D | voxels (pred) | voxels (truth) |",
                  "|---|---:|---:|---:|---:|"]
        for name, v in sorted(result["volumes"].items()):
            lines.append(f"| {name} | {v['dice_3d']:.4f} | {v['iou_3d']:.4f} | "
                         f"{v['voxels_pred']} | {v['voxels_gt']} |")
    return "\n".join(lines) + "\n"


def write_results(result: dict, out_dir: str | os.PathLike, *, stem: str = "evaluation",
                  title: str = "Evaluation") -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    jpath.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    mpath.write_text(markdown_table(result, title), encoding="utf-8")
    return jpath, mpath
