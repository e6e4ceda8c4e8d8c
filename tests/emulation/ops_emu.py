"""ctypes driver of the emulated CUDA ops (see build.py): NumPy arrays stand for device arrays
(their host memory is the "device" memory), passed with their real strides."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

# sam_unet::DType codes (csrc/include/sam_unet/ops.h)
DTYPE_CODES = {
    "uint8": 0, "int16": 1, "uint16": 2, "int32": 3, "float16": 4, "float32": 5, "float64": 6,
    "int8": 7, "uint32": 8, "int64": 9, "uint64": 10, "bfloat16": 11, "bool": 12,
}  # fmt: skip
MODES = {"slice-minmax": 0, "window": 1}

_i64p = ctypes.POINTER(ctypes.c_int64)


class EmulatedCudaError(RuntimeError):
    """An error raised by the emulated CUDA op (a C++ exception's message)."""


def dtype_code(dt: np.dtype, bfloat16: bool = False) -> tuple[int, bool]:
    """(DType code, byte-swapped) of a NumPy dtype; bfloat16: 2-byte items holding bfloat16."""
    dt = np.dtype(dt)
    swapped = dt.byteorder == ">"
    name = "bfloat16" if bfloat16 else dt.newbyteorder("=").name
    return DTYPE_CODES[name], swapped


def _geometry(a: np.ndarray):
    shape = (ctypes.c_int64 * 3)(*a.shape)
    strides = (ctypes.c_int64 * 3)(*(s // a.itemsize for s in a.strides))
    return shape, strides


class EmulatedOps:
    def __init__(self, lib_path: Path) -> None:
        lib = ctypes.CDLL(str(lib_path))
        c = ctypes
        lib.emu_preprocess_workspace_bytes.restype = c.c_longlong
        lib.emu_preprocess_workspace_bytes.argtypes = [
            c.c_void_p, c.c_int, c.c_int, _i64p, _i64p, c.c_int, c.c_int64, c.c_int64, c.c_int,
            c.c_int, c.c_double, c.c_double, c.c_int, c.c_char_p, c.c_size_t,
        ]  # fmt: skip
        lib.emu_preprocess.restype = c.c_int
        lib.emu_preprocess.argtypes = [
            c.c_void_p, c.c_int, c.c_int, _i64p, _i64p, c.c_int, c.c_int64, c.c_int64, c.c_int,
            c.c_int, c.c_double, c.c_double, c.c_void_p, c.c_int, c.c_void_p, c.c_size_t,
            c.c_size_t, c.c_char_p, c.c_size_t,
        ]  # fmt: skip
        lib.emu_postprocess.restype = c.c_int
        lib.emu_postprocess.argtypes = [
            c.c_void_p, c.c_int, c.c_void_p, _i64p, _i64p, c.c_int, c.c_int64, c.c_int64,
            c.c_void_p, c.c_size_t, c.c_char_p, c.c_size_t,
        ]  # fmt: skip
        lib.emu_stream_wait.restype = c.c_int
        lib.emu_stream_wait.argtypes = [c.c_size_t, c.c_size_t, c.c_char_p, c.c_size_t]
        lib.emu_take_log.restype = c.c_size_t
        lib.emu_take_log.argtypes = [c.c_char_p, c.c_size_t]
        lib.emu_take_error.restype = c.c_size_t
        lib.emu_take_error.argtypes = [c.c_char_p, c.c_size_t]
        lib.emu_live_allocations.restype = c.c_int
        lib.emu_set_driver.restype = None
        lib.emu_set_driver.argtypes = [c.c_int, c.c_int, c.c_int]
        lib.emu_cuda_unavailable_reason.restype = c.c_size_t
        lib.emu_cuda_unavailable_reason.argtypes = [c.c_char_p, c.c_size_t]
        self.lib = lib

    # -- reading the shim's records --------------------------------------------------------------
    def take_log(self) -> list[str]:
        size = self.lib.emu_take_log(None, 0)
        buf = ctypes.create_string_buffer(size + 1)
        self.lib.emu_take_log(buf, size + 1)
        return [line for line in buf.value.decode().split("\n") if line]

    def set_driver(self, version: int, count_error: int = 0, count: int = 1) -> None:
        """What the emulated driver reports: CUDA version (e.g. 12020; 0 = no driver), the
        cudaError_t of cudaGetDeviceCount, and the device count."""
        self.lib.emu_set_driver(version, count_error, count)

    def unavailable_reason(self) -> str:
        buf = ctypes.create_string_buffer(1024)
        self.lib.emu_cuda_unavailable_reason(buf, 1024)
        return buf.value.decode()

    def live_allocations(self) -> int:
        return int(self.lib.emu_live_allocations())

    def _check(self, rc: int, err) -> None:
        buf = ctypes.create_string_buffer(4096)
        self.lib.emu_take_error(buf, 4096)
        if rc != 0:
            raise EmulatedCudaError(err.value.decode() + " | " + buf.value.decode())

    # -- ops -------------------------------------------------------------------------------------
    def _pre_args(self, vol, z0, n, axis, mode, window, bfloat16_volume):
        code, swapped = dtype_code(vol.dtype, bfloat16_volume)
        shape, strides = _geometry(vol)
        lo, hi = window if window is not None else (0.0, 0.0)
        return (vol.ctypes.data, code, int(swapped), shape, strides, axis, z0, n, MODES[mode],
                int(window is not None), float(lo), float(hi))  # fmt: skip

    def workspace_bytes(self, vol, *, z0, n, axis=-1, mode="slice-minmax", window=None,
                        out_code=5, bfloat16_volume=False) -> int:  # fmt: skip
        err = ctypes.create_string_buffer(1024)
        args = self._pre_args(vol, z0, n, axis, mode, window, bfloat16_volume)
        got = self.lib.emu_preprocess_workspace_bytes(*args, out_code, err, 1024)
        self._check(0 if got >= 0 else 1, err)
        return int(got)

    def preprocess(self, vol: np.ndarray, out: np.ndarray, *, z0: int, n: int, axis: int = -1,
                   mode: str = "slice-minmax", window=None, out_code: int | None = None,
                   workspace: np.ndarray | None = None, stream: int = 0,
                   bfloat16_volume: bool = False) -> None:  # fmt: skip
        """out: (n, 3, 256, 256) float32/float16, or uint16 bits with out_code 11 (bfloat16)."""
        if out_code is None:
            out_code = DTYPE_CODES[out.dtype.name]
        err = ctypes.create_string_buffer(4096)
        ws_ptr = None if workspace is None else workspace.ctypes.data
        ws_len = 0 if workspace is None else workspace.nbytes
        rc = self.lib.emu_preprocess(
            *self._pre_args(vol, z0, n, axis, mode, window, bfloat16_volume), out.ctypes.data,
            out_code, ws_ptr, ws_len, stream, err, 4096,
        )  # fmt: skip
        self._check(rc, err)

    def postprocess(self, logits: np.ndarray, out: np.ndarray, *, z0: int, n: int, axis: int,
                    resized_hw, logit_code: int | None = None, stream: int = 0) -> None:
        """logits: (n, 1, 64, 64) float32/float16, or uint16 bits with logit_code 11."""
        assert logits.flags.c_contiguous and out.dtype == np.uint8
        if logit_code is None:
            logit_code = DTYPE_CODES[logits.dtype.name]
        hw = np.asarray(resized_hw, np.int32)
        hw = np.ascontiguousarray(np.broadcast_to(hw, (n, 2)) if hw.ndim == 1 else hw)
        shape, strides = _geometry(out)
        err = ctypes.create_string_buffer(4096)
        rc = self.lib.emu_postprocess(logits.ctypes.data, logit_code, out.ctypes.data, shape,
                                      strides, axis, z0, n, hw.ctypes.data, stream, err, 4096)
        self._check(rc, err)

    def stream_wait(self, consumer: int, producer: int) -> None:
        err = ctypes.create_string_buffer(1024)
        self._check(self.lib.emu_stream_wait(consumer, producer, err, 1024), err)
