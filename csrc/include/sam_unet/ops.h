// Plain C++ API of the volume pre/postprocessing ops (no framework types): raw pointers, sizes,
// strides in elements (any sign) and, for CUDA, the caller's cudaStream_t.
//
// Semantics: the reference is python/sam_unet/transforms.py (the tests hold these ops to it).
// Slice k along `axis` of a (X, Y, Z) volume is the 2D image of the two remaining axes in order
// (docs/architecture.md, "Frames").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

// Same declaration as CUDA's driver_types.h, so this header needs no CUDA include.
struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;

namespace sam_unet {

constexpr int kImageSize = 256;  // model input side
constexpr int kLogitSize = 64;   // logit map side

// Element types. BF16 is bfloat16; Bool is read as uint8 (0/1).
enum class DType : int { U8 = 0, I16, U16, I32, F16, F32, F64, I8, U32, I64, U64, BF16, Bool };
enum class NormMode : int { SliceMinMax = 0, Window = 1 };

const char* dtype_name(DType t);
int dtype_size(DType t);

// A strided 3D volume: element (i, j, k) lives at data + i*strides[0] + j*strides[1] + k*strides[2]
// (strides in elements, negative allowed; data points at element (0, 0, 0)).
struct Volume3D {
  void* data = nullptr;
  DType dtype = DType::U8;
  int64_t shape[3] = {0, 0, 0};
  int64_t strides[3] = {0, 0, 0};
};

// The slices [z0, z0 + n) along `axis` of a volume, as a 2D (H, W) image per slice.
struct SliceRun {
  int axis = 2;          // 0, 1 or 2 (normalised)
  int64_t z0 = 0, n = 0;
  int64_t H = 0, W = 0;  // slice size
  int64_t s_slice = 0, s_h = 0, s_w = 0;  // strides (elements) along slice, row, column
};

// Resolve axis (negative allowed) and [z0, z0 + n) against a volume; throws on bad input.
SliceRun make_slice_run(const Volume3D& vol, int axis, int64_t z0, int64_t n);

// (h', w') of an (h, w) slice resized so that the longest side is kImageSize (a side that
// would round to 0 is kept at 1).
void resized_shape(int64_t h, int64_t w, int32_t* h2, int32_t* w2);

struct PreprocessParams {
  Volume3D volume;                      // any DType (int64/uint64 read as float64, as NumPy's
                                        // astype(float64); bool as uint8)
  bool byteswap = false;                // volume stored in the other byte order (big-endian)
  SliceRun run;
  NormMode mode = NormMode::SliceMinMax;
  bool has_window = false;              // clip to [lo, hi] first
  double lo = 0.0, hi = 0.0;
  void* out = nullptr;                  // (n, 3, 256, 256) contiguous, float16/bfloat16/float32
  DType out_dtype = DType::F32;
  // CUDA only: device scratch memory from the caller's allocator (at least
  // preprocess_cuda_workspace_bytes(p) bytes, alive until the work on the stream is done), or
  // nullptr: allocated and freed here with cudaMalloc/cudaFree after synchronising the stream.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

struct PostprocessParams {
  const void* logits = nullptr;         // (n, 1, 64, 64) contiguous, float16/bfloat16/float32
  DType logit_dtype = DType::F32;
  Volume3D out;                         // uint8 volume, written at slices [z0, z0 + n)
  SliceRun run;
  const int32_t* resized_hw = nullptr;  // host (n, 2): (h', w') per slice, 1..256
};

// Validates modes/dtypes/window; throws std::invalid_argument naming the problem.
void check_preprocess(const PreprocessParams& p);
void check_postprocess(const PostprocessParams& p);

// CPU (OpenMP over groups of slices). Throws std::invalid_argument on NaN/Inf intensities.
void preprocess_cpu(const PreprocessParams& p);
void postprocess_cpu(const PostprocessParams& p);

// Boxes (n, 4) float32 (x0, y0, x1, y1) scaled by (w'/W, h'/H); in and out may alias.
void scale_boxes_cpu(const float* in, float* out, int64_t n, int64_t H, int64_t W, int32_t h2,
                     int32_t w2);

// CUDA (available when built with SAMUNET_WITH_CUDA): data pointers are device pointers of the
// current device, launched on `stream`, asynchronous. NaN/Inf are not detected on the device.
bool cuda_compiled();
int cuda_device_count();                   // 0 without CUDA, driver or device
int cuda_pointer_device(const void* ptr);  // device of a device/managed pointer, -1 otherwise
int cuda_current_device();
void cuda_set_device(int device);
// Why the CUDA ops cannot run here, in words (driver missing or older than the runtime, no
// device, ...); empty when a device is usable.
std::string cuda_unavailable_reason();
// Scratch bytes preprocess_cuda needs for p (tap tables, per-slice statistics, lookup tables).
size_t preprocess_cuda_workspace_bytes(const PreprocessParams& p);
// Order `consumer` after the work queued so far on `producer`, the `stream` of a
// __cuda_array_interface__ v3 (1: legacy default stream, 2: per-thread default stream, else a
// cudaStream_t): an event recorded on producer, waited on by consumer. No-op for the same stream.
void cuda_stream_wait(cudaStream_t consumer, uintptr_t producer);
void preprocess_cuda(const PreprocessParams& p, cudaStream_t stream);
void postprocess_cuda(const PostprocessParams& p, cudaStream_t stream);

}  // namespace sam_unet
