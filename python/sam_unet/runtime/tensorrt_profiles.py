"""Optimisation profiles of a TensorRT engine as batch ranges: parse, format, choose.

An engine holds one or more profiles, each a range of batch sizes (min <= opt <= max) it was
optimised for. The builder makes one TensorRT profile per range (every non-batch dimension is
fixed by the ONNX graph); at run time the narrowest range that holds a batch is used. Plain
Python: nothing here needs TensorRT.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Profile:
    """A batch range for one optimisation profile: min <= opt <= max."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"profile {name}={v!r}: must be an integer")
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(
                f"profile {self}: needs 1 <= min <= opt <= max (got min={self.min}, "
                f"opt={self.opt}, max={self.max})"
            )

    def contains(self, batch: int) -> bool:
        return self.min <= batch <= self.max

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


#: An interactive profile (batch 1) and a volume profile (1..64, tuned for 32).
DEFAULT_PROFILES: tuple[Profile, ...] = (Profile(1, 1, 1), Profile(1, 32, 64))


def parse_profile(spec: str) -> Profile:
    """``"1:32:64"`` -> Profile(1, 32, 64); ``"8"`` -> Profile(8, 8, 8) (a fixed batch)."""
    text = spec.strip()
    parts = text.split(":")
    if len(parts) not in (1, 3) or not all(re.fullmatch(r"\d+", p.strip()) for p in parts):
        raise ValueError(
            f"profile {spec!r}: expected MIN:OPT:MAX (e.g. 1:32:64) or a single batch size"
        )
    values = [int(p) for p in parts]
    if len(values) == 1:
        values *= 3
    return Profile(*values)


def parse_profiles(spec: str | Sequence[str] | Sequence[Profile]) -> tuple[Profile, ...]:
    """``"1:1:1,1:32:64"`` (or a list of such strings / Profiles) -> tuple of Profiles.

    Order is kept (it is the profile index in the engine); duplicates and an empty list are
    errors.
    """
    if isinstance(spec, str):
        items: list[Any] = [s for s in spec.split(",") if s.strip()]
    else:
        items = []
        for s in spec:
            items.extend([s] if isinstance(s, Profile) else [t for t in s.split(",") if t.strip()])
    profiles = tuple(p if isinstance(p, Profile) else parse_profile(p) for p in items)
    if not profiles:
        raise ValueError(f"profiles {spec!r}: at least one MIN:OPT:MAX is needed")
    if len(set(profiles)) != len(profiles):
        raise ValueError(f"profiles {format_profiles(profiles)}: duplicate profile")
    return profiles


def format_profiles(profiles: Iterable[Profile]) -> str:
    """The inverse of :func:`parse_profiles`: ``"1:1:1,1:32:64"``."""
    return ",".join(str(p) for p in profiles)


def select_profile(profiles: Sequence[Profile], batch: int) -> int:
    """Index of the profile to run ``batch`` with: the narrowest range containing it, then the
    one whose ``opt`` is closest. Raises ValueError when no profile contains it."""
    candidates = [i for i, p in enumerate(profiles) if p.contains(batch)]
    if not candidates:
        raise ValueError(
            f"batch {batch} is outside every optimisation profile of the engine "
            f"({format_profiles(profiles)}); split the batch or rebuild with --profiles"
        )
    return min(
        candidates,
        key=lambda i: (profiles[i].max - profiles[i].min, abs(profiles[i].opt - batch), i),
    )


def max_batch(profiles: Sequence[Profile]) -> int:
    """The largest batch any of the profiles accepts."""
    return max(p.max for p in profiles)
