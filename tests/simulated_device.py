"""A simulated CUDA device (pure Python) for the pipeline's GPU placements, run on the CPU.

It implements :class:`sam_unet.runtime.streams.StreamDevice`: streams are ordered queues,
events are points in them, buffers are CPU tensors, kernels run the CPU ops. Every operation is
recorded with a vector clock (one component for the host, one per stream), which gives CUDA's
happens-before order: work on a stream is ordered; ``wait(stream, event)`` orders later work on
that stream after the event's point; ``host_wait(event)`` orders the host after it; anything
queued by the host comes after what the host did before.

Checks:
- races: every access to a buffer (kernel, copy, host work) must be ordered after the previous
  write and, for a write, after every previous read; otherwise :class:`ScheduleError` names both
  operations and the buffer ("no buffer reused before its event");
- execution is adversarial for copies: they are deferred for as long as the happens-before
  order allows (until a later operation, a host wait or a synchronize depends on them) while
  kernels and host work run at once, so a kernel that does not wait for its upload reads stale
  data (NaN-filled buffers) and the mask comes out wrong, besides the recorded race.

Planted faults for testing the checker: ``drop_waits`` (event name prefixes whose stream waits
are ignored) and ``merge_streams`` ({"download": "upload"}: one stream for both).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sam_unet.runtime.slab_io import torch_dtype
from sam_unet.runtime.streams import Buffer

Clock = dict[str, int]


class ScheduleError(AssertionError):
    """A race or an ordering rule broken by the placement's schedule."""


def _join(a: Clock, b: Clock) -> Clock:
    out = dict(a)
    for k, v in b.items():
        out[k] = max(out.get(k, 0), v)
    return out


@dataclass
class SimStream:
    name: str
    clock: Clock = field(default_factory=dict)


@dataclass
class SimEvent:
    name: str
    clock: Clock | None = None  # None: never recorded
    stream: str = ""


@dataclass
class Op:
    """One recorded operation: kind "kernel" | "copy" | "host" | "wait" | "record"."""

    seq: int
    kind: str
    what: str
    timeline: str
    clock: Clock
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    detail: str = ""
    run: Callable[[], Any] | None = None
    done: bool = False

    def before(self, clock: Clock) -> bool:
        """This operation happens before the point ``clock``."""
        return self.clock[self.timeline] <= clock.get(self.timeline, 0)

    def label(self) -> str:
        return f"#{self.seq} {self.what} on {self.timeline}"


class SimDevice:
    """:class:`~sam_unet.runtime.streams.StreamDevice` that records and checks the schedule."""

    def __init__(self, *, drop_waits: Sequence[str] = (),
                 merge_streams: dict[str, str] | None = None) -> None:
        self.name = "simulated"
        self.drop_waits = tuple(drop_waits)
        self.merge = dict(merge_streams or {})
        self.host_clock: Clock = {"host": 0}
        self.streams: dict[str, SimStream] = {}
        self.ops: list[Op] = []
        self.pending: list[Op] = []
        self.accesses: dict[str, list[tuple[Op, str]]] = {}
        self.buffers: dict[str, Buffer] = {}
        self.compute = self.stream("compute")

    # -- recording -------------------------------------------------------------------------
    def _op(self, kind: str, what: str, timeline: str, clock: Clock, *, reads=(), writes=(),
            detail: str = "", run=None) -> Op:
        op = Op(len(self.ops), kind, what, timeline, dict(clock), tuple(b.name for b in reads),
                tuple(b.name for b in writes), detail, run)
        self.ops.append(op)
        return op

    def _check(self, op: Op) -> None:
        """The race rule for ``op``'s reads and writes against every earlier access."""
        for mode, names in (("reads", op.reads), ("writes", op.writes)):
            for name in names:
                for prev, prev_mode in self.accesses.get(name, []):
                    if (prev_mode == "writes" or mode == "writes") and not prev.before(op.clock):
                        raise ScheduleError(
                            f"race on {name}: {op.label()} {mode} it while {prev.label()} "
                            f"{prev_mode} it, and no event orders the two"
                        )
                self.accesses.setdefault(name, []).append((op, mode))

    def _force(self, clock: Clock) -> None:
        """Run the deferred copies that happen before the point ``clock``, in queue order."""
        for op in list(self.pending):
            if op.before(clock):
                op.run()
                op.done = True
                self.pending.remove(op)

    def _enqueue(self, stream: SimStream) -> Clock:
        stream.clock = _join(stream.clock, self.host_clock)
        stream.clock[stream.name] = stream.clock.get(stream.name, 0) + 1
        return stream.clock

    # -- StreamDevice ------------------------------------------------------------------------
    def stream(self, name: str) -> SimStream:
        name = self.merge.get(name, name)
        if name not in self.streams:
            self.streams[name] = SimStream(name)
        return self.streams[name]

    def event(self, name: str) -> SimEvent:
        return SimEvent(name)

    def record(self, event: SimEvent, stream: SimStream) -> None:
        event.clock, event.stream = dict(self._enqueue(stream)), stream.name
        self._op("record", f"record {event.name}", stream.name, event.clock)

    def wait(self, stream: SimStream, event: SimEvent) -> None:
        dropped = any(event.name.startswith(p) for p in self.drop_waits)
        self._op("wait", f"wait {event.name}" + (" (dropped)" if dropped else ""), stream.name,
                 stream.clock or {stream.name: 0})
        if event.clock is not None and not dropped:
            stream.clock = _join(stream.clock, event.clock)

    def host_wait(self, event: SimEvent) -> None:
        if event.clock is None:
            return
        self._force(event.clock)
        self.host_clock = _join(self.host_clock, event.clock)

    def synchronize(self) -> None:
        for s in self.streams.values():
            self.host_clock = _join(self.host_clock, s.clock)
        self._force(self.host_clock)
        assert not self.pending

    def _buffer(self, name: str, tensor: torch.Tensor, host: bool) -> Buffer:
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))  # never-written data must not pass for a result
        else:
            tensor.fill_(77 if tensor.dtype != torch.bool else True)
        buf = Buffer(name, tensor, tensor.numpy() if host else None)
        self.buffers[name] = buf
        return buf

    def device_buffer(self, name: str, shape: tuple[int, ...], dtype: Any) -> Buffer:
        return self._buffer(name, torch.empty(shape, dtype=dtype), False)

    def host_buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> Buffer:
        return self._buffer(name, torch.empty(shape, dtype=torch_dtype(np.dtype(dtype))), True)

    def copy(self, stream: SimStream, what: str, dst: Buffer, src: Buffer, n: int) -> None:
        def run() -> None:
            dst.array[:n].copy_(src.array[:n])

        op = self._op("copy", what, stream.name, self._enqueue(stream), reads=[src],
                      writes=[dst], detail=f"{src.name} -> {dst.name}", run=run)
        self._check(op)
        self.pending.append(op)

    def launch(self, stream: SimStream, what: str, fn: Callable[[int], Any], *,
               reads: Sequence[Buffer] = (), writes: Sequence[Buffer] = ()) -> Any:
        op = self._op("kernel", what, stream.name, self._enqueue(stream), reads=reads,
                      writes=writes)
        self._check(op)
        self._force(op.clock)
        op.done = True
        return fn(0)

    def host(self, what: str, fn: Callable[[], Any], *, reads: Sequence[Buffer] = (),
             writes: Sequence[Buffer] = ()) -> Any:
        self.host_clock["host"] += 1
        op = self._op("host", what, "host", self.host_clock, reads=reads, writes=writes)
        self._check(op)
        self._force(op.clock)
        op.done = True
        return fn()

    def timer(self, stream: SimStream) -> SimEvent:
        ev = SimEvent("timer")
        ev.clock = dict(stream.clock)
        return ev

    def elapsed(self, start: SimEvent, end: SimEvent) -> float:
        return 0.0

    def reset_peak(self) -> None:
        pass

    def peak_bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers.values())

    # -- queries for the tests ---------------------------------------------------------------
    def named(self, what: str) -> list[Op]:
        return [op for op in self.ops if op.what == what]

    def happens_before(self, a: Op, b: Op) -> bool:
        return a is not b and a.before(b.clock)
