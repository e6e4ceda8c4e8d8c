"""A real backend with its calls counted (tests of sessions and propagation)."""

from __future__ import annotations

from typing import Any


class CountingBackend:
    """Wraps an engine's real backend: every ``encode``, ``decode`` and ``run`` goes to it and
    is recorded as (kind, batch size). ``split=False`` hides encode/decode, as a backend that
    cannot split (an ONNX file without its encoder/decoder graphs)."""

    def __init__(self, inner: Any, *, split: bool = True) -> None:
        self.inner = inner
        self.calls: list[tuple[str, int]] = []
        self.can_split = bool(split and getattr(inner, "can_split", False))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.calls if k == kind)

    def slices(self, kind: str) -> int:
        return sum(n for k, n in self.calls if k == kind)

    def encode(self, images):
        if not self.can_split:
            raise RuntimeError("this backend cannot split")
        self.calls.append(("encode", int(images.shape[0])))
        return self.inner.encode(images)

    def decode(self, image_embeddings, features, boxes):
        if not self.can_split:
            raise RuntimeError("this backend cannot split")
        self.calls.append(("decode", int(boxes.shape[0])))
        return self.inner.decode(image_embeddings, features, boxes)

    def run(self, images, boxes):
        self.calls.append(("run", int(images.shape[0])))
        return self.inner.run(images, boxes)
