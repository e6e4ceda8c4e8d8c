"""Export a SAM-UNet model to ONNX and check the graph against PyTorch.

The graph has a fixed 256x256 input and a dynamic batch:

- inputs ``images`` (B, 3, 256, 256) float32 and ``boxes`` (B, 4) float32 (256 frame),
- output ``logits`` (B, 1, 64, 64) float32,

opset >= 17 so that LayerNorm (and LayerNorm2d, written as permute + ``F.layer_norm``) is a single
``LayerNormalization`` node, which TensorRT maps to one normalisation layer it can keep in FP32.
The file carries its provenance in ``metadata_props`` (see :func:`onnx_metadata`): how the model
must be fed (``sam_unet.model_info``, a :class:`~sam_unet.model_info.ModelInfo` as JSON) and the
identity of the weights it holds (``sam_unet.weights_sha256``), so the runtime can refuse a file
meant for another model. It is written atomically: a failed export never leaves a partial
``.onnx`` behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INPUT_NAMES = ("images", "boxes")
OUTPUT_NAMES = ("logits",)
DEFAULT_OPSET = 17
MIN_OPSET = 17
EXPORTERS = ("auto", "torchscript", "dynamo")
DEFAULT_RTOL = 1e-4

class OnnxExportError(RuntimeError):
    """The model could not be exported, or the exported graph is not what the runtime expects."""


class OnnxParityError(OnnxExportError):
    """ONNX Runtime's logits differ from PyTorch's by more than the tolerance."""


class InvalidOnnxError(ValueError):
    """A file that onnx or ONNX Runtime cannot read as a model (truncated, damaged, not ONNX)."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of a library error, shortened (ONNX Runtime's span many)."""
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()),
                type(exc).__name__)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def invalid_onnx(path: str | os.PathLike, exc: BaseException) -> InvalidOnnxError:
    return InvalidOnnxError(
        f"{os.fspath(path)} is not a valid ONNX model ({type(exc).__name__}: {one_line(exc)}); "
        "re-export it with `sam-unet export onnx`"
    )


@dataclass(frozen=True)
class ParityReport:
    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    max_abs_ref: float
    rel_error: float  # max |ort - torch| / max |torch|
    rtol: float

    @property
    def ok(self) -> bool:
        return self.rel_error <= self.rtol

    def __str__(self) -> str:
        return (
            f"ONNX Runtime vs PyTorch on batches {list(self.batch_sizes)}: "
            f"max |diff| {self.max_abs_diff:.3g}, max |ref| {self.max_abs_ref:.3g}, "
            f"relative error {self.rel_error:.3g} (limit {self.rtol:g})"
        )


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def preprocessing_constants() -> dict[str, Any]:
    """Image size, logit size, mean and std as the reference transforms define them."""
    from sam_unet import transforms as T

    return {
        "image_size": int(T.IMAGE_SIZE),
        "logit_size": int(T.LOGIT_SIZE),
        "pixel_mean": [float(v) for v in T.PIXEL_MEAN],
        "pixel_std": [float(v) for v in T.PIXEL_STD],
    }


def onnx_metadata(
    variant: str,
    *,
    checkpoint_sha256: str | None,
    opset: int,
    exporter: str,
    model_info=None,
    weights_sha256: str | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` written into every exported file (all values are strings).

    ``model_info`` (a ModelInfo; default: the variant with default settings) goes under
    ``sam_unet.model_info``; ``weights_sha256`` (the exported weights' identity, see
    ``sam_unet.checkpoints.weights_sha256``) under ``sam_unet.weights_sha256``.
    """
    from sam_unet import __version__
    from sam_unet.model_info import ONNX_METADATA_KEY, ONNX_WEIGHTS_KEY, ModelInfo

    pre = preprocessing_constants()
    info = model_info if model_info is not None else ModelInfo(variant=variant)
    return {
        "sam_unet.version": __version__,
        "sam_unet.variant": variant,
        ONNX_METADATA_KEY: info.to_json(),
        ONNX_WEIGHTS_KEY: weights_sha256 or "unknown",
        "sam_unet.checkpoint_sha256": checkpoint_sha256 or "none (random init)",
        "sam_unet.image_size": str(pre["image_size"]),
        "sam_unet.logit_size": str(pre["logit_size"]),
        "sam_unet.pixel_mean": json.dumps(pre["pixel_mean"]),
        "sam_unet.pixel_std": json.dumps(pre["pixel_std"]),
        "sam_unet.inputs": "images (B,3,256,256) float32; boxes (B,4) float32 xyxy, 256 frame",
        "sam_unet.outputs": "logits (B,1,64,64) float32",
        "sam_unet.opset": str(opset),
        "sam_unet.exporter": exporter,
    }


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata_props of an ONNX file (external weight files are not read).

    Raises ``FileNotFoundError`` or :class:`InvalidOnnxError` (one line naming the file).
    """
    import onnx

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.fspath(path)}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError and friends
        raise invalid_onnx(path, exc) from exc
    if not model.graph.node:
        raise invalid_onnx(path, ValueError("the file holds no graph"))
    return {p.key: p.value for p in model.metadata_props}


def example_inputs(batch: int = 2, *, seed: int = 0, dtype=None, device="cpu"):
    """Random images (normalised-like) and valid boxes in the 256 frame."""
    import torch

    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 256, 256, generator=g)
    xy0 = torch.rand(batch, 2, generator=g) * 160
    wh = 16 + torch.rand(batch, 2, generator=g) * 80
    boxes = torch.cat([xy0, (xy0 + wh).clamp(max=255.0)], dim=1)
    if dtype is not None:
        images = images.to(dtype)
    return images.to(device), boxes.to(device)


# --------------------------------------------------------------------------------------------
# export


def _cpu_fp32_eval(model):
    """``model`` in eval mode, float32, on the CPU; a copy when the caller's model is not
    already so (the caller's model keeps its device, dtype and mode)."""
    import copy

    import torch

    params = list(model.parameters()) + list(model.buffers())
    ready = not model.training and all(
        p.device.type == "cpu" and (p.dtype == torch.float32 or not p.is_floating_point())
        for p in params
    )
    return model if ready else copy.deepcopy(model).eval().float().cpu()


def _export_torchscript(model, args, path: str, opset: int) -> None:
    import torch

    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in torch >= 2.9 but still gives the cleanest
        # graph (LayerNormalization at opset 17, constant-folded shapes).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are fixed but batch
        torch.onnx.export(
            model,
            args,
            path,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamic_axes={name: {0: "batch"} for name in (*INPUT_NAMES, *OUTPUT_NAMES)},
            do_constant_folding=True,
            dynamo=False,
        )


def _export_dynamo(model, args, path: str, opset: int) -> int:
    import torch

    # The dynamo exporter implements opset >= 18 (a lower request is down-converted, which fails
    # for some Reduce ops), so ask for 18 directly.
    opset = max(opset, 18)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        model,
        args,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        opset_version=opset,
        dynamo=True,
        dynamic_shapes={"images": {0: batch}, "boxes": {0: batch}},
        external_data=False,
        verbose=False,
    )
    program.save(path, external_data=False)
    return opset


def _torchscript_available() -> bool:
    import inspect

    import torch

    try:
        return "dynamo" in inspect.signature(torch.onnx.export).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def _atomic_save(model_proto, path: Path) -> None:
    import onnx

    from sam_unet.atomic import atomic_path

    with atomic_path(path) as tmp:
        onnx.save(model_proto, str(tmp))


_DECLARED = {"images": (3, 256, 256), "boxes": (4,), "logits": (1, 64, 64)}


def _declare_static_dims(model_proto) -> None:
    """Declare the fixed non-batch dims of the graph inputs/outputs and name the batch dim.

    The TorchScript exporter leaves the 64x64 of ``logits`` symbolic when the batch is dynamic
    (it cannot prove them constant through the shape arithmetic); they are fixed by
    construction, and :func:`verify_onnx` checks the real output shape.
    """
    for v in (*model_proto.graph.input, *model_proto.graph.output):
        fixed = _DECLARED.get(v.name)
        dims = v.type.tensor_type.shape.dim
        if fixed is None or len(dims) != len(fixed) + 1:
            continue
        dims[0].Clear()
        dims[0].dim_param = "batch"
        for d, value in zip(list(dims)[1:], fixed, strict=True):
            if d.HasField("dim_value") and d.dim_value != value:
                raise OnnxExportError(f"{v.name}: dim {d.dim_value} where {value} is expected")
            d.Clear()
            d.dim_value = value


def check_graph(model_proto) -> None:
    """Structure checks the runtime relies on: names, shapes, opset, single-node LayerNorm."""
    import onnx

    onnx.checker.check_model(model_proto)
    opset = max(
        (o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), default=0
    )
    if opset < MIN_OPSET:
        raise OnnxExportError(f"opset {opset} < {MIN_OPSET}: LayerNorm would not be one node")
    g = model_proto.graph
    inputs = {v.name: v for v in g.input}
    outputs = {v.name: v for v in g.output}
    expected_in = {"images": [None, 3, 256, 256], "boxes": [None, 4]}
    expected_out = {"logits": [None, 1, 64, 64]}
    for table, expected, kind in (
        (inputs, expected_in, "input"),
        (outputs, expected_out, "output"),
    ):
        for name, dims in expected.items():
            if name not in table:
                raise OnnxExportError(f"graph has no {kind} named {name!r} (has {list(table)})")
            shape = [
                d.dim_value if d.HasField("dim_value") else None
                for d in table[name].type.tensor_type.shape.dim
            ]
            if shape != dims:
                raise OnnxExportError(
                    f"{kind} {name!r} has shape {shape}, expected {dims} (None = dynamic batch)"
                )
    ops = [n.op_type for n in g.node]
    if "LayerNormalization" not in ops:
        raise OnnxExportError(
            "the graph has no LayerNormalization node: LayerNorm was decomposed "
            "(ReduceMean/Sub/Pow/Sqrt), which TensorRT cannot keep in FP32 as one layer"
        )


def export_onnx(
    model,
    path: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_sha256: str | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    example_batch: int = 2,
    model_info=None,
) -> Path:
    """Export ``model`` (a SamUNet in eval mode, fp32, on the CPU) to ``path``.

    ``exporter``: "torchscript" (``torch.onnx.export(dynamo=False)``, the cleanest graph),
    "dynamo" (``torch.export`` based, opset >= 18) or "auto" (torchscript, then dynamo if that
    fails). ``model_info`` (a ModelInfo) is written into the metadata; when None it is read
    from ``checkpoint`` if given, else the variant with default settings. Returns the path.
    Raises :class:`OnnxExportError` with the reason.
    """
    import onnx
    import torch

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset}: must be >= {MIN_OPSET} (LayerNormalization)")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter {exporter!r}: must be one of {EXPORTERS}")
    path = Path(path)
    if checkpoint is not None and checkpoint_sha256 is None:
        checkpoint_sha256 = sha256_file(checkpoint)
    variant = str(getattr(model, "variant", None) or "custom")
    if model_info is None and checkpoint is not None:
        from sam_unet.checkpoints import checkpoint_model_info, read_checkpoint

        model_info = checkpoint_model_info(read_checkpoint(checkpoint), variant=variant,
                                           source=f"checkpoint {os.fspath(checkpoint)!r}")

    model = _cpu_fp32_eval(model)
    from sam_unet.checkpoints import weights_sha256

    identity = weights_sha256(model)
    args = example_inputs(example_batch)
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    if "torchscript" in order and not _torchscript_available():
        order.remove("torchscript")
    errors: list[str] = []
    proto = used = None
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".sam_unet_onnx_", dir=path.parent) as tmpdir:
        for name in order:
            raw = os.path.join(tmpdir, f"{name}.onnx")
            try:
                with torch.inference_mode(False), torch.no_grad():
                    if name == "torchscript":
                        _export_torchscript(model, args, raw, opset)
                        used_opset = opset
                    else:
                        used_opset = _export_dynamo(model, args, raw, opset)
                candidate = onnx.load(raw)
                _declare_static_dims(candidate)
                check_graph(candidate)
            except Exception as exc:  # noqa: BLE001 - report every exporter's reason
                errors.append(f"{name}: {type(exc).__name__}: {str(exc).strip()[:2000]}")
                continue
            proto, used = candidate, name
            break
    if proto is None:
        raise OnnxExportError(
            f"could not export the {variant} model to ONNX:\n  " + "\n  ".join(errors)
        )
    meta = onnx_metadata(
        variant, checkpoint_sha256=checkpoint_sha256, opset=used_opset, exporter=used,
        model_info=model_info, weights_sha256=identity,
    )
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "sam_unet"
    proto.doc_string = (
        f"SAM-UNet {variant}: images (B,3,256,256), boxes (B,4) -> logits (B,1,64,64)"
    )
    _atomic_save(proto, path)
    return path


# --------------------------------------------------------------------------------------------
# parity


def session_options(threads: int | None = None):
    """ONNX Runtime session options: all graph optimisations, optional intra-op thread count,
    one inter-op thread, warnings off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def ort_session(path: str | os.PathLike, *, threads: int | None = None, providers=None):
    import onnxruntime as ort

    so = session_options(threads)
    return ort.InferenceSession(
        str(path), sess_options=so, providers=providers or ["CPUExecutionProvider"]
    )


def verify_onnx(
    model,
    path: str | os.PathLike,
    *,
    batch_sizes: tuple[int, ...] = (1, 3),
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
    threads: int | None = None,
    raise_on_fail: bool = True,
) -> ParityReport:
    """Run the graph in ONNX Runtime (CPU) and PyTorch (fp32, CPU) on random inputs.

    The relative error is ``max |ort - torch| / max |torch|`` over all batches; it must be
    <= ``rtol`` (1e-4 by default) or :class:`OnnxParityError` is raised.
    """
    import numpy as np
    import torch

    model = _cpu_fp32_eval(model)
    sess = ort_session(path, threads=threads)
    # One PyTorch reference on the largest batch; each batch size b runs the first b rows in
    # ONNX Runtime (rows are independent in eval mode), so the dynamic batch is exercised
    # without one PyTorch forward per size.
    images, boxes = example_inputs(max(batch_sizes), seed=seed)
    with torch.inference_mode():
        ref_all = model(images, boxes).float().numpy()
    max_diff = max_ref = 0.0
    for b in batch_sizes:
        ref = ref_all[:b]
        (out,) = sess.run(["logits"], {"images": images[:b].numpy(), "boxes": boxes[:b].numpy()})
        if out.shape != ref.shape:
            raise OnnxParityError(f"ONNX logits shape {out.shape} != PyTorch {ref.shape}")
        if not np.isfinite(out).all():
            raise OnnxParityError(f"ONNX Runtime produced non-finite logits (batch {b})")
        max_diff = max(max_diff, float(np.abs(out - ref).max()))
        max_ref = max(max_ref, float(np.abs(ref).max()))
    report = ParityReport(
        batch_sizes=tuple(batch_sizes),
        max_abs_diff=max_diff,
        max_abs_ref=max_ref,
        rel_error=max_diff / max(max_ref, 1e-12),
        rtol=rtol,
    )
    if raise_on_fail and not report.ok:
        raise OnnxParityError(f"{path}: {report}")
    return report
