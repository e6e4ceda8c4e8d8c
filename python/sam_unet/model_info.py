"""What a model file says about how its model must be fed: variant, intensity normalisation,
window, slicing axis, prompt mode and label names.

Checkpoints written by the project carry it under ``"model_info"``; ONNX files carry it as
``metadata_props`` (key ``sam_unet.model_info``, JSON) beside the identity of the weights they
were exported from (key ``sam_unet.weights_sha256``). ``Engine.segment`` and ``sam-unet segment``
use it for every option the caller leaves unset.

:func:`check_onnx_metadata` decides whether an ONNX file may be used: a file without this
metadata, or with another model's, is refused unless the caller forces it.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

PROMPT_MODES = ("full-slice", "box", "both")
NORMALIZE_MODES = ("slice-minmax", "window")
ONNX_METADATA_KEY = "sam_unet.model_info"
ONNX_WEIGHTS_KEY = "sam_unet.weights_sha256"
ONNX_VARIANT_KEY = "sam_unet.variant"

# Training prompt kinds (``sam-unet train --prompt``) -> the prompt mode the model answers.
PROMPT_MODE_OF_TRAINING = {"full": "full-slice", "box": "box", "both": "both"}


class ModelMismatchError(ValueError):
    """A model file lacks the metadata that says how to feed it, or describes another model."""


@dataclass(frozen=True)
class ModelInfo:
    """How a model was trained, so that inference feeds it the same way.

    variant: registry name ("res34", "res50", "tiny") or "custom".
    normalize: "slice-minmax" or "window"; window: (lo, hi) or None ("window" needs one).
    axis: slicing axis of the (canonical RAS) volume the model was trained on (-1: axial).
    prompt_mode: "full-slice" (trained with whole-slice boxes: no prompt needed), "box"
        (trained with structure boxes: a prompt is required) or "both".
    label_names: {label value: structure name} of what the model segments.

    Invalid values raise ``ValueError`` naming the field.
    """

    variant: str
    normalize: str = "slice-minmax"
    window: tuple[float, float] | None = None
    axis: int = -1
    prompt_mode: str = "full-slice"
    label_names: dict[int, str] = field(default_factory=lambda: {1: "foreground"})

    def __post_init__(self) -> None:
        if not isinstance(self.variant, str) or not self.variant:
            raise ValueError(f"model info: variant must be a non-empty string, got "
                             f"{self.variant!r}")
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f"model info: normalize must be one of {NORMALIZE_MODES}, got "
                             f"{self.normalize!r}")
        if self.window is not None:
            lo, hi = self.window
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"model info: window must be finite (lo, hi) with lo < hi, got "
                                 f"{self.window!r}")
        elif self.normalize == "window":
            raise ValueError("model info: normalize 'window' needs a window (lo, hi)")
        if isinstance(self.axis, bool) or not isinstance(self.axis, int) or \
                not -3 <= self.axis <= 2:
            raise ValueError(f"model info: axis must be an integer in [-3, 2], got {self.axis!r}")
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"model info: prompt_mode must be one of {PROMPT_MODES}, got "
                             f"{self.prompt_mode!r}")
        if not self.label_names or not all(
                isinstance(k, int) and k > 0 and isinstance(v, str)
                for k, v in self.label_names.items()):
            raise ValueError(f"model info: label_names must map label values > 0 to names, got "
                             f"{self.label_names!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = list(self.window) if self.window is not None else None
        d["label_names"] = {str(k): v for k, v in self.label_names.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelInfo:
        """Inverse of :meth:`to_dict`; missing fields take their defaults. Raises ``ValueError``
        for anything malformed."""
        if not isinstance(d, Mapping):
            raise ValueError(f"model info must be a mapping, got {type(d).__name__}")
        try:
            win = d.get("window")
            return cls(
                variant=str(d["variant"]),
                normalize=str(d.get("normalize", "slice-minmax")),
                window=(float(win[0]), float(win[1])) if win is not None else None,
                axis=int(d.get("axis", -1)),
                prompt_mode=str(d.get("prompt_mode", "full-slice")),
                label_names={int(k): str(v)
                             for k, v in (d.get("label_names") or {1: "foreground"}).items()},
            )
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"model info is malformed ({type(exc).__name__}: {exc})") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"model info is not valid JSON ({exc})") from None
        return cls.from_dict(data)


def prompt_mode_of_training(prompt: str | None) -> str:
    """The prompt mode of a model trained with ``sam-unet train --prompt`` ``prompt``
    ("full" -> "full-slice", "box" -> "box", "both" -> "both"; None -> the default)."""
    if prompt is None:
        return "full-slice"
    if prompt in PROMPT_MODES:
        return prompt
    if prompt not in PROMPT_MODE_OF_TRAINING:
        raise ValueError(f"training prompt {prompt!r}: expected one of "
                         f"{tuple(PROMPT_MODE_OF_TRAINING)}")
    return PROMPT_MODE_OF_TRAINING[prompt]


_AXIS_OF_NAME = {"x": 0, "y": 1, "z": -1}


def model_info_from_training(variant: str, prompt: str | None,
                             manifests: list[Mapping[str, Any] | None]) -> ModelInfo:
    """The :class:`ModelInfo` of a model trained with ``sam-unet train --prompt prompt`` on
    folders whose ``sam-unet prepare`` manifests are ``manifests`` (None for folders without
    one): normalize, window and slicing axis come from the manifests when they all agree
    (otherwise the defaults), the prompt mode from ``prompt``."""
    settings = {(m.get("normalize"), tuple(m["window"]) if m.get("window") else None,
                 m.get("axis")) for m in manifests if m}
    normalize, window, axis = "slice-minmax", None, -1
    if len(settings) == 1:
        norm, win, ax = next(iter(settings))
        if norm in NORMALIZE_MODES:
            normalize = norm
            window = (float(win[0]), float(win[1])) if win else None
        if isinstance(ax, str) and ax in _AXIS_OF_NAME:
            axis = _AXIS_OF_NAME[ax]
        elif isinstance(ax, int) and not isinstance(ax, bool):
            axis = ax
    return ModelInfo(variant=variant, normalize=normalize, window=window, axis=axis,
                     prompt_mode=prompt_mode_of_training(prompt))


def _short(digest: str | None) -> str:
    return (digest[:12] + "...") if digest else "none"


def check_onnx_metadata(
    metadata: Mapping[str, str],
    source: str,
    *,
    variant: str | None = None,
    weights_sha256: str | None = None,
    expected_from: str = "the checkpoint",
    force: bool = False,
) -> ModelInfo | None:
    """The :class:`ModelInfo` an ONNX file's ``metadata_props`` carry, checked against what the
    caller expects.

    Refused with :class:`ModelMismatchError` (one line naming ``source`` and the fix) unless
    ``force``: no ``sam_unet.model_info`` entry, an unreadable one, a ``variant`` that differs
    from the file's, or a ``weights_sha256`` (of ``expected_from``) that differs from the
    weights the file was exported from. With ``force`` the problem is reported as one
    ``RuntimeWarning`` and the file's info (or None when it has none) is returned.
    """
    how = ("re-export it with `sam-unet export onnx --checkpoint CKPT -o FILE.onnx`, or pass "
           "--force (force=True) to use it anyway")
    problem: str | None = None
    info: ModelInfo | None = None
    text = metadata.get(ONNX_METADATA_KEY)
    if text is None:
        problem = (f"{source} carries no SAM-UNet model metadata ({ONNX_METADATA_KEY}): its "
                   "normalization, window, slice axis and prompt mode are unknown (exported by "
                   "an older sam_unet or another tool); " + how + " with default settings")
    else:
        try:
            info = ModelInfo.from_json(text)
        except ValueError as exc:
            problem = f"{source} has unreadable model metadata ({exc}); " + how
    if problem is None and info is not None:
        if variant is not None and variant != info.variant:
            problem = (f"{source} holds a {info.variant!r} model but variant {variant!r} was "
                       f"asked for; pass --variant {info.variant} (or none), or pass --force "
                       "(force=True) to use it anyway")
        elif weights_sha256 is not None:
            recorded = metadata.get(ONNX_WEIGHTS_KEY)
            if recorded != weights_sha256:
                problem = (f"{source} was exported from other weights than {expected_from} "
                           f"(weights sha256 {_short(recorded)} in the file, "
                           f"{_short(weights_sha256)} expected); re-export it from "
                           f"{expected_from}, or pass --force (force=True) to use it anyway")
    if problem is None:
        return info
    if not force:
        raise ModelMismatchError(problem)
    warnings.warn(f"forced: {problem.split(';')[0]}", RuntimeWarning, stacklevel=3)
    return info


__all__ = [
    "NORMALIZE_MODES",
    "ONNX_METADATA_KEY",
    "ONNX_VARIANT_KEY",
    "ONNX_WEIGHTS_KEY",
    "PROMPT_MODES",
    "PROMPT_MODE_OF_TRAINING",
    "ModelInfo",
    "ModelMismatchError",
    "check_onnx_metadata",
    "model_info_from_training",
    "prompt_mode_of_training",
]
