"""Optimisation-profile shapes for any ONNX graph whose inputs are all batch-first.

Each batch range (:class:`~sam_unet.runtime.tensorrt_profiles.Profile`) becomes one TensorRT
optimisation profile that gives every graph input the shapes (min, opt, max) = (range min,
opt, max) on dimension 0 and the graph's own fixed sizes on every other dimension. The same
code serves the whole model (images, boxes), the encoder (images) and the decoder
(image_embeddings, features, boxes). :func:`profile_shapes` is plain Python;
:func:`add_optimization_profiles` makes the TensorRT calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sam_unet.runtime.tensorrt_profiles import Profile

Shape = tuple[int, ...]


class ProfileShapeError(ValueError):
    """A graph input that one batch range cannot describe (dynamic non-batch dims, a scalar,
    or a fixed batch outside the range)."""


def profile_shapes(
    inputs: Sequence[tuple[str, Sequence[int]]], profile: Profile, *, source: str = "the graph"
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """``{input name: (min shape, opt shape, max shape)}`` for one batch range.

    ``inputs`` lists ``(name, shape)`` of every graph input, a dynamic dimension given as a
    negative number (TensorRT's -1). Dimension 0 is the batch: dynamic, or fixed to a size the
    range is exactly; every other dimension must be fixed.
    """
    if not inputs:
        raise ProfileShapeError(f"{source}: the graph has no inputs")
    shapes: dict[str, tuple[Shape, Shape, Shape]] = {}
    for name, dims in inputs:
        dims = tuple(int(d) for d in dims)
        if not dims:
            raise ProfileShapeError(
                f"{source}: input {name!r} is a scalar; every input needs the batch as its "
                "first dimension"
            )
        batch, rest = dims[0], dims[1:]
        if any(d < 0 for d in rest):
            raise ProfileShapeError(
                f"{source}: input {name!r} has dynamic dims {dims} besides the batch; export "
                "it with every dimension but the first fixed"
            )
        if batch >= 0 and not profile.min == profile.max == batch:
            raise ProfileShapeError(
                f"{source}: input {name!r} has a fixed batch of {batch}, so profile {profile} "
                f"cannot be built; export with a dynamic batch or use --profiles {batch}"
            )
        shapes[name] = ((profile.min, *rest), (profile.opt, *rest), (profile.max, *rest))
    return shapes


def network_inputs(network: Any) -> list[tuple[str, Shape]]:
    """``(name, shape)`` of every input of a TensorRT ``INetworkDefinition``."""
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    return [(t.name, tuple(t.shape)) for t in tensors]


def add_optimization_profiles(
    builder: Any, network: Any, config: Any, profiles: Sequence[Profile], *, source: str
) -> None:
    """One ``IOptimizationProfile`` per batch range, in order (the order is the profile index
    at run time), added to the ``IBuilderConfig``."""
    inputs = network_inputs(network)
    for p in profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes(inputs, p, source=source).items():
            profile.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(profile) < 0:
            raise ProfileShapeError(f"{source}: TensorRT rejected optimisation profile {p}")
