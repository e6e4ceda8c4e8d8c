"""Evaluate a model on test folders: Dice and IoU at the original resolution.

Each test mask is predicted from a box prompt; the 64x64 logits go through
transforms.postprocess_logits (upsample, crop, resize to the original size, threshold logit > 0)
and are compared with the mask at its original resolution. Two prompt kinds:

- ``"full"``: the full-slice box (0, 0, w'-1, h'-1) -- what ``sam-unet segment`` gives a slice
  when no prompt is passed, so this is the figure a user gets;
- ``"box"``: the box of the ground truth's largest component, no jitter (the full-slice box for
  an empty mask) -- an oracle prompt that ``segment`` never has.

:func:`evaluate_prompts` computes several kinds in one pass (one encoder pass per image, one
decode per kind); :func:`evaluate_model` computes one. Results: mean per-mask Dice/IoU overall,
per dataset folder (for an SA-Med2D split: per modality folder), per dataset name and per
modality (from the file names); for folders written by ``sam-unet prepare`` also the 3D Dice per
(volume, label) over the volume's test slices (the manifest says which slice came from which
volume). Both-empty prediction and ground truth count as Dice = IoU = 1.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sam_unet.train.metrics import MetricAccumulator

_MASK_SUFFIX = re.compile(r"--(\d+)_(\d+)$")
EVAL_PROMPTS = ("full", "box")
PROMPT_TITLES = {"full": "full-slice", "box": "true-label box"}


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


def full_slice_boxes(item: dict) -> np.ndarray:
    """(K, 4) float32: the full-slice box in the 256 frame, once per mask of ``item``."""
    from sam_unet.data.prompts import full_box

    return np.tile(full_box(item["resized_hw"]), (len(item["masks"]), 1)).astype(np.float32)


def true_label_boxes(item: dict) -> np.ndarray:
    """(K, 4) float32: each mask's largest-component box scaled to the 256 frame (no jitter);
    the full-slice box for an empty mask."""
    from sam_unet import transforms
    from sam_unet.data.prompts import full_box, mask_box

    out = np.zeros((len(item["masks"]), 4), dtype=np.float32)
    for j, m in enumerate(item["masks"]):
        box = mask_box(m)
        if box is None:
            out[j] = full_box(item["resized_hw"])
        else:
            out[j] = transforms.scale_boxes(box[None], item["original_hw"], item["resized_hw"])[0]
    return out


BOX_SOURCES: dict[str, Callable[[dict], np.ndarray]] = {
    "full": full_slice_boxes,
    "box": true_label_boxes,
}


def _run(model, dataset, sources: dict[str, Callable[[dict], np.ndarray]], *, device, quiet,
         max_images, batch_images, amp) -> dict[str, dict]:
    import torch
    from tqdm import tqdm

    from sam_unet import transforms

    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    was_training = model.training
    model.eval()
    accs = {name: MetricAccumulator() for name in sources}
    rows: dict[str, list[dict]] = {name: [] for name in sources}
    lookups: dict[str, dict[str, str]] = {}
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    bar = tqdm(total=n, desc="evaluate", unit="img", disable=quiet)
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_images):
                items = [dataset[i] for i in range(start, min(n, start + batch_images))]
                images = torch.from_numpy(np.stack([it["image"] for it in items])).to(device)
                index = torch.cat([torch.full((len(it["masks"]),), j, dtype=torch.long)
                                   for j, it in enumerate(items)]).to(device)
                with torch.autocast(device_type=device.type, dtype=amp or torch.float32,
                                    enabled=amp is not None):
                    emb, ms = model.encode(images)
                    logits = {}
                    for name, source in sources.items():
                        boxes = torch.from_numpy(
                            np.concatenate([source(it) for it in items])).to(device)
                        logits[name] = model.decode(emb, ms, boxes, index).float().cpu().numpy()
                r = 0
                for it in items:
                    folder = it["folder"]
                    if folder not in lookups:
                        lookups[folder] = _volume_lookup(Path(folder))
                    for mask, mpath in zip(it["masks"], it["mask_paths"], strict=True):
                        vkey = lookups[folder].get(str(Path(mpath).resolve()))
                        if vkey is None and lookups[folder] == {}:
                            stem = Path(mpath).name.rsplit(".", 1)[0]
                            mm = _MASK_SUFFIX.search(stem)
                            vkey = (f"{it['case']}/label{int(mm.group(1))}" if mm else None)
                        if vkey is not None:
                            vkey = f"{Path(folder).name}:{vkey}"
                        groups = (f"folder:{Path(folder).name}", f"dataset:{it['dataset']}",
                                  f"modality:{it['modality']}")
                        for name in sources:
                            pred = transforms.postprocess_logits(
                                logits[name][r, 0], it["resized_hw"], it["original_hw"])
                            d, j = accs[name].add(pred, mask, groups, volume_key=vkey)
                            rows[name].append({"mask": mpath, "dice": d, "iou": j})
                        r += 1
                bar.update(len(items))
    finally:
        bar.close()
        model.train(was_training)
    results = {}
    for name, acc in accs.items():
        summary = acc.summary()
        results[name] = {
            "prompt": name,
            "overall": summary.get("overall", {"dice": float("nan"), "iou": float("nan"),
                                               "n": 0}),
            "per_folder": {k.split(":", 1)[1]: v for k, v in summary.items()
                           if k.startswith("folder:")},
            "per_dataset": {k.split(":", 1)[1]: v for k, v in summary.items()
                            if k.startswith("dataset:")},
            "per_modality": {k.split(":", 1)[1]: v for k, v in summary.items()
                             if k.startswith("modality:")},
            "volumes": acc.volumes(),
            "per_mask": rows[name],
        }
    return results


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
    """Evaluate ``model`` on a TestDataset (or a list of dataset folders) with the boxes the
    dataset gives for ``prompt`` (its own prompt kind when None; "box" for folders).

    Returns {"prompt", "overall", "per_folder", "per_dataset", "per_modality", "volumes",
    "per_mask"}.
    """
    from sam_unet.data.dataset import TestDataset

    if not isinstance(dataset, TestDataset):
        dataset = TestDataset(dataset, prompt=prompt or "box")
    elif prompt is not None and prompt != dataset.prompt:
        dataset.prompt = prompt
    res = _run(model, dataset, {dataset.prompt: lambda it: it["boxes"]}, device=device,
               quiet=quiet, max_images=max_images, batch_images=batch_images, amp=amp)
    return res[dataset.prompt]


def evaluate_prompts(
    model,
    dataset,
    *,
    prompts: Sequence[str] = EVAL_PROMPTS,
    device=None,
    quiet: bool = False,
    max_images: int | None = None,
    batch_images: int = 4,
    amp=None,
) -> dict[str, dict]:
    """Evaluate ``model`` with each prompt kind of ``prompts`` ("full", "box") in one pass over
    ``dataset`` (a TestDataset or dataset folders): {kind: result as :func:`evaluate_model`}."""
    from sam_unet.data.dataset import TestDataset

    unknown = [p for p in prompts if p not in BOX_SOURCES]
    if unknown or not prompts:
        raise ValueError(f"prompts {list(prompts)}: each must be one of {tuple(BOX_SOURCES)}")
    if not isinstance(dataset, TestDataset):
        dataset = TestDataset(dataset, prompt="box")
    sources = {p: BOX_SOURCES[p] for p in dict.fromkeys(prompts)}
    return _run(model, dataset, sources, device=device, quiet=quiet, max_images=max_images,
                batch_images=batch_images, amp=amp)


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


def _fmt(v: dict | None, key: str) -> str:
    return f"{v[key]:.4f}" if v is not None else "-"


def markdown_comparison(results: dict[str, dict], title: str = "Evaluation",
                        prompt_mode: str | None = None) -> str:
    """One table with a Dice/IoU column pair per prompt kind, rows overall / per folder /
    per dataset / per modality, then the 3D Dice per volume per prompt kind."""
    kinds = list(results)
    heads = [PROMPT_TITLES.get(k, k) for k in kinds]
    lines = [f"# {title}", ""]
    lines.append("Dice/IoU at the original resolution, mean over masks (both empty = 1). "
                 "full-slice: the whole slice as the box, as `sam-unet segment` runs without a "
                 "prompt; true-label box: the ground truth's largest-component box, an oracle "
                 "prompt `segment` never has.")
    if prompt_mode:
        lines.append(f"The model was trained for prompt mode `{prompt_mode}`.")
    lines += ["", "| group | name | masks | "
              + " | ".join(f"Dice ({h}) | IoU ({h})" for h in heads) + " |",
              "|---|---|---:|" + "---:|---:|" * len(kinds)]
    first = results[kinds[0]]

    def row(label: str, name: str, values: list[dict | None]) -> str:
        n = next((v["n"] for v in values if v is not None), 0)
        cells = " | ".join(f"{_fmt(v, 'dice')} | {_fmt(v, 'iou')}" for v in values)
        return f"| {label} | {name} | {n} | {cells} |"

    lines.append(row("overall", "all", [results[k]["overall"] for k in kinds]))
    for section, label in (("per_folder", "folder"), ("per_dataset", "dataset"),
                           ("per_modality", "modality")):
        for name in sorted(first[section]):
            lines.append(row(label, name, [results[k][section].get(name) for k in kinds]))
    if first.get("volumes"):
        lines += ["", "3D Dice per volume and label (over the volume's test slices):", "",
                  "| volume | " + " | ".join(f"Dice 3D ({h})" for h in heads)
                  + " | voxels (truth) |", "|---|" + "---:|" * (len(kinds) + 1)]
        for name, v in sorted(first["volumes"].items()):
            cells = " | ".join(
                f"{results[k]['volumes'][name]['dice_3d']:.4f}" if name in results[k]["volumes"]
                else "-" for k in kinds)
            lines.append(f"| {name} | {cells} | {v['voxels_gt']} |")
    return "\n".join(lines) + "\n"


def write_results(result: dict[str, Any], out_dir: str | os.PathLike, *,
                  stem: str = "evaluation", title: str = "Evaluation",
                  markdown: str | None = None) -> tuple[Path, Path]:
    """``<stem>.json`` (``result``) and ``<stem>.md`` (``markdown``, else
    :func:`markdown_table` of ``result``) in ``out_dir``, each written atomically."""
    from sam_unet.atomic import write_bytes_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    write_bytes_atomic(jpath, (json.dumps(result, indent=1) + "\n").encode())
    write_bytes_atomic(mpath, (markdown if markdown is not None
                               else markdown_table(result, title)).encode())
    return jpath, mpath
