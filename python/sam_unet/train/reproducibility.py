"""Seeding, global RNG states as checkpointable data, and a digest of a model's weights."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's legacy global and torch's RNGs (third-party code may use them)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code may use the global RNG
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Global RNG states (torch, NumPy legacy, Python, CUDA when present) in a form
    ``torch.load(weights_only=True)`` accepts."""
    import torch

    mt = np.random.get_state()  # noqa: NPY002 - saving the legacy global state on purpose
    py = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(mt[1].astype(np.int64)), "pos": int(mt[2]),
                  "has_gauss": int(mt[3]), "cached_gaussian": float(mt[4])},
        "python": {"version": py[0], "state": list(py[1]), "gauss": py[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (missing parts are left alone)."""
    import torch

    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        n = state["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        legacy = ("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"])
        np.random.set_state(legacy)  # noqa: NPY002 - restoring the legacy global state
    if "python" in state:
        p = state["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def state_hash(model: Any) -> str:
    """SHA-256 over the state dict (keys in order, dtype, shape and bytes)."""
    import torch

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.dim() else
                 t.reshape(1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
