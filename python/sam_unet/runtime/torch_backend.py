"""PyTorch backend: CPU float32 (inference mode); CUDA float16/bfloat16/float32 with CUDA graphs.

On CUDA a graph is captured per batch size on first use (static input and output buffers, one
memory pool shared by all graphs) and replayed afterwards; a smaller batch is padded up to the
smallest captured size that holds it, so a volume's short last slab reuses the main graph.
"""

from __future__ import annotations

import copy
import os
import warnings

import torch

from sam_unet.runtime.backend_checks import (
    check_images,
    check_inputs,
    check_split_inputs,
    encode_in_chunks,
    run_in_chunks,
)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def compile_cache_dir() -> str:
    """Where torch.compile keeps its artefacts between runs: $TORCHINDUCTOR_CACHE_DIR, else
    ~/.cache/sam_unet/inductor (inductor's own default is a per-boot /tmp folder)."""
    return os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "sam_unet", "inductor")


def enable_compile_cache() -> str:
    """Persist inductor's FX-graph and autotuning caches across processes; returns the folder."""
    path = compile_cache_dir()
    os.makedirs(path, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", path)
    try:
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        inductor_config.autotune_local_cache = True
    except (ImportError, AttributeError):  # older torch: the env var alone still applies
        pass
    return path


class TorchBackend:
    name = "torch"
    can_split = True  # encode / decode: eager, no CUDA graphs

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        max_batch: int = 32,
        cuda_graphs: bool | None = None,
        copy_model: bool = True,
        compile: bool = False,
    ) -> None:
        if precision not in DTYPES:
            raise ValueError(f"precision {precision!r}: must be one of {tuple(DTYPES)}")
        self.device = str(device)
        self.precision = precision
        self.max_batch = int(max_batch)
        self.dtype = DTYPES[precision]
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.device}: CUDA is not available to PyTorch here")
        # Casting is in place for nn.Module.to(); keep the caller's model untouched.
        needs_cast = any(p.dtype != self.dtype or p.device != dev for p in model.parameters())
        if copy_model and needs_cast:
            model = copy.deepcopy(model)
        self.model = model.eval().to(device=dev, dtype=self.dtype)
        self.variant = getattr(model, "variant", None)
        self.compiled = bool(compile)
        if self.compiled:
            enable_compile_cache()
            # Compiled on the first call (inside the warm-up of the first graph capture on CUDA).
            self.model = torch.compile(self.model, dynamic=False)
        self.cuda_graphs = bool(dev.type == "cuda" if cuda_graphs is None else cuda_graphs)
        if self.cuda_graphs and dev.type != "cuda":
            raise ValueError("cuda_graphs=True needs a CUDA device")
        self._graphs: dict[int, tuple] = {}
        self._pool = None
        self._graph_error: str | None = None

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype the model computes in: images in it avoid a cast."""
        return self.dtype

    # -- protocol -----------------------------------------------------------------------------

    def run(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        check_inputs(images, boxes)
        return run_in_chunks(self._run_batch, images, boxes, self.max_batch)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, 256, 256) -> (image_embeddings (B, C, 16, 16), features
        (B, C/8, 64, 64)) on ``device`` in the compute dtype, in chunks of ``max_batch``."""
        check_images(images)
        model = getattr(self.model, "_orig_mod", self.model)  # the eager module
        with torch.inference_mode():
            return encode_in_chunks(
                lambda x: model.encode(x.to(device=self.device, dtype=self.dtype,
                                            non_blocking=True)), images, self.max_batch)

    def decode(self, image_embeddings: torch.Tensor, features: torch.Tensor,
               boxes: torch.Tensor) -> torch.Tensor:
        """One box per encoded image -> logits (B, 1, 64, 64) float32 on ``device``."""
        n = check_split_inputs(image_embeddings, features, boxes)
        model = getattr(self.model, "_orig_mod", self.model)
        outs = []
        with torch.inference_mode():
            for i in range(0, n, self.max_batch):
                sl = slice(i, i + self.max_batch)
                emb = image_embeddings[sl].to(device=self.device, dtype=self.dtype)
                feat = features[sl].to(device=self.device, dtype=self.dtype)
                b = boxes[sl].to(device=self.device, dtype=torch.float32)
                outs.append(model.decode(emb, feat, b).float())
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def describe(self) -> str:
        graphs = ""
        if self.cuda_graphs:
            graphs = f", CUDA graphs for batch sizes {sorted(self._graphs)}"
        elif self._graph_error:
            graphs = f", CUDA graphs off ({self._graph_error})"
        compiled = ", torch.compile" if self.compiled else ""
        return (
            f"torch {torch.__version__}: {self.variant or 'model'} {self.precision} on "
            f"{self.device}, max batch {self.max_batch}{compiled}{graphs}"
        )

    # -- internals ----------------------------------------------------------------------------

    def _prepare(self, images: torch.Tensor, boxes: torch.Tensor):
        x = images.to(device=self.device, dtype=self.dtype, non_blocking=True)
        # Boxes stay float32: fp16 would round coordinates near 256 to 1/8 pixel; the prompt
        # encoder computes its Fourier features in float32 anyway.
        b = boxes.to(device=self.device, dtype=torch.float32, non_blocking=True)
        return x, b

    def _run_batch(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        x, b = self._prepare(images, boxes)
        if self.cuda_graphs:
            try:
                return self._run_graph(x, b)
            except RuntimeError as exc:  # capture failed: fall back to eager, say why once
                self.cuda_graphs = False
                self._graphs.clear()
                self._graph_error = str(exc).splitlines()[0][:200]
                warnings.warn(
                    f"CUDA graph capture failed, running eagerly: {self._graph_error}",
                    RuntimeWarning,
                    stacklevel=3,
                )
        with torch.inference_mode():
            return self.model(x, b).float()

    def _capture(self, n: int):
        dev = torch.device(self.device)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        sx = torch.zeros(n, 3, 256, 256, device=dev, dtype=self.dtype)
        sb = torch.tensor([[64.0, 64.0, 192.0, 192.0]], device=dev,
                          dtype=torch.float32).repeat(n, 1)
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(2):  # warm-up: cuDNN/cuBLAS workspaces and lazy inits out of the graph
                self.model(sx, sb)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph, pool=self._pool):
            out = self.model(sx, sb)
        self._graphs[n] = (graph, sx, sb, out)
        return self._graphs[n]

    def _run_graph(self, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        size = min((s for s in self._graphs if s >= n), default=None)
        graph, sx, sb, out = self._graphs[size] if size is not None else self._capture(n)
        sx[:n].copy_(x)
        sb[:n].copy_(b)
        graph.replay()
        # The static output is overwritten by the next replay: hand back a copy.
        return out[:n].to(torch.float32, copy=True)
