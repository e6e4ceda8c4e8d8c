"""SAM's deployment split: the image encoder and the prompt decoder as two ONNX graphs.

Beside a whole-model file ``NAME.onnx`` (:func:`sam_unet.export.onnx.export_onnx`) this writes

- ``NAME.encoder.onnx``: input ``images`` (B, 3, 256, 256) float32 -> outputs
  ``image_embeddings`` (B, C, 16, 16) and ``features`` (B, C/8, 64, 64) float32 (everything that
  depends on the image only: the ViT with the ResNet injections, the bridges, the neck);
- ``NAME.decoder.onnx``: inputs ``image_embeddings``, ``features`` (as above) and ``boxes``
  (B, 4) float32 (x0, y0, x1, y1 in the 256 frame, x = image column) -> ``logits``
  (B, 1, 64, 64) float32, one box per image,

with a dynamic batch (C is the model's ``prompt_dim``: 256 for res34/res50). Both carry the
whole model's ``metadata_props`` (variant, checkpoint, model_info, ...), with the keys that
describe the graph replaced, plus ``sam_unet.graph`` ("encoder" | "decoder") and
``sam_unet.whole_model_sha256``, the SHA-256 of the ``NAME.onnx`` they were exported beside.
A runtime uses the pair only with a whole model of the same weights (``sam_unet.weights_sha256``
where the files record it, else that file hash; see :func:`split_pair_for`), so a stale pair
next to a re-exported model is never used.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from sam_unet.export.onnx import (
    DEFAULT_OPSET,
    DEFAULT_RTOL,
    MIN_OPSET,
    OnnxExportError,
    OnnxParityError,
    _atomic_save,
    _cpu_fp32_eval,
    example_inputs,
    ort_session,
    read_metadata,
    sha256_file,
)

ENCODER_INPUTS = ("images",)
ENCODER_OUTPUTS = ("image_embeddings", "features")
DECODER_INPUTS = ("image_embeddings", "features", "boxes")
DECODER_OUTPUTS = ("logits",)
GRAPH_KEY = "sam_unet.graph"
WHOLE_MODEL_KEY = "sam_unet.whole_model_sha256"
WEIGHTS_KEY = "sam_unet.weights_sha256"  # the weights' identity (export_onnx writes it)


def split_paths(onnx_path: str | os.PathLike) -> tuple[Path, Path]:
    """(``NAME.encoder.onnx``, ``NAME.decoder.onnx``) beside ``NAME.onnx``."""
    p = Path(onnx_path)
    stem = p.name[: -len(".onnx")] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}.encoder.onnx"), p.with_name(f"{stem}.decoder.onnx")


def _graph_shapes(model) -> dict[str, tuple[int, ...]]:
    """Non-batch dims of every split-graph input and output for ``model``'s config."""
    cfg = model.config
    grid, c = cfg.grid_size, cfg.prompt_dim
    size = cfg.image_size
    return {
        "images": (3, size, size),
        "image_embeddings": (c, grid, grid),
        "features": (c // 8, 4 * grid, 4 * grid),
        "boxes": (4,),
        "logits": (1, 4 * grid, 4 * grid),
    }


def _modules(model):
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, images):
            return self.m.encode(images)

    class Decoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, image_embeddings, features, boxes):
            return self.m.decode(image_embeddings, features, boxes)

    return Encoder(model).eval(), Decoder(model).eval()


def _export_one(module, args, path: str, inputs, outputs, opset: int, exporter: str) -> int:
    """Export with the TorchScript exporter (the whole model's default) or dynamo; returns the
    opset used."""
    import torch

    if exporter == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                module, args, path, input_names=list(inputs), output_names=list(outputs),
                opset_version=opset,
                dynamic_axes={name: {0: "batch"} for name in (*inputs, *outputs)},
                do_constant_folding=True, dynamo=False,
            )
        return opset
    opset = max(opset, 18)  # the dynamo exporter implements opset >= 18
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        module, args, input_names=list(inputs), output_names=list(outputs),
        opset_version=opset, dynamo=True, dynamic_shapes={n: {0: batch} for n in inputs},
        external_data=False, verbose=False,
    )
    program.save(path, external_data=False)
    return opset


def _fix_dims(proto, shapes: dict[str, tuple[int, ...]], inputs, outputs) -> None:
    """Name the batch dim, declare the fixed ones, and check names and ranks."""
    import onnx

    onnx.checker.check_model(proto)
    g = proto.graph
    have_in = [v.name for v in g.input]
    have_out = [v.name for v in g.output]
    if have_in != list(inputs) or have_out != list(outputs):
        raise OnnxExportError(
            f"split graph has inputs {have_in} and outputs {have_out}; expected {list(inputs)} "
            f"-> {list(outputs)}"
        )
    for v in (*g.input, *g.output):
        fixed = shapes[v.name]
        dims = v.type.tensor_type.shape.dim
        if len(dims) != len(fixed) + 1:
            raise OnnxExportError(f"{v.name}: rank {len(dims)}, expected {len(fixed) + 1}")
        dims[0].Clear()
        dims[0].dim_param = "batch"
        for d, value in zip(list(dims)[1:], fixed, strict=True):
            if d.HasField("dim_value") and d.dim_value != value:
                raise OnnxExportError(f"{v.name}: dim {d.dim_value} where {value} is expected")
            d.Clear()
            d.dim_value = value
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise OnnxExportError(f"opset {opset} < {MIN_OPSET}: LayerNorm would not be one node")


def _split_metadata(whole: dict[str, str], graph: str, whole_sha: str, opset: int,
                    exporter: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    def dims(name: str) -> str:
        return "(B," + ",".join(str(d) for d in shapes[name]) + ")"

    meta = dict(whole)
    if graph == "encoder":
        meta["sam_unet.inputs"] = f"images {dims('images')} float32"
        meta["sam_unet.outputs"] = (f"image_embeddings {dims('image_embeddings')} float32; "
                                    f"features {dims('features')} float32")
    else:
        meta["sam_unet.inputs"] = (f"image_embeddings {dims('image_embeddings')} float32; "
                                   f"features {dims('features')} float32; boxes (B,4) float32 "
                                   "xyxy, 256 frame")
        meta["sam_unet.outputs"] = f"logits {dims('logits')} float32"
    meta["sam_unet.opset"] = str(opset)
    meta["sam_unet.exporter"] = exporter
    meta[GRAPH_KEY] = graph
    meta[WHOLE_MODEL_KEY] = whole_sha
    return meta


def export_split_onnx(
    model,
    onnx_path: str | os.PathLike,
    *,
    opset: int | None = None,
    exporter: str = "auto",
    example_batch: int = 2,
) -> tuple[Path, Path]:
    """Export ``model``'s encoder and decoder beside the whole-model file ``onnx_path``.

    ``onnx_path`` must already hold the whole model exported from the same ``model`` (its
    metadata is copied, its hash recorded). ``opset`` defaults to the whole file's; exporter as
    in :func:`~sam_unet.export.onnx.export_onnx`. Returns (encoder path, decoder path); each is
    written atomically. Raises :class:`OnnxExportError` with every exporter's reason.
    """
    import onnx
    import torch

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(
            f"{onnx_path}: export the whole model first (export_onnx), then its split graphs"
        )
    whole = read_metadata(onnx_path)
    whole_sha = sha256_file(onnx_path)
    if opset is None:
        opset = int(whole.get("sam_unet.opset", DEFAULT_OPSET))
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset}: must be >= {MIN_OPSET} (LayerNormalization)")
    model = _cpu_fp32_eval(model)
    variant = str(getattr(model, "variant", "unknown"))
    if whole.get("sam_unet.variant", variant) != variant:
        raise OnnxExportError(
            f"{onnx_path} holds variant {whole['sam_unet.variant']!r}, the model is {variant!r}: "
            "export the whole model from this model first"
        )
    shapes = _graph_shapes(model)
    enc_mod, dec_mod = _modules(model)
    images, boxes = example_inputs(example_batch)
    with torch.inference_mode(False), torch.no_grad():
        emb, feat = model.encode(images)
    jobs = (
        ("encoder", enc_mod, (images,), ENCODER_INPUTS, ENCODER_OUTPUTS),
        ("decoder", dec_mod, (emb, feat, boxes), DECODER_INPUTS, DECODER_OUTPUTS),
    )
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    targets = dict(zip(("encoder", "decoder"), split_paths(onnx_path), strict=True))
    protos = {}
    with tempfile.TemporaryDirectory(prefix=".sam_unet_onnx_", dir=onnx_path.parent) as tmpdir:
        for graph, module, args, inputs, outputs in jobs:
            errors = []
            for name in order:
                raw = os.path.join(tmpdir, f"{graph}-{name}.onnx")
                try:
                    with torch.inference_mode(False), torch.no_grad():
                        used_opset = _export_one(module, args, raw, inputs, outputs, opset, name)
                    proto = onnx.load(raw)
                    _fix_dims(proto, shapes, inputs, outputs)
                except Exception as exc:  # noqa: BLE001 - report every exporter's reason
                    errors.append(f"{name}: {type(exc).__name__}: {str(exc).strip()[:2000]}")
                    continue
                meta = _split_metadata(whole, graph, whole_sha, used_opset, name, shapes)
                del proto.metadata_props[:]
                for k, v in meta.items():
                    entry = proto.metadata_props.add()
                    entry.key, entry.value = k, v
                proto.producer_name = "sam_unet"
                proto.doc_string = f"SAM-UNet {variant} {graph} (split of {onnx_path.name})"
                protos[graph] = proto
                break
            if graph not in protos:
                raise OnnxExportError(
                    f"could not export the {variant} {graph} to ONNX:\n  " + "\n  ".join(errors)
                )
    for graph, proto in protos.items():
        _atomic_save(proto, targets[graph])
    return targets["encoder"], targets["decoder"]


@dataclass(frozen=True)
class SplitPair:
    """The encoder and decoder files that belong to a whole-model file."""

    encoder: Path
    decoder: Path


def split_pair_for(onnx_path: str | os.PathLike, *, whole_sha256: str | None = None
                   ) -> tuple[SplitPair | None, str]:
    """The split graphs beside ``onnx_path`` if both exist and were exported from that very
    file, else (None, why not). ``whole_sha256`` saves hashing the file again."""
    enc, dec = split_paths(onnx_path)
    if not enc.is_file() or not dec.is_file():
        return None, f"no {enc.name} and {dec.name} beside {Path(onnx_path).name}"
    # The weights' identity when the files record one (no need to hash a large file), else
    # the whole file's hash.
    weights = read_metadata(onnx_path).get(WEIGHTS_KEY, "unknown")
    key, expected = (WEIGHTS_KEY, weights) if weights != "unknown" else (
        WHOLE_MODEL_KEY, whole_sha256 or sha256_file(onnx_path))
    for path, graph in ((enc, "encoder"), (dec, "decoder")):
        meta = read_metadata(path)
        if meta.get(GRAPH_KEY) != graph:
            return None, f"{path.name} is not a SAM-UNet {graph} graph"
        if meta.get(key) != expected:
            return None, (f"{path.name} holds other weights than {Path(onnx_path).name} "
                          "(stale): export the split graphs again")
    return SplitPair(enc, dec), ""


@dataclass(frozen=True)
class SplitParityReport:
    batch_sizes: tuple[int, ...]
    vs_torch: float  # max |split - torch| / max |torch|
    vs_whole: float  # max |split - whole graph| / max |whole graph|
    rtol: float

    @property
    def ok(self) -> bool:
        return self.vs_torch <= self.rtol and self.vs_whole <= self.rtol

    def __str__(self) -> str:
        return (
            f"encoder + decoder ONNX on batches {list(self.batch_sizes)}: relative error "
            f"{self.vs_torch:.3g} vs PyTorch, {self.vs_whole:.3g} vs the whole graph "
            f"(limit {self.rtol:g})"
        )


def verify_split_onnx(
    model,
    onnx_path: str | os.PathLike,
    *,
    batch_sizes: tuple[int, ...] = (1, 3),
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
    threads: int | None = None,
    raise_on_fail: bool = True,
) -> SplitParityReport:
    """Run encoder.onnx then decoder.onnx in ONNX Runtime (CPU) and compare the logits with
    PyTorch and with the whole graph ``onnx_path`` on the same random inputs."""
    import numpy as np
    import torch

    enc_path, dec_path = split_paths(onnx_path)
    model = _cpu_fp32_eval(model)
    whole = ort_session(onnx_path, threads=threads)
    enc = ort_session(enc_path, threads=threads)
    dec = ort_session(dec_path, threads=threads)
    images, boxes = example_inputs(max(batch_sizes), seed=seed)
    with torch.inference_mode():
        ref_all = model(images, boxes).float().numpy()
    num_t = num_w = den_t = den_w = 0.0
    for b in batch_sizes:
        x, bx = images[:b].numpy(), boxes[:b].numpy()
        emb, feat = enc.run(list(ENCODER_OUTPUTS), {"images": x})
        (out,) = dec.run(["logits"], {"image_embeddings": emb, "features": feat, "boxes": bx})
        (ref_whole,) = whole.run(["logits"], {"images": x, "boxes": bx})
        if out.shape != ref_all[:b].shape or not np.isfinite(out).all():
            raise OnnxParityError(f"split graphs gave logits of shape {out.shape} (batch {b}), "
                                  "or non-finite values")
        num_t = max(num_t, float(np.abs(out - ref_all[:b]).max()))
        den_t = max(den_t, float(np.abs(ref_all[:b]).max()))
        num_w = max(num_w, float(np.abs(out - ref_whole).max()))
        den_w = max(den_w, float(np.abs(ref_whole).max()))
    report = SplitParityReport(tuple(batch_sizes), num_t / max(den_t, 1e-12),
                               num_w / max(den_w, 1e-12), rtol)
    if raise_on_fail and not report.ok:
        raise OnnxParityError(f"{onnx_path}: {report}")
    return report
