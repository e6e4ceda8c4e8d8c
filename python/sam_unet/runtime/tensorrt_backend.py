"""TensorRT backend: runs a serialized engine built by ``sam-unet build-engine``.

The engine's sidecar is checked against this GPU and TensorRT version before it is
deserialised. One execution context per optimisation profile (created on first use, its profile
set once); each batch picks the narrowest profile that contains it, sets the input shapes, binds
the torch CUDA tensors' device pointers and enqueues on the backend's stream.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sam_unet.runtime.backend_checks import (
    check_images,
    check_inputs,
    check_split_inputs,
    encode_in_chunks,
    run_in_chunks,
)
from sam_unet.runtime.tensorrt_engine import import_tensorrt, load_engine
from sam_unet.runtime.tensorrt_profiles import format_profiles, select_profile
from sam_unet.runtime.tensorrt_profiles import max_batch as profiles_max_batch

WHOLE_ONNX_KEY = "whole_onnx_sha256"  # split engines' sidecars: the whole ONNX they belong to


def split_engine_paths(engine_path: str | os.PathLike) -> tuple[Path, Path]:
    """(``X.encoder.engine``, ``X.decoder.engine``) beside ``X.engine``."""
    p = Path(engine_path)
    stem = p.name[: -len(".engine")] if p.name.endswith(".engine") else p.name
    return p.with_name(f"{stem}.encoder.engine"), p.with_name(f"{stem}.decoder.engine")


def matching_split_engines(engine_path: str | os.PathLike) -> tuple[Path, Path] | None:
    """The encoder and decoder engines beside ``engine_path`` when both are there and their
    sidecars name the whole ONNX file that ``engine_path``'s own sidecar was built from (see
    sam_unet.export.tensorrt_split); None otherwise."""
    from sam_unet.runtime.tensorrt_sidecar import read_sidecar, sidecar_path

    pair = split_engine_paths(engine_path)
    if not all(p.is_file() and sidecar_path(p).is_file() for p in pair):
        return None
    try:
        _, whole = read_sidecar(engine_path)
        docs = [read_sidecar(p)[1] for p in pair]
    except (FileNotFoundError, ValueError):
        return None
    sha = whole.get("onnx_sha256")
    if not sha or any(d.get(WHOLE_ONNX_KEY) != sha for d in docs):
        return None
    return pair



def execution_context(engine, contexts: dict, profile_index: int, stream):
    """The execution context of ``engine`` bound to optimisation profile ``profile_index``
    (made once per profile on ``stream`` and kept in ``contexts``)."""
    ctx = contexts.get(profile_index)
    if ctx is None:
        ctx = engine.create_execution_context()
        if ctx is None:
            raise RuntimeError("TensorRT could not create an execution context (GPU memory?)")
        if not ctx.set_optimization_profile_async(profile_index, stream.cuda_stream):
            raise RuntimeError(f"TensorRT refused optimisation profile {profile_index}")
        contexts[profile_index] = ctx
    return ctx

class _TrtGraph:
    """One engine run by tensor name (TensorRT 10 name-based I/O): per batch, the narrowest
    optimisation profile that holds it, input shapes set, torch CUDA tensors bound by address,
    enqueued on ``stream``. Used for the split encoder and decoder engines."""

    def __init__(self, loaded, trt, device: str, stream) -> None:
        self.loaded = loaded
        self.engine = loaded.engine
        self.device = device
        self.stream = stream
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16}
        self.dtypes = {}
        for name in (*loaded.input_names, *loaded.output_names):
            dt = self.engine.get_tensor_dtype(name)
            if dt not in dtypes:
                raise ValueError(f"{loaded.path}: tensor {name!r} has unsupported type {dt}")
            self.dtypes[name] = dtypes[dt]
        self.max_batch = profiles_max_batch(loaded.profiles)
        self._contexts: dict[int, object] = {}

    def check_names(self, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
        if set(self.loaded.input_names) != set(inputs) or \
                not set(outputs) <= set(self.loaded.output_names):
            raise ValueError(
                f"{self.loaded.path}: engine inputs {self.loaded.input_names} / outputs "
                f"{self.loaded.output_names}; expected {list(inputs)} -> {list(outputs)}"
            )

    def _context(self, profile_index: int):
        return execution_context(self.engine, self._contexts, profile_index, self.stream)

    def run(self, feeds: dict, outputs: tuple[str, ...]) -> list[torch.Tensor]:
        """``feeds`` {input name: tensor with the batch first} -> the named outputs, in the
        engine's dtypes, on ``device``; the batch must fit a profile (callers chunk)."""
        n = int(next(iter(feeds.values())).shape[0])
        ctx = self._context(select_profile(self.loaded.profiles, n))
        bound = {k: v.to(self.device, self.dtypes[k]).contiguous() for k, v in feeds.items()}
        for name, t in bound.items():
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise RuntimeError(f"TensorRT rejected shape {tuple(t.shape)} for input {name!r}")
            ctx.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in outputs:
            shape = tuple(ctx.get_tensor_shape(name))
            if not shape or shape[0] != n or any(d < 0 for d in shape):
                raise RuntimeError(f"engine output {name!r} has shape {shape} for batch {n}")
            out = torch.empty(shape, device=self.device, dtype=self.dtypes[name])
            ctx.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        for t in (*bound.values(), *outs):
            t.record_stream(self.stream)
        current.wait_stream(self.stream)
        return outs


class TensorRTBackend:
    name = "tensorrt"

    def __init__(
        self,
        engine_path: str | os.PathLike,
        *,
        device: str = "cuda:0",
        max_batch: int | None = None,
        verbose: bool = False,
        encoder_engine_path: str | os.PathLike | None = None,
        decoder_engine_path: str | os.PathLike | None = None,
    ) -> None:
        if str(device) == "cpu":
            raise ValueError("the tensorrt backend needs a CUDA device (device='cuda' or 'cuda:N')")
        self._trt = trt = import_tensorrt()
        self.device = str(device)
        dev = torch.device(self.device)
        self._index = dev.index or 0
        with torch.cuda.device(self._index):
            self._loaded = load_engine(engine_path, device=self._index, verbose=verbose)
        self.engine = self._loaded.engine
        self.profiles = self._loaded.profiles
        self.precision = "fp16" if self._loaded.spec.fp16 else "fp32"
        limit = profiles_max_batch(self.profiles)
        self.max_batch = min(int(max_batch), limit) if max_batch else limit
        missing = {"images", "boxes"} - set(self._loaded.input_names)
        if missing or not self._loaded.output_names:
            raise ValueError(
                f"{engine_path}: engine inputs {self._loaded.input_names} / outputs "
                f"{self._loaded.output_names}; expected images, boxes -> logits"
            )
        self.output_name = self._loaded.output_names[0]
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16}
        self._dtypes = {}
        for name in (*self._loaded.input_names, self.output_name):
            dt = self.engine.get_tensor_dtype(name)
            if dt not in dtypes:
                raise ValueError(f"{engine_path}: tensor {name!r} has unsupported type {dt}")
            self._dtypes[name] = dtypes[dt]
        self._stream = torch.cuda.Stream(device=dev)
        self._contexts: dict[int, object] = {}
        self._encoder = self._decoder = None
        if (encoder_engine_path is None) != (decoder_engine_path is None):
            raise ValueError("pass both encoder_engine_path and decoder_engine_path, or neither")
        if encoder_engine_path is None:  # the pair built beside this engine, if it matches
            encoder_engine_path, decoder_engine_path = (
                matching_split_engines(engine_path) or (None, None))
        if encoder_engine_path is not None:
            with torch.cuda.device(self._index):
                self._encoder = _TrtGraph(load_engine(encoder_engine_path, device=self._index,
                                                      verbose=verbose), trt, self.device,
                                          self._stream)
                self._decoder = _TrtGraph(load_engine(decoder_engine_path, device=self._index,
                                                      verbose=verbose), trt, self.device,
                                          self._stream)
            self._encoder.check_names(("images",), ("image_embeddings", "features"))
            self._decoder.check_names(("image_embeddings", "features", "boxes"), ("logits",))

    @property
    def can_split(self) -> bool:
        """True when encoder and decoder engines were given or found beside the engine (built
        from NAME.encoder.onnx and NAME.decoder.onnx: see sam_unet.export.tensorrt_split)."""
        return self._encoder is not None

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, 256, 256) -> (image_embeddings, features) on ``device``, in the encoder
        engine's output dtypes."""
        check_images(images)
        if self._encoder is None:
            raise RuntimeError("this TensorRT backend has no encoder/decoder engines")
        step = min(self.max_batch, self._encoder.max_batch)
        with torch.cuda.device(self._index):
            return encode_in_chunks(
                lambda x: tuple(self._encoder.run({"images": x},
                                                  ("image_embeddings", "features"))),
                images, step)

    def decode(self, image_embeddings: torch.Tensor, features: torch.Tensor,
               boxes: torch.Tensor) -> torch.Tensor:
        """One box per encoded image -> logits (B, 1, 64, 64) float32 on ``device``."""
        n = check_split_inputs(image_embeddings, features, boxes)
        if self._decoder is None:
            raise RuntimeError("this TensorRT backend has no encoder/decoder engines")
        step = min(self.max_batch, self._decoder.max_batch)
        outs = []
        with torch.cuda.device(self._index):
            for i in range(0, n, step):
                sl = slice(i, i + step)
                (logits,) = self._decoder.run(
                    {"image_embeddings": image_embeddings[sl], "features": features[sl],
                     "boxes": boxes[sl]}, ("logits",))
                outs.append(logits.float())
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    @property
    def input_dtype(self) -> torch.dtype:
        return self._dtypes["images"]

    def describe(self) -> str:
        spec = self._loaded.spec
        return (
            f"tensorrt {spec.tensorrt_version}: {self._loaded.path.name} {self.precision} on "
            f"{self.device} ({spec.gpu_name}), profiles {format_profiles(self.profiles)}, "
            f"max batch {self.max_batch}"
        )

    def run(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        check_inputs(images, boxes)
        with torch.cuda.device(self._index):
            return run_in_chunks(self._run_batch, images, boxes, self.max_batch)

    def _context(self, profile_index: int):
        return execution_context(self.engine, self._contexts, profile_index, self._stream)

    def _run_batch(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        n = int(images.shape[0])
        profile = select_profile(self.profiles, n)
        ctx = self._context(profile)
        feeds = {
            "images": images.to(self.device, self._dtypes["images"]).contiguous(),
            "boxes": boxes.to(self.device, self._dtypes["boxes"]).contiguous(),
        }
        for name, t in feeds.items():
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise RuntimeError(f"TensorRT rejected shape {tuple(t.shape)} for input {name!r}")
            ctx.set_tensor_address(name, t.data_ptr())
        out_shape = tuple(ctx.get_tensor_shape(self.output_name))
        if out_shape != (n, 1, 64, 64):
            raise RuntimeError(f"engine output shape {out_shape}, expected ({n}, 1, 64, 64)")
        out = torch.empty(out_shape, device=self.device, dtype=self._dtypes[self.output_name])
        ctx.set_tensor_address(self.output_name, out.data_ptr())
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)  # inputs were produced on the caller's stream
        if not ctx.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        for t in (*feeds.values(), out):
            t.record_stream(self._stream)  # keep the buffers alive until the engine is done
        current.wait_stream(self._stream)
        return out.float()

