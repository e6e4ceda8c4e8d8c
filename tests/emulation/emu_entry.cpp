// ctypes entry points of the emulated CUDA ops: the plain C++ API of csrc/include/sam_unet/ops.h
// (preprocess_cuda, postprocess_cuda, ...) on host memory standing for device memory.
#include <cstring>
#include <exception>
#include <string>

#include "sam_unet/ops.h"

namespace {

int report(const std::exception& e, char* err, size_t len) {
  const std::string msg = e.what();
  const size_t n = msg.size() < len - 1 ? msg.size() : len - 1;
  std::memcpy(err, msg.data(), n);
  err[n] = 0;
  return 1;
}

sam_unet::PreprocessParams pre_params(void* data, int dtype, int byteswap, const int64_t* shape,
                                      const int64_t* strides, int axis, int64_t z0, int64_t n,
                                      int mode, int has_window, double lo, double hi, void* out,
                                      int out_dtype) {
  sam_unet::PreprocessParams p;
  p.volume.data = data;
  p.volume.dtype = (sam_unet::DType)dtype;
  for (int k = 0; k < 3; ++k) {
    p.volume.shape[k] = shape[k];
    p.volume.strides[k] = strides[k];
  }
  p.byteswap = byteswap != 0;
  p.run = sam_unet::make_slice_run(p.volume, axis, z0, n);
  p.mode = (sam_unet::NormMode)mode;
  p.has_window = has_window != 0;
  p.lo = lo;
  p.hi = hi;
  p.out = out;
  p.out_dtype = (sam_unet::DType)out_dtype;
  return p;
}

}  // namespace

extern "C" {

// Scratch bytes the CUDA preprocess needs (-1 and err on a bad request).
long long emu_preprocess_workspace_bytes(void* data, int dtype, int byteswap,
                                         const int64_t* shape, const int64_t* strides, int axis,
                                         int64_t z0, int64_t n, int mode, int has_window,
                                         double lo, double hi, int out_dtype, char* err,
                                         size_t len) {
  try {
    const auto p = pre_params(data, dtype, byteswap, shape, strides, axis, z0, n, mode,
                              has_window, lo, hi, nullptr, out_dtype);
    return (long long)sam_unet::preprocess_cuda_workspace_bytes(p);
  } catch (const std::exception& e) {
    report(e, err, len);
    return -1;
  }
}

int emu_preprocess(void* data, int dtype, int byteswap, const int64_t* shape,
                   const int64_t* strides, int axis, int64_t z0, int64_t n, int mode,
                   int has_window, double lo, double hi, void* out, int out_dtype,
                   void* workspace, size_t workspace_bytes, uintptr_t stream, char* err,
                   size_t len) {
  try {
    auto p = pre_params(data, dtype, byteswap, shape, strides, axis, z0, n, mode, has_window, lo,
                        hi, out, out_dtype);
    p.workspace = workspace;
    p.workspace_bytes = workspace_bytes;
    sam_unet::preprocess_cuda(p, reinterpret_cast<cudaStream_t>(stream));
    return 0;
  } catch (const std::exception& e) {
    return report(e, err, len);
  }
}

int emu_postprocess(const void* logits, int logit_dtype, void* out, const int64_t* shape,
                    const int64_t* strides, int axis, int64_t z0, int64_t n,
                    const int32_t* resized_hw, uintptr_t stream, char* err, size_t len) {
  try {
    sam_unet::PostprocessParams p;
    p.logits = logits;
    p.logit_dtype = (sam_unet::DType)logit_dtype;
    p.out.data = out;
    p.out.dtype = sam_unet::DType::U8;
    for (int k = 0; k < 3; ++k) {
      p.out.shape[k] = shape[k];
      p.out.strides[k] = strides[k];
    }
    p.run = sam_unet::make_slice_run(p.out, axis, z0, n);
    p.resized_hw = resized_hw;
    sam_unet::postprocess_cuda(p, reinterpret_cast<cudaStream_t>(stream));
    return 0;
  } catch (const std::exception& e) {
    return report(e, err, len);
  }
}

// Why the CUDA ops cannot run, in words (csrc/cuda/device_query.cu), "" when they can.
size_t emu_cuda_unavailable_reason(char* buf, size_t len) {
  const std::string why = sam_unet::cuda_unavailable_reason();
  const size_t n = why.size() < len - 1 ? why.size() : len - 1;
  std::memcpy(buf, why.data(), n);
  buf[n] = 0;
  return why.size();
}

int emu_stream_wait(uintptr_t consumer, uintptr_t producer, char* err, size_t len) {
  try {
    sam_unet::cuda_stream_wait(reinterpret_cast<cudaStream_t>(consumer), producer);
    return 0;
  } catch (const std::exception& e) {
    return report(e, err, len);
  }
}

}  // extern "C"
