"""What a model file says about how its model must be fed: variant, intensity normalisation,
window, slicing axis, prompt mode and label names.

Checkpoints written by the project carry it under ``"model_info"``; ONNX files carry it as
``metadata_props`` (key ``sam_unet.model_info``, JSON). ``Engine.segment`` and ``sam-unet segment``
use it for every option the caller leaves unset.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

PROMPT_MODES = ("full-slice", "box", "both")
ONNX_METADATA_KEY = "sam_unet.model_info"


@dataclass(frozen=True)
class ModelInfo:
    """How a model was trained, so that inference feeds it the same way.

    variant: registry name ("res34", "res50", "tiny") or "custom".
    normalize: "slice-minmax" or "window"; window: (lo, hi) or None.
    axis: slicing axis of the (canonical RAS) volume the model was trained on (-1: axial).
    prompt_mode: "full-slice" (trained with whole-slice boxes: no prompt needed), "box"
        (trained with structure boxes: a prompt is required) or "both".
    label_names: {label value: structure name} of what the model segments.
    """

    variant: str
    normalize: str = "slice-minmax"
    window: tuple[float, float] | None = None
    axis: int = -1
    prompt_mode: str = "full-slice"
    label_names: dict[int, str] = field(default_factory=lambda: {1: "foreground"})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = list(self.window) if self.window is not None else None
        d["label_names"] = {str(k): v for k, v in self.label_names.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        win = d.get("window")
        return cls(
            variant=str(d["variant"]),
            normalize=str(d.get("normalize", "slice-minmax")),
            window=(float(win[0]), float(win[1])) if win is not None else None,
            axis=int(d.get("axis", -1)),
            prompt_mode=str(d.get("prompt_mode", "full-slice")),
            label_names={int(k): str(v) for k, v in (d.get("label_names") or {1: "foreground"})
                         .items()},
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        return cls.from_dict(json.loads(text))
