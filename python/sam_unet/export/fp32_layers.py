"""Which layers of an FP16 TensorRT network stay in FP32, and pinning them.

:func:`select_fp32_layers` is the pure choice (tested without TensorRT);
:func:`pin_fp32_layers` applies it to an ``INetworkDefinition``. Pinning is binding only with
``BuilderFlag.OBEY_PRECISION_CONSTRAINTS`` on the builder config.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from sam_unet.runtime.tensorrt_sidecar import DEFAULT_FP32_LAYER_TYPES


def select_fp32_layers(
    layers: Iterable[tuple[str, str, bool]],
    layer_types: Sequence[str] = DEFAULT_FP32_LAYER_TYPES,
    name_patterns: Sequence[str] = (),
) -> list[str]:
    """Names of the layers to pin to FP32.

    ``layers`` yields ``(name, type_name, float_output)`` with the TensorRT ``LayerType`` member
    name (e.g. "NORMALIZATION"); a layer is pinned when its output is floating point and its type
    is in ``layer_types`` or its name matches one of the ``name_patterns`` (regular
    expressions, searched).
    """
    types = {t.upper() for t in layer_types}
    pats = [re.compile(p) for p in name_patterns]
    return [
        name
        for name, type_name, float_output in layers
        if float_output and (type_name.upper() in types or any(p.search(name) for p in pats))
    ]


def _layer_type_name(layer: Any) -> str:
    t = layer.type
    return getattr(t, "name", str(t).rsplit(".", 1)[-1])


def pin_fp32_layers(
    trt: Any, network: Any, layer_types: Sequence[str] = DEFAULT_FP32_LAYER_TYPES,
    name_patterns: Sequence[str] = (),
) -> list[str]:
    """Set ``layer.precision`` and every float output type to FP32 for the selected layers;
    returns their names."""
    float_types = {trt.float32, trt.float16}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    info = []
    for layer in layers:
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        info.append(
            (layer.name, _layer_type_name(layer), any(o.dtype in float_types for o in outs))
        )
    chosen = set(select_fp32_layers(info, layer_types, name_patterns))
    pinned = []
    for layer in layers:
        if layer.name not in chosen:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in float_types:
                layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned
