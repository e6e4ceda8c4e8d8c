"""The device interface the GPU placements are written against: streams, events, buffers,
copies, kernels and host work, each named.

Every stream/event/copy operation of a placement goes through a :class:`StreamDevice`, so the
same placement code runs on a CUDA device (:class:`TorchCudaDevice`, torch streams and events)
and on a simulated device that records the schedule and checks it (tests/simulated_device.py).

Semantics (CUDA's): work on one stream runs in the order it was queued; ``record(event,
stream)`` marks the point reached by the stream's queued work; ``wait(stream, event)`` makes
later work on ``stream`` wait for that point; ``host_wait(event)`` blocks the host until it.
Work is queued after everything the host did before queueing it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(eq=False)
class Buffer:
    """A named buffer: ``array`` is a torch tensor (device, or pinned host memory) and ``host``
    a NumPy view of it for host buffers (None for device buffers)."""

    name: str
    array: Any
    host: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(self.array.numel() * self.array.element_size())


class StreamDevice(Protocol):
    """Streams, events and buffers of one device (see the module docstring)."""

    name: str
    compute: Any  # the stream the backend runs on (torch's current stream)

    def stream(self, name: str) -> Any: ...

    def event(self, name: str) -> Any: ...

    def record(self, event: Any, stream: Any) -> None: ...

    def wait(self, stream: Any, event: Any) -> None: ...

    def host_wait(self, event: Any) -> None: ...

    def synchronize(self) -> None: ...

    def device_buffer(self, name: str, shape: tuple[int, ...], dtype: Any) -> Buffer: ...

    def host_buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> Buffer: ...

    def copy(self, stream: Any, what: str, dst: Buffer, src: Buffer, n: int) -> None:
        """dst[:n] <- src[:n] on ``stream`` (host <-> device, asynchronous)."""

    def launch(self, stream: Any, what: str, fn: Callable[[int], Any], *,
               reads: Sequence[Buffer] = (), writes: Sequence[Buffer] = ()) -> Any:
        """Queue ``fn(stream_handle)`` (which queues device work on that stream); returns
        what ``fn`` returns."""

    def host(self, what: str, fn: Callable[[], Any], *, reads: Sequence[Buffer] = (),
             writes: Sequence[Buffer] = ()) -> Any:
        """Run ``fn`` on the host now (it touches the named host buffers)."""

    def timer(self, stream: Any) -> Any:
        """A timing mark at the current end of ``stream``'s queue."""

    def elapsed(self, start: Any, end: Any) -> float:
        """Seconds between two marks (after :meth:`synchronize`)."""

    def reset_peak(self) -> None: ...

    def peak_bytes(self) -> int: ...


class TorchCudaDevice:
    """:class:`StreamDevice` over torch: the compute stream is torch's current stream on
    ``device`` (where backends run), pinned host buffers come from torch's host allocator."""

    def __init__(self, device: str) -> None:
        import torch

        self._torch = torch
        self.name = str(device)
        self._device = torch.device(device)
        self.compute = torch.cuda.current_stream(self._device)

    def stream(self, name: str) -> Any:
        return self._torch.cuda.Stream(device=self._device)

    def event(self, name: str) -> Any:
        return self._torch.cuda.Event()

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def wait(self, stream: Any, event: Any) -> None:
        stream.wait_event(event)

    def host_wait(self, event: Any) -> None:
        event.synchronize()

    def synchronize(self) -> None:
        self._torch.cuda.synchronize(self._device)

    def device_buffer(self, name: str, shape: tuple[int, ...], dtype: Any) -> Buffer:
        return Buffer(name, self._torch.empty(shape, dtype=dtype, device=self._device))

    def host_buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> Buffer:
        from sam_unet.runtime.slab_io import torch_dtype

        t = self._torch.empty(shape, dtype=torch_dtype(np.dtype(dtype)), pin_memory=True)
        return Buffer(name, t, t.numpy())

    def copy(self, stream: Any, what: str, dst: Buffer, src: Buffer, n: int) -> None:
        with self._torch.cuda.stream(stream):
            dst.array[:n].copy_(src.array[:n], non_blocking=True)

    def launch(self, stream: Any, what: str, fn: Callable[[int], Any], *,
               reads: Sequence[Buffer] = (), writes: Sequence[Buffer] = ()) -> Any:
        with self._torch.cuda.stream(stream):
            return fn(int(stream.cuda_stream))

    def host(self, what: str, fn: Callable[[], Any], *, reads: Sequence[Buffer] = (),
             writes: Sequence[Buffer] = ()) -> Any:
        return fn()

    def timer(self, stream: Any) -> Any:
        mark = self._torch.cuda.Event(enable_timing=True)
        mark.record(stream)
        return mark

    def elapsed(self, start: Any, end: Any) -> float:
        return float(start.elapsed_time(end)) / 1000.0

    def reset_peak(self) -> None:
        self._torch.cuda.reset_peak_memory_stats(self._device)

    def peak_bytes(self) -> int:
        return int(self._torch.cuda.max_memory_allocated(self._device))
