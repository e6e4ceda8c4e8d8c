"""Checkpoints: the published SAM-UNet layout, original SAM ViT-B, torchvision ResNet weights.

Nothing is downloaded: every function reads a file the user names (or an in-memory state
dict). Files are read with ``torch.load(weights_only=True)``; a file that needs arbitrary
unpickling is refused unless ``allow_pickle=True`` is passed (only for files you trust).

- :func:`load_checkpoint` -- a published-layout state dict (bare, or under "model") into a model.
- :func:`load_model` -- rebuild the variant (from the file's "variant"/"config" or from the
  key shapes) and load it; :func:`load_model_with_report` also says what was checked.
- :func:`save_checkpoint` -- ``{"model": state_dict, "variant": ..., "config": ...,
  "model_info": ..., "content_sha256": ..., **extra}``.
- :func:`load_sam_checkpoint` -- original SAM ViT-B (1024 layout) into the SAM parts.
- :func:`load_resnet_checkpoint` -- torchvision ResNet-34/50 weights into the CNN branch.

Every load checks the weights: a floating tensor holding NaN or Inf is refused (naming the
tensors), and a file written by :func:`save_checkpoint` carries a content hash
(:func:`checkpoint_digest`: SHA-256 over the state dict's names, dtypes, shapes and bytes, then
the variant, config and model info) that is verified, so a damaged file never loads silently.
Third-party files (published SAM-UNet, SAM ViT-B, torchvision) have no hash: they load, and
the :class:`LoadReport` says that no hash was checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .model_info import ModelInfo, prompt_mode_of_training
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
HASH_KEY = "content_sha256"
RESERVED = ("model", "variant", "config", "model_info", HASH_KEY)

# LoadReport.integrity values
VERIFIED = "content hash verified"
NO_HASH = "no content hash in the file: not checked"
IN_MEMORY = "in-memory state dict: no hash to check"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message says why."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


@dataclass
class LoadReport:
    """What a load did: ``loaded`` (model keys set), ``resized`` (model key, shape in
    the file, shape loaded), ``skipped`` (file keys dropped on purpose), ``not_loaded`` (model
    keys the file does not provide; they keep their current values).

    ``hash_checked``: the file's content hash was verified; ``integrity`` says so in words
    (:data:`VERIFIED`, :data:`NO_HASH` for third-party files, :data:`IN_MEMORY`).
    ``model_info``: how the model must be fed (:func:`load_model_with_report` only).
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    resized: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    not_loaded: list[str] = field(default_factory=list)
    hash_checked: bool = False
    integrity: str = ""
    model_info: ModelInfo | None = None

    def __str__(self) -> str:
        lines = [
            f"{self.source}: loaded {len(self.loaded)} tensors, resized {len(self.resized)}, "
            f"skipped {len(self.skipped)} from the file, {len(self.not_loaded)} model tensors "
            f"left as they were; {self.integrity or 'integrity not checked'}"
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


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """The informative line of a library error (torch's weights-only message spans many)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text[text.index(marker) + len(marker):]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    line = line.split(". This is an internal miniz error")[0]  # torch's advice for its own bug
    return line if len(line) <= limit else line[: limit - 3] + "..."


def read_checkpoint(
    path: str | os.PathLike, *, map_location: Any = "cpu", allow_pickle: bool = False
) -> Any:
    """``torch.load`` with clear one-line errors naming the path (:class:`CheckpointError`).

    ``weights_only=True`` unless ``allow_pickle`` (arbitrary code execution: trusted files only).
    The content is not checked here: see :func:`verify_checkpoint`.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointNotFoundError(f"checkpoint {str(p)!r}: no such file")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} is not a file")
    if p.suffix.lower() == ".onnx":
        raise CheckpointError(f"{str(p)!r} is an ONNX file, not a PyTorch checkpoint; pass it as "
                              "an ONNX model (--onnx, Engine.from_onnx)")
    try:
        return torch.load(p, map_location=map_location, weights_only=not allow_pickle)
    except (PermissionError, IsADirectoryError) as exc:
        raise CheckpointError(
            f"checkpoint {str(p)!r} cannot be read ({exc.strerror or exc}); check its "
            "permissions"
        ) from exc
    except pickle.UnpicklingError as exc:
        if allow_pickle:
            raise CheckpointError(
                f"checkpoint {str(p)!r} is corrupt ({_one_line(exc)}); re-download or re-export it"
            ) from exc
        raise CheckpointError(
            f"checkpoint {str(p)!r} cannot be read with weights_only=True (it holds objects "
            f"other than tensors and plain containers, or it is damaged: {_one_line(exc)}); "
            "pass allow_pickle=True only if you trust the file"
        ) from exc
    except Exception as exc:  # zip/EOF/runtime errors of a truncated, damaged or foreign file
        raise CheckpointError(
            f"checkpoint {str(p)!r} is damaged or not a PyTorch file ({_one_line(exc)}); "
            "re-download or re-export it"
        ) from exc


# ---------------------------------------------------------------------------------------------
# integrity


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def _hash_state(h: Any, state: Mapping[str, torch.Tensor]) -> None:
    for key, value in state.items():
        h.update(key.encode())
        h.update(str(value.dtype).encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(_tensor_bytes(value))


def state_dict_sha256(state: Mapping[str, torch.Tensor], *, as_float32: bool = False) -> str:
    """SHA-256 over a state dict in key order: each name, dtype, shape and raw bytes.

    ``as_float32``: floating tensors are hashed as float32 (the identity of the weights a model
    computes with, whatever precision a file stores them in).
    """
    h = hashlib.sha256()
    if as_float32:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    _hash_state(h, state)
    return h.hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """The identity of a model's weights: :func:`state_dict_sha256` of its state dict as
    float32 (what ONNX export records as ``sam_unet.weights_sha256``)."""
    return state_dict_sha256(_unwrap(model).state_dict(), as_float32=True)


def checkpoint_digest(obj: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> str:
    """The content hash :func:`save_checkpoint` writes: the state dict (names, dtypes, shapes,
    bytes, in key order), then the canonical JSON of its "variant", "config" and "model_info"."""
    h = hashlib.sha256()
    _hash_state(h, state)
    meta = {k: obj[k] for k in ("variant", "config", "model_info") if k in obj}
    h.update(b"\0meta\0")
    h.update(json.dumps(meta, sort_keys=True, default=list).encode())
    return h.hexdigest()


def check_finite(state: Mapping[str, torch.Tensor], *, source: str = "state dict") -> None:
    """Raise :class:`CheckpointError` naming the first tensors that hold NaN or Inf."""
    bad: list[str] = []
    count = 0
    for key, value in state.items():
        if not value.is_floating_point() or value.numel() == 0:
            continue
        finite = torch.isfinite(value)
        if bool(finite.all()):
            continue
        count += 1
        if len(bad) < _SHOW:
            n_nan = int(torch.isnan(value).sum())
            n_inf = int(value.numel() - int(finite.sum()) - n_nan)
            kinds = ", ".join(s for s in (f"{n_nan} NaN" if n_nan else "",
                                          f"{n_inf} Inf" if n_inf else "") if s)
            bad.append(f"{key} ({kinds})")
    if count:
        more = f", ... ({count - len(bad)} more)" if count > len(bad) else ""
        raise CheckpointError(
            f"{source} has non-finite weights (NaN or Inf) in {count} tensor(s): "
            f"{', '.join(bad)}{more}; the file is damaged or its training diverged: use another "
            "checkpoint"
        )


def verify_checkpoint(obj: Any, state: Mapping[str, torch.Tensor], *, source: str) -> str:
    """Check a loaded checkpoint: its content hash when it carries one, then that every
    floating weight is finite. Returns :data:`VERIFIED` or :data:`NO_HASH`; raises
    :class:`CheckpointError` ("... is damaged: content hash mismatch ...") otherwise."""
    integrity = NO_HASH
    if isinstance(obj, Mapping) and HASH_KEY in obj:
        recorded = obj[HASH_KEY]
        if not isinstance(recorded, str) or recorded != checkpoint_digest(obj, state):
            raise CheckpointError(
                f"{source} is damaged: content hash mismatch; re-download or re-export it"
            )
        integrity = VERIFIED
    check_finite(state, source=source)
    return integrity


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
) -> tuple[Any, dict[str, torch.Tensor], str]:
    """(loaded object, state dict, integrity) after :func:`verify_checkpoint`."""
    if isinstance(source, Mapping):
        obj: Any = source
    else:
        obj = read_checkpoint(source, map_location=map_location, allow_pickle=allow_pickle)
    try:
        sd = extract_state_dict(obj, source=_describe(source))
    except CheckpointError:
        if isinstance(obj, Mapping) and HASH_KEY in obj:  # written by save_checkpoint
            raise CheckpointError(f"{_describe(source)} is damaged: its state dict cannot be "
                                  "found; re-download or re-export it") from None
        raise
    integrity = verify_checkpoint(obj, sd, source=_describe(source))
    if isinstance(source, Mapping) and integrity == NO_HASH:
        integrity = IN_MEMORY
    return obj, sd, integrity


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
    _, sd, _ = _state(path_or_state, map_location=map_location, allow_pickle=allow_pickle)
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
    as is when no ``variant`` is forced. The weights are checked (:func:`verify_checkpoint`).
    """
    return load_model_with_report(path, variant=variant, map_location=map_location, fast=fast,
                                  allow_pickle=allow_pickle)[0]


def checkpoint_model_info(obj: Any, *, variant: str, source: str = "checkpoint") -> ModelInfo:
    """The :class:`ModelInfo` of a loaded checkpoint: its "model_info" entry, else one derived
    from what older files have (the variant, a "prompt" entry or the training config's prompt)
    with the defaults for the rest (slice-minmax, no window, axial)."""
    raw = obj.get("model_info") if isinstance(obj, Mapping) else None
    if isinstance(raw, ModelInfo):
        return raw
    if raw is not None:
        try:
            return ModelInfo.from_json(raw) if isinstance(raw, str) else ModelInfo.from_dict(raw)
        except ValueError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
    prompt = None
    if isinstance(obj, Mapping):
        train_config = obj.get("train_config")
        prompt = obj.get("prompt") or (train_config.get("prompt")
                                       if isinstance(train_config, Mapping) else None)
    try:
        mode = prompt_mode_of_training(prompt if isinstance(prompt, str) else None)
    except ValueError:
        mode = "full-slice"
    return ModelInfo(variant=variant, prompt_mode=mode)


def load_model_with_report(
    path: str | os.PathLike | Mapping[str, Any],
    *,
    variant: str | None = None,
    map_location: Any = "cpu",
    fast: bool = True,
    allow_pickle: bool = False,
) -> tuple[SamUNet, LoadReport]:
    """:func:`load_model`, plus a :class:`LoadReport` saying whether the content hash was
    verified and holding the model's :class:`ModelInfo`."""
    obj, sd, integrity = _state(path, map_location=map_location, allow_pickle=allow_pickle)
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
    source = _describe(path)
    missing, unexpected, mismatched = compare_state_dict(model, sd)
    if missing or unexpected or mismatched:
        raise CheckpointError(_mismatch_message(source, model, missing, unexpected, mismatched))
    model.load_state_dict(sd, strict=True)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    report = LoadReport(source=source, loaded=list(sd), hash_checked=integrity == VERIFIED,
                        integrity=integrity,
                        model_info=checkpoint_model_info(obj, variant=variant, source=source))
    return model.eval(), report


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    model_info: ModelInfo | Mapping[str, Any] | None = None,
    **extra: Any,
) -> None:
    """Write ``{"model": state_dict, "variant": ..., "config": ..., "model_info": ...,
    "content_sha256": ..., **extra}`` atomically.

    The state dict is the published layout (loadable by the published code). ``model_info``
    says how the model must be fed; when None it is derived from the variant and a "prompt" or
    "train_config" entry of ``extra`` (see :func:`checkpoint_model_info`). "content_sha256" is
    :func:`checkpoint_digest`, verified by every load. ``extra`` holds anything else worth
    keeping (epoch, optimizer state, metrics); it cannot use the reserved names
    ("model", "variant", "config", "model_info", "content_sha256").
    """
    target = _unwrap(model)
    reserved = set(RESERVED) & set(extra)
    if reserved:
        raise ValueError(f"save_checkpoint: reserved names in extra: {sorted(reserved)}")
    state = target.state_dict()
    obj: dict[str, Any] = {"model": state}
    variant = str(getattr(target, "variant", None) or "custom")
    if isinstance(target, SamUNet):
        obj["variant"] = target.variant
        obj["config"] = target.config.to_dict()
    if model_info is None:
        model_info = checkpoint_model_info(extra, variant=variant)
    elif not isinstance(model_info, ModelInfo):
        model_info = ModelInfo.from_dict(model_info)
    obj["model_info"] = model_info.to_dict()
    obj.update(extra)
    obj[HASH_KEY] = checkpoint_digest(obj, state)
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
    _, sd, integrity = _state(path_or_state, map_location=map_location, allow_pickle=allow_pickle)
    target = _unwrap(model)
    converted, report = convert_sam_state_dict(sd, target, source=source)
    report.hash_checked, report.integrity = integrity == VERIFIED, integrity
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
    _, sd, integrity = _state(path_or_state, map_location=map_location, allow_pickle=allow_pickle)
    target = _unwrap(model)
    expected = target.state_dict()
    report = LoadReport(source=source, hash_checked=integrity == VERIFIED, integrity=integrity)
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
    "IN_MEMORY",
    "NO_HASH",
    "VERIFIED",
    "CheckpointError",
    "CheckpointNotFoundError",
    "LoadReport",
    "check_finite",
    "checkpoint_digest",
    "checkpoint_model_info",
    "compare_state_dict",
    "convert_sam_state_dict",
    "extract_state_dict",
    "infer_variant",
    "load_checkpoint",
    "load_model",
    "load_model_with_report",
    "load_resnet_checkpoint",
    "load_sam_checkpoint",
    "read_checkpoint",
    "resize_pos_embed",
    "resize_rel_pos",
    "save_checkpoint",
    "state_dict_sha256",
    "verify_checkpoint",
    "weights_sha256",
]
