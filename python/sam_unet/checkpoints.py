"""Checkpoints: the published SAM-UNet layout, original SAM ViT-B, torchvision ResNet weights.

Nothing is downloaded: every function reads a file the user names (or an in-memory state
dict). Files are read with ``torch.load(weights_only=True)``; a file that needs arbitrary
unpickling is refused unless ``allow_pickle=True`` is passed (only for files you trust).

- :func:`load_checkpoint` -- a published-layout state dict (bare, or under "model") into a model.
- :func:`load_model` -- rebuild the variant (from the file's "variant"/"config" or from the
  key shapes) and load it.
- :func:`save_checkpoint` -- ``{"model": state_dict, "variant": ..., "config": ..., **extra}``.
- :func:`load_sam_checkpoint` -- original SAM ViT-B (1024 layout) into the SAM parts.
- :func:`load_resnet_checkpoint` -- torchvision ResNet-34/50 weights into the CNN branch.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .models.build import VARIANTS, variant_config
from .models.config import SamUNetConfig
from .models.sam_unet import SamUNet

PathOrState = str | os.PathLike | Mapping[str, Any]

SAM_DROPPED_PREFIXES = (
    "mask_decoder.mask_tokens.",
    "mask_decoder.iou_token.",
    "mask_decoder.output_hypernetworks_mlps.",
    "mask_decoder.iou_prediction_head.",
)
_SHOW = 5  # how many keys of each kind an error message lists


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message says why."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


@dataclass
class LoadReport:
    """What a conversion loaded: ``loaded`` (model keys set), ``resized`` (model key, shape in
    the file, shape loaded), ``skipped`` (file keys dropped on purpose), ``not_loaded`` (model
    keys the file does not provide; they keep their current values)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    resized: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    not_loaded: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"{self.source}: loaded {len(self.loaded)} tensors, resized {len(self.resized)}, "
            f"skipped {len(self.skipped)} from the file, {len(self.not_loaded)} model tensors "
            "left as they were"
        ]
        for key, old, new in self.resized:
            lines.append(f"  resized {key}: {old} -> {new}")
        if self.skipped:
            lines.append(f"  skipped: {_preview(self.skipped)}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# reading


def _describe(source: PathOrState) -> str:
    return "state dict" if isinstance(source, Mapping) else f"checkpoint {os.fspath(source)!r}"


def read_checkpoint(
    path: str | os.PathLike, *, map_location: Any = "cpu", allow_pickle: bool = False
) -> Any:
    """``torch.load`` with clear errors naming the path.

    ``weights_only=True`` unless ``allow_pickle`` (arbitrary code execution: trusted files only).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointNotFoundError(f"checkpoint {str(p)!r}: no such file")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} is not a file")
    try:
        return torch.load(p, map_location=map_location, weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        if allow_pickle:
            raise CheckpointError(f"checkpoint {str(p)!r} is corrupt: {exc}") from exc
        raise CheckpointError(
            f"checkpoint {str(p)!r} cannot be read with weights_only=True (it holds objects "
            f"other than tensors and plain containers, or it is not a checkpoint): {exc}. "
            "Pass allow_pickle=True only if you trust the file."
        ) from exc
    except Exception as exc:  # zip/EOF/runtime errors of a truncated or foreign file
        raise CheckpointError(
            f"checkpoint {str(p)!r} is corrupt or not a PyTorch file: {exc}"
        ) from exc


def extract_state_dict(obj: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: bare, or under "model" (or "state_dict").

    A DDP ``module.`` prefix on every key is removed.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict")
    sd: Any = obj
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            sd = obj[key]
            break
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {_preview(bad)}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def _state(
    source: PathOrState, *, map_location: Any = "cpu", allow_pickle: bool = False
) -> tuple[Any, dict[str, torch.Tensor]]:
    if isinstance(source, Mapping):
        obj: Any = source
    else:
        obj = read_checkpoint(source, map_location=map_location, allow_pickle=allow_pickle)
    return obj, extract_state_dict(obj, source=_describe(source))


def _preview(keys: list[str], n: int = _SHOW) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model) if not isinstance(model, SamUNet) else model


# ---------------------------------------------------------------------------------------------
# published layout


def compare_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """(missing keys, unexpected keys, [(key, shape in state, shape in model)])."""
    expected = _unwrap(model).state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    return missing, unexpected, mismatched


def _mismatch_message(
    source: str,
    model: nn.Module,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
) -> str:
    variant = getattr(model, "variant", type(model).__name__)
    parts = [f"{source} does not match the SAM-UNet {variant!r} layout:"]
    if missing:
        parts.append(f"{len(missing)} missing keys ({_preview(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_preview(unexpected)})")
    if mismatched:
        shown = [f"{k}: file {a} vs model {b}" for k, a, b in mismatched]
        parts.append(f"{len(mismatched)} mis-shaped keys ({_preview(shown)})")
    return " ".join(parts)


def load_checkpoint(
    model: nn.Module,
    path_or_state: PathOrState,
    *,
    strict: bool = True,
    map_location: Any = "cpu",
    allow_pickle: bool = False,
) -> nn.Module:
    """Load a published-layout checkpoint (bare state dict or ``{"model": sd}``) into ``model``.

    strict=True: any missing, unexpected or mis-shaped key raises :class:`CheckpointError`
    listing a few of each with counts. strict=False tolerates missing/unexpected keys (never
    mis-shaped ones). Returns ``model``.
    """
    source = _describe(path_or_state)
    _, sd = _state(path_or_state, map_location=map_location, allow_pickle=allow_pickle)
    target = _unwrap(model)
    missing, unexpected, mismatched = compare_state_dict(target, sd)
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointError(_mismatch_message(source, target, missing, unexpected, mismatched))
    target.load_state_dict(sd, strict=strict)
    return model


def infer_variant(state: Mapping[str, torch.Tensor]) -> str:
    """Name the registered variant whose layout fits a published-layout state dict."""
    try:
        vit_dim = int(state["image_encoder.sam_img_encoder.pos_embed"].shape[-1])
        prompt_dim = int(state["image_encoder.sam_img_encoder.neck.0.weight"].shape[0])
        stem = int(state["resnet.stage0.0.weight"].shape[0])
    except KeyError as exc:
        raise CheckpointError(
            f"not a SAM-UNet state dict (no {exc.args[0]!r}); cannot infer the variant"
        ) from None
    block = "bottleneck" if "resnet.stage1.0.conv3.weight" in state else "basic"
    for name, cfg in VARIANTS.items():
        if (cfg.vit_dim, cfg.prompt_dim, cfg.resnet_stem, cfg.resnet_block) == (
            vit_dim,
            prompt_dim,
            stem,
            block,
        ):
            layers = tuple(
                len({k.split(".")[2] for k in state if k.startswith(f"resnet.stage{i}.")})
                for i in range(1, 5)
            )
            if layers == cfg.resnet_layers:
                return name
    raise CheckpointError(
        f"no registered variant has ViT dim {vit_dim}, prompt dim {prompt_dim}, a {block}-block "
        f"ResNet with stem {stem}; known variants: {list(VARIANTS)}"
    )


def load_model(
    path: str | os.PathLike | Mapping[str, Any],
    *,
    variant: str | None = None,
    map_location: Any = "cpu",
    fast: bool = True,
    allow_pickle: bool = False,
) -> SamUNet:
    """Build the right SAM-UNet for a checkpoint and load it strictly (eval mode).

    The variant is ``variant`` if given, else the file's "variant" entry, else inferred from
    the key shapes; a "config" entry in the file (written by :func:`save_checkpoint`) is used
    as is when no ``variant`` is forced.
    """
    obj, sd = _state(path, map_location=map_location, allow_pickle=allow_pickle)
    config_data = obj.get("config") if isinstance(obj, Mapping) and variant is None else None
    if variant is None and isinstance(obj, Mapping) and isinstance(obj.get("variant"), str):
        variant = obj["variant"]
    if variant is None:
        variant = infer_variant(sd)
    try:
        if isinstance(config_data, Mapping):
            config = SamUNetConfig.from_dict(dict(config_data))
        else:
            config = variant_config(variant)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{_describe(path)}: cannot rebuild the model: {exc}") from exc
    model = SamUNet(config=config, variant=variant, fast=fast)
    load_checkpoint(model, sd)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()


def save_checkpoint(model: nn.Module, path: str | os.PathLike, **extra: Any) -> None:
    """Write ``{"model": state_dict, "variant": ..., "config": ..., **extra}`` atomically.

    The state dict is the published layout (loadable by the published code). ``extra`` holds
    anything else worth keeping (epoch, optimizer state, metrics); it cannot use the reserved
    names "model", "variant", "config".
    """
    target = _unwrap(model)
    reserved = {"model", "variant", "config"} & set(extra)
    if reserved:
        raise ValueError(f"save_checkpoint: reserved names in extra: {sorted(reserved)}")
    obj: dict[str, Any] = {"model": target.state_dict()}
    if isinstance(target, SamUNet):
        obj["variant"] = target.variant
        obj["config"] = target.config.to_dict()
    obj.update(extra)
    from sam_unet.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ---------------------------------------------------------------------------------------------
# original SAM ViT-B


def resize_pos_embed(pos_embed: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, H, W, C) -> (1, h, w, C), bilinear, align_corners=False (computed in float32)."""
    x = pos_embed.float().permute(0, 3, 1, 2)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos_embed.dtype).contiguous()


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """(L, C) -> (length, C): linear resize over the length axis, align_corners=False, as SAM's
    ``get_rel_pos`` interpolates (computed in float32)."""
    x = rel_pos.float().reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1)
    x = F.interpolate(x, size=length, mode="linear", align_corners=False)
    return x.reshape(-1, length).permute(1, 0).to(rel_pos.dtype).contiguous()


def _sam_key(key: str) -> str | None:
    if key.startswith("image_encoder."):
        return "image_encoder.sam_img_encoder." + key[len("image_encoder.") :]
    if key.startswith("prompt_encoder."):
        return "prompt_encoder.sam_prompt_encoder." + key[len("prompt_encoder.") :]
    if key.startswith(("mask_decoder.transformer.", "mask_decoder.output_upscaling.")):
        return "mask_decoder.sam_mask_decoder." + key[len("mask_decoder.") :]
    return None


def convert_sam_state_dict(
    sam_state: Mapping[str, torch.Tensor],
    model: SamUNet,
    *,
    source: str = "SAM checkpoint",
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map an original SAM (ViT-B, 1024 layout) state dict onto ``model``'s keys.

    pos_embed is resized bilinearly to the model's token grid, rel_pos tables of the global
    blocks linearly to their length; mask tokens, IoU token/head and hypernetwork MLPs are
    dropped. Raises :class:`CheckpointError` on keys it cannot place or shapes that differ.
    """
    expected = model.state_dict()
    report = LoadReport(source=source)
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for key, value in sam_state.items():
        new = _sam_key(key)
        if new is None:
            if key.startswith(SAM_DROPPED_PREFIXES):
                report.skipped.append(key)
            else:
                unexpected.append(key)
            continue
        if new not in expected:
            unexpected.append(key)
            continue
        want = tuple(expected[new].shape)
        have = tuple(value.shape)
        if have != want:
            if new.endswith(".pos_embed") and value.ndim == 4 and have[-1] == want[-1]:
                value = resize_pos_embed(value, (want[1], want[2]))
                report.resized.append((new, have, want))
            elif new.endswith((".rel_pos_h", ".rel_pos_w")) and value.ndim == 2:
                if have[1] == want[1]:
                    value = resize_rel_pos(value, want[0])
                    report.resized.append((new, have, want))
            if tuple(value.shape) != want:
                mismatched.append((new, have, want))
                continue
        out[new] = value
        report.loaded.append(new)
    sam_prefixes = (
        "image_encoder.sam_img_encoder.",
        "prompt_encoder.sam_prompt_encoder.",
        "mask_decoder.sam_mask_decoder.",
    )
    missing = [k for k in expected if k.startswith(sam_prefixes) and k not in out]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            _mismatch_message(source, model, missing, unexpected, mismatched)
            + " (original SAM ViT-B layout expected)"
        )
    report.not_loaded = [k for k in expected if k not in out]
    return out, report


def load_sam_checkpoint(
    model: SamUNet,
    path_or_state: PathOrState,
    *,
    map_location: Any = "cpu",
    allow_pickle: bool = False,
) -> LoadReport:
    """Load original SAM ViT-B weights (``sam_vit_b_01ec64.pth`` layout) into the SAM parts of
    ``model`` (image encoder, prompt encoder, two-way transformer, output upscaling).

    Other parts (ResNet, adapters, bridges, med_token, hf_mlp, mask-feature convs) keep their
    values. Returns a :class:`LoadReport`.
    """
    source = _describe(path_or_state)
    _, sd = _state(path_or_state, map_location=map_location, allow_pickle=allow_pickle)
    target = _unwrap(model)
    converted, report = convert_sam_state_dict(sd, target, source=source)
    target.load_state_dict(converted, strict=False)
    return report


# ---------------------------------------------------------------------------------------------
# torchvision ResNet


def _resnet_key(key: str) -> str | None:
    if key.startswith("fc."):
        return None
    if key.startswith("conv1."):
        return "resnet.stage0.0." + key[len("conv1.") :]
    if key.startswith("bn1."):
        return "resnet.stage0.1." + key[len("bn1.") :]
    for i in range(1, 5):
        if key.startswith(f"layer{i}."):
            return f"resnet.stage{i}." + key[len(f"layer{i}.") :]
    return "?" + key


def load_resnet_checkpoint(
    model: SamUNet,
    path_or_state: PathOrState,
    *,
    map_location: Any = "cpu",
    allow_pickle: bool = False,
) -> LoadReport:
    """Load torchvision ResNet-34/50 weights (``conv1``, ``bn1``, ``layer1..4``; ``fc`` dropped)
    into the CNN branch. Every branch tensor must be provided with the right shape.
    Returns a :class:`LoadReport`.
    """
    source = _describe(path_or_state)
    _, sd = _state(path_or_state, map_location=map_location, allow_pickle=allow_pickle)
    target = _unwrap(model)
    expected = target.state_dict()
    report = LoadReport(source=source)
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for key, value in sd.items():
        new = _resnet_key(key)
        if new is None:
            report.skipped.append(key)
        elif new not in expected:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(expected[new].shape):
            mismatched.append((new, tuple(value.shape), tuple(expected[new].shape)))
        else:
            out[new] = value
            report.loaded.append(new)
    missing = [k for k in expected if k.startswith("resnet.") and k not in out]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            _mismatch_message(source, target, missing, unexpected, mismatched)
            + " (torchvision ResNet layout expected)"
        )
    report.not_loaded = [k for k in expected if k not in out]
    target.load_state_dict(out, strict=False)
    return report


__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "LoadReport",
    "compare_state_dict",
    "convert_sam_state_dict",
    "extract_state_dict",
    "infer_variant",
    "load_checkpoint",
    "load_model",
    "load_resnet_checkpoint",
    "load_sam_checkpoint",
    "read_checkpoint",
    "resize_pos_embed",
    "resize_rel_pos",
    "save_checkpoint",
]
