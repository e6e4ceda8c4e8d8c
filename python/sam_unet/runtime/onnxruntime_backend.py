"""ONNX Runtime backend: CPU everywhere; CUDA or TensorRT execution providers where installed.

On CUDA the inputs and the output are bound to the torch tensors' device memory (IO binding), so
nothing goes through the host.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from sam_unet.runtime.backend_checks import (
    check_images,
    check_inputs,
    check_split_inputs,
    encode_in_chunks,
    run_in_chunks,
)

PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")


def resolve_providers(
    device: str, provider: str, available: list[str], *, precision: str = "fp32", device_id: int = 0
) -> list:
    """The ``providers`` list for an InferenceSession (pure: ``available`` is
    ``ort.get_available_providers()``)."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider {provider!r}: must be one of {PROVIDERS}")
    if device == "cpu":
        if provider not in ("auto", "cpu"):
            raise ValueError(f"provider {provider!r} needs a CUDA device, not {device!r}")
        if precision != "fp32":
            raise ValueError("onnxruntime on the CPU runs the fp32 graph only (precision fp32)")
        return ["CPUExecutionProvider"]
    if provider == "cpu":
        raise ValueError(f"provider 'cpu' with device {device!r}: use device='cpu'")
    cuda_opts = {"device_id": device_id}
    if provider == "tensorrt":
        if "TensorrtExecutionProvider" not in available:
            raise RuntimeError(
                "onnxruntime has no TensorrtExecutionProvider here (available: "
                f"{available}); install onnxruntime-gpu with TensorRT, or use provider='cuda'"
            )
        trt_opts = {"device_id": device_id, "trt_fp16_enable": precision == "fp16"}
        return [
            ("TensorrtExecutionProvider", trt_opts),
            ("CUDAExecutionProvider", cuda_opts),
            "CPUExecutionProvider",
        ]
    if "CUDAExecutionProvider" not in available:
        raise RuntimeError(
            f"onnxruntime has no CUDAExecutionProvider here (available: {available}); "
            "pip install onnxruntime-gpu, or use device='cpu'"
        )
    if precision != "fp32":
        raise ValueError(
            "onnxruntime's CUDA provider runs the fp32 graph; for fp16 use provider='tensorrt' "
            "or the tensorrt backend"
        )
    return [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        max_batch: int = 32,
        threads: int | None = None,
        provider: str = "auto",
    ) -> None:
        import onnxruntime as ort

        if not os.path.isfile(onnx_path):
            raise FileNotFoundError(f"{onnx_path}: no such ONNX file")
        self.onnx_path = str(onnx_path)
        self.device = str(device)
        self.precision = precision
        self.max_batch = int(max_batch)
        dev = torch.device(self.device)
        self._device_id = dev.index or 0
        providers = resolve_providers(
            self.device,
            provider,
            ort.get_available_providers(),
            precision=precision,
            device_id=self._device_id,
        )
        from sam_unet.export.onnx import invalid_onnx, one_line, session_options

        so = session_options(threads)
        try:
            self.session = ort.InferenceSession(self.onnx_path, sess_options=so,
                                                providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind11 types
            kind = type(exc).__name__
            if kind in ("InvalidProtobuf", "InvalidGraph", "Fail", "NotImplemented",
                        "InvalidArgument", "DecodeError"):
                raise invalid_onnx(self.onnx_path, exc) from exc
            raise RuntimeError(f"ONNX Runtime could not load {self.onnx_path} ({kind}: "
                               f"{one_line(exc)})") from exc
        names = {i.name for i in self.session.get_inputs()}
        if names != {"images", "boxes"}:
            raise ValueError(
                f"{onnx_path}: expected inputs images and boxes, found {sorted(names)}"
            )
        self.output_name = self.session.get_outputs()[0].name
        self.providers = self.session.get_providers()
        self.threads = threads
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self._provider_list = providers
        self._split: tuple | None = None  # (encoder session, decoder session) once opened
        self._pair = None  # the split files beside the model, once looked for
        self.split_reason = ""

    input_dtype = torch.float32  # the graph's inputs

    def run(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        check_inputs(images, boxes)
        fn = self._run_cpu if self.device == "cpu" else self._run_cuda
        return run_in_chunks(fn, images, boxes, self.max_batch)

    # -- SAM's split: NAME.encoder.onnx and NAME.decoder.onnx beside NAME.onnx ----------------

    @property
    def can_split(self) -> bool:
        """True when the encoder and decoder graphs exported beside this very model file are
        there (sam-unet export writes them); ``split_reason`` says why not otherwise."""
        if self._pair is None:
            from sam_unet.export.onnx_split import split_pair_for

            pair, why = split_pair_for(self.onnx_path)
            self._pair = pair or False
            self.split_reason = why
        return bool(self._pair)

    def _split_sessions(self) -> tuple:
        if self._split is None:
            if not self.can_split:
                raise RuntimeError(f"{self.onnx_path}: no encoder/decoder graphs: "
                                   f"{self.split_reason}")
            import onnxruntime as ort

            from sam_unet.export.onnx import session_options

            so = session_options(self.threads)
            # The encoder and decoder run alternately, with Python work between calls: idle
            # intra-op threads that spin would hold the cores the other session needs.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._split = tuple(
                ort.InferenceSession(str(p), sess_options=so, providers=self._provider_list)
                for p in (self._pair.encoder, self._pair.decoder)
            )
        return self._split

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, 256, 256) -> (image_embeddings, features) float32 on ``device``."""
        check_images(images)
        enc, _ = self._split_sessions()
        return encode_in_chunks(
            lambda x: tuple(self._run_graph(enc, {"images": x},
                                            ("image_embeddings", "features"))),
            images, self.max_batch)

    def decode(self, image_embeddings: torch.Tensor, features: torch.Tensor,
               boxes: torch.Tensor) -> torch.Tensor:
        """One box per encoded image -> logits (B, 1, 64, 64) float32 on ``device``."""
        n = check_split_inputs(image_embeddings, features, boxes)
        _, dec = self._split_sessions()
        outs = []
        for i in range(0, n, self.max_batch):
            sl = slice(i, i + self.max_batch)
            feeds = {"image_embeddings": image_embeddings[sl], "features": features[sl],
                     "boxes": boxes[sl]}
            outs.append(self._run_graph(dec, feeds, ("logits",))[0])
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _run_graph(self, session, feeds: dict, output_names: tuple[str, ...]) -> list:
        """Run ``session`` on float32 ``feeds``; on CUDA through IO binding into torch tensors
        (the graphs declare every output dim but the batch)."""
        if self.device == "cpu":
            arrays = {k: v.detach().to("cpu", torch.float32).contiguous().numpy()
                      for k, v in feeds.items()}
            return [torch.from_numpy(o) for o in session.run(list(output_names), arrays)]
        tensors = {k: v.to(self.device, torch.float32).contiguous() for k, v in feeds.items()}
        binding = session.io_binding()
        for name, t in tensors.items():
            binding.bind_input(name=name, device_type="cuda", device_id=self._device_id,
                               element_type=np.float32, shape=tuple(t.shape),
                               buffer_ptr=t.data_ptr())
        n = int(next(iter(tensors.values())).shape[0])
        declared = {o.name: o.shape for o in session.get_outputs()}
        outs = []
        for name in output_names:
            out = torch.empty((n, *declared[name][1:]), device=self.device, dtype=torch.float32)
            binding.bind_output(name=name, device_type="cuda", device_id=self._device_id,
                                element_type=np.float32, shape=tuple(out.shape),
                                buffer_ptr=out.data_ptr())
            outs.append(out)
        torch.cuda.current_stream(self.device).synchronize()
        session.run_with_iobinding(binding)
        return outs

    def describe(self) -> str:
        import onnxruntime as ort

        variant = self.metadata.get("sam_unet.variant", "?")
        threads = f", {self.threads} intra-op threads" if self.threads else ""
        return (
            f"onnxruntime {ort.__version__}: {os.path.basename(self.onnx_path)} ({variant}) "
            f"{self.precision} on {self.device} via {self.providers[0]}, max batch "
            f"{self.max_batch}{threads}"
        )

    def _run_cpu(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        feeds = {
            "images": images.detach().to("cpu", torch.float32).contiguous().numpy(),
            "boxes": boxes.detach().to("cpu", torch.float32).contiguous().numpy(),
        }
        (out,) = self.session.run([self.output_name], feeds)
        return torch.from_numpy(out)

    def _run_cuda(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32).contiguous()
        b = boxes.to(self.device, torch.float32).contiguous()
        out = torch.empty((x.shape[0], 1, 64, 64), device=self.device, dtype=torch.float32)
        binding = self.session.io_binding()
        for name, t in (("images", x), ("boxes", b)):
            binding.bind_input(
                name=name,
                device_type="cuda",
                device_id=self._device_id,
                element_type=np.float32,
                shape=tuple(t.shape),
                buffer_ptr=t.data_ptr(),
            )
        binding.bind_output(
            name=self.output_name,
            device_type="cuda",
            device_id=self._device_id,
            element_type=np.float32,
            shape=tuple(out.shape),
            buffer_ptr=out.data_ptr(),
        )
        # ORT runs on its own stream: the inputs must be ready before it starts, and
        # run_with_iobinding returns after the output is written.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return out
