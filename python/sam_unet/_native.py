"""Access to the compiled extension ``sam_unet._C`` with a clear error when it is missing."""

from __future__ import annotations

from types import ModuleType

_C: ModuleType | None = None


def native() -> ModuleType:
    """Return the compiled module, importing it on first use."""
    global _C
    if _C is None:
        try:
            from sam_unet import _C as module
        except ImportError as exc:  # pragma: no cover - only on a broken install
            raise ImportError(
                "sam_unet._C (the compiled extension) could not be imported. Reinstall the "
                "package with `pip install .` from the project root so the native ops are "
                f"built ({exc})."
            ) from exc
        _C = module
    return _C


def build_info() -> dict:
    """What the native module was compiled with and can use here: see ``sam_unet._C.build_info``
    (``cuda_status``: "ok" or why the CUDA ops cannot run, in words)."""
    return dict(native().build_info())


def cuda_status() -> str:
    """"ok" when the native CUDA ops can run here, else why not, in words: built without CUDA,
    no NVIDIA driver, a driver older than the CUDA runtime the module was built with (with both
    versions), no visible device."""
    return str(native().build_info()["cuda_status"])
