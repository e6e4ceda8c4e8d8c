// Launchers of the CUDA volume ops: scratch memory from the caller (or a plain cudaMalloc), tap
// tables built on the device, then the kernels of ops_kernels.cuh, all on the caller's stream.
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "ops_kernels.cuh"
#include "sam_unet/check.h"
#include "sam_unet/ops.h"

namespace sam_unet {

bool cuda_compiled() { return true; }

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

int cuda_pointer_device(const void* ptr) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  if (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) return attr.device;
  return -1;
}

int cuda_current_device() {
  int d = -1;
  SAMUNET_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

void cuda_set_device(int device) { SAMUNET_CUDA_CHECK(cudaSetDevice(device)); }

void cuda_stream_wait(cudaStream_t consumer, uintptr_t producer) {
  // v3 names the legacy default stream 1 and the per-thread default stream 2 (0 is disallowed
  // as ambiguous; read as the legacy default stream, which a null cudaStream_t is here).
  cudaStream_t from = producer == 2 ? cudaStreamPerThread
                      : producer <= 1 ? cudaStreamLegacy
                                      : reinterpret_cast<cudaStream_t>(producer);
  cudaStream_t to = consumer == nullptr ? cudaStreamLegacy : consumer;
  if (from == to) return;
  cudaEvent_t event;
  SAMUNET_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  cudaError_t err = cudaEventRecord(event, from);
  if (err == cudaSuccess) err = cudaStreamWaitEvent(to, event, 0);
  cudaEventDestroy(event);  // released once the recorded work completes
  SAMUNET_CUDA_CHECK(err);
}

namespace {

int64_t abs64(int64_t v) { return v < 0 ? -v : v; }

size_t align256(size_t v) { return (v + 255) & ~size_t(255); }

// Scratch memory of one launch sequence: the caller's (p.workspace), or else cudaMalloc'd here
// and freed after the stream has finished with it (synchronising: for callers without an
// allocator only).
class Workspace {
 public:
  Workspace(void* given, size_t given_bytes, size_t bytes, cudaStream_t stream)
      : stream_(stream) {
    if (bytes == 0) return;
    if (given) {
      SAMUNET_CHECK(given_bytes >= bytes, "workspace: ", given_bytes, " bytes given, ", bytes,
                    " needed");
      SAMUNET_CHECK(reinterpret_cast<uintptr_t>(given) % 16 == 0,
                    "workspace: the pointer must be 16-byte aligned");
      ptr_ = given;
      return;
    }
    SAMUNET_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
    owned_ = true;
  }
  ~Workspace() {
    if (!owned_) return;
    cudaStreamSynchronize(stream_);
    cudaFree(ptr_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  char* get() const { return static_cast<char*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  bool owned_ = false;
  cudaStream_t stream_;
};

// Byte offsets of the preprocess scratch: x tables, y tables, per-slice stats, lookup tables.
struct PreLayout {
  size_t x_first, x_count, x_k, y_first, y_count, y_k, stats, range, lut, bytes;
};

PreLayout pre_layout(const PreprocessParams& p, int lut_size) {
  const SliceRun& r = p.run;
  int32_t h2, w2;
  resized_shape(r.H, r.W, &h2, &w2);
  const int kx = resample_ksize(r.W, w2), ky = resample_ksize(r.H, h2);
  const bool minmax = p.mode == NormMode::SliceMinMax;
  PreLayout l;
  l.x_first = 0;
  l.x_count = align256(l.x_first + sizeof(int) * w2);
  l.x_k = align256(l.x_count + sizeof(int) * w2);
  l.y_first = align256(l.x_k + sizeof(int32_t) * (size_t)w2 * kx);
  l.y_count = align256(l.y_first + sizeof(int) * h2);
  l.y_k = align256(l.y_count + sizeof(int) * h2);
  l.stats = align256(l.y_k + sizeof(int32_t) * (size_t)h2 * ky);
  l.range = align256(l.stats + (minmax ? sizeof(double2) * (size_t)r.n : 0));
  l.lut = align256(l.range + (minmax ? sizeof(double2) * (size_t)r.n : 0));
  const int64_t tables = lut_size ? (minmax ? r.n : 1) : 0;
  l.bytes = l.lut + (size_t)tables * lut_size;
  return l;
}

cuda::RunGeom geom(const SliceRun& r) {
  return cuda::RunGeom{r.n, r.H, r.W, r.s_slice, r.s_h, r.s_w};
}

template <typename T, typename OutT>
void launch_preprocess(const PreprocessParams& p, cudaStream_t stream) {
  const SliceRun& r = p.run;
  int32_t h2, w2;
  resized_shape(r.H, r.W, &h2, &w2);
  const int kx = resample_ksize(r.W, w2), ky = resample_ksize(r.H, h2);
  const bool minmax = p.mode == NormMode::SliceMinMax;
  constexpr bool use_lut = cuda::LutTraits<T>::enabled;
  const PreLayout l = pre_layout(p, cuda::LutTraits<T>::size);
  const int64_t lut_tables = use_lut ? (minmax ? r.n : 1) : 0;
  Workspace ws(p.workspace, p.workspace_bytes, l.bytes, stream);
  char* w = ws.get();
  int* xf = reinterpret_cast<int*>(w + l.x_first);
  int* xc = reinterpret_cast<int*>(w + l.x_count);
  int32_t* xk = reinterpret_cast<int32_t*>(w + l.x_k);
  int* yf = reinterpret_cast<int*>(w + l.y_first);
  int* yc = reinterpret_cast<int*>(w + l.y_count);
  int32_t* yk = reinterpret_cast<int32_t*>(w + l.y_k);
  double2* stats = minmax ? reinterpret_cast<double2*>(w + l.stats) : nullptr;
  double2* range = minmax ? reinterpret_cast<double2*>(w + l.range) : nullptr;
  uint8_t* lut = use_lut ? reinterpret_cast<uint8_t*>(w + l.lut) : nullptr;

  cuda::taps_kernel<<<(w2 + 127) / 128, 128, 0, stream>>>(r.W, w2, kx, xf, xc, xk);
  cuda::taps_kernel<<<(h2 + 127) / 128, 128, 0, stream>>>(r.H, h2, ky, yf, yc, yk);
  SAMUNET_CUDA_CHECK(cudaGetLastError());

  const T* base = static_cast<const T*>(p.volume.data) + r.z0 * r.s_slice;
  const cuda::RunGeom g = geom(r);
  const bool swap = p.byteswap;
  if (minmax) {
    const bool h_fast = abs64(r.s_h) < abs64(r.s_w);
    cuda::minmax_kernel<T><<<(unsigned)r.n, dim3(32, 8), 0, stream>>>(
        base, g, swap, h_fast, p.has_window, p.lo, p.hi, stats, range);
    SAMUNET_CUDA_CHECK(cudaGetLastError());
  }
  if (use_lut) {
    const dim3 lgrid((cuda::LutTraits<T>::size + 255) / 256, (unsigned)lut_tables);
    cuda::lut_kernel<T><<<lgrid, 256, 0, stream>>>(stats, range, p.has_window, p.lo, p.hi, lut);
    SAMUNET_CUDA_CHECK(cudaGetLastError());
  }
  const dim3 block(32, 8);
  const dim3 grid(kImageSize / 32, kImageSize / 8, (unsigned)r.n);
  const bool h_fast = r.H > 1 && abs64(r.s_h) < abs64(r.s_w);
  auto kernel = h_fast ? cuda::preprocess_kernel<T, OutT, true>
                       : cuda::preprocess_kernel<T, OutT, false>;
  kernel<<<grid, block, 0, stream>>>(
      base, g, swap, h2, w2, cuda::TapTable{kx, xf, xc, xk}, cuda::TapTable{ky, yf, yc, yk},
      stats, p.has_window, p.lo, p.hi, lut, minmax ? (int64_t)cuda::LutTraits<T>::size : 0,
      static_cast<OutT*>(p.out));
  SAMUNET_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void preprocess_in(const PreprocessParams& p, cudaStream_t stream) {
  if (p.out_dtype == DType::F32) launch_preprocess<T, float>(p, stream);
  else if (p.out_dtype == DType::BF16) launch_preprocess<T, __nv_bfloat16>(p, stream);
  else launch_preprocess<T, __half>(p, stream);
}

// f(T{}) with T the stored element type of the volume's dtype.
template <typename F>
void with_volume_type(DType t, F&& f) {
  switch (t) {
    case DType::U8: case DType::Bool: f(uint8_t{}); break;
    case DType::I8: f(int8_t{}); break;
    case DType::I16: f(int16_t{}); break;
    case DType::U16: f(uint16_t{}); break;
    case DType::I32: f(int32_t{}); break;
    case DType::U32: f(uint32_t{}); break;
    case DType::I64: f(int64_t{}); break;
    case DType::U64: f(uint64_t{}); break;
    case DType::F16: f(Half16{}); break;
    case DType::BF16: f(BFloat16{}); break;
    case DType::F32: f(float{}); break;
    case DType::F64: f(double{}); break;
  }
}

template <typename LT>
void launch_postprocess(const PostprocessParams& p, cudaStream_t stream) {
  const SliceRun& r = p.run;
  bool mixed = false;
  for (int64_t s = 1; s < r.n; ++s)
    mixed = mixed || p.resized_hw[2 * s] != p.resized_hw[0] ||
            p.resized_hw[2 * s + 1] != p.resized_hw[1];
  // output axes (slice, h, w) ordered by |stride|, fastest first
  int order[3] = {0, 1, 2};
  const int64_t st[3] = {abs64(r.s_slice), abs64(r.s_h), abs64(r.s_w)};
  std::stable_sort(order, order + 3, [&](int a, int b) { return st[a] < st[b]; });
  const int threads = 256;
  const int64_t chunk = mixed ? cuda::kSizesPerLaunch : r.n;  // slices per launch
  const LT* logits = static_cast<const LT*>(p.logits);
  cuda::SliceSizes sizes{};
  for (int64_t s0 = 0; s0 < r.n; s0 += chunk) {
    const int64_t m = std::min(chunk, r.n - s0);
    if (mixed)
      for (int64_t s = 0; s < m; ++s)
        sizes.hw[s] = (uint16_t)(((p.resized_hw[2 * (s0 + s)] - 1) << 8) |
                                 (p.resized_hw[2 * (s0 + s) + 1] - 1));
    cuda::RunGeom g = geom(r);
    g.n = m;
    uint8_t* base = static_cast<uint8_t*>(p.out.data) + (r.z0 + s0) * r.s_slice;
    const int64_t total = m * r.H * r.W;
    const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 1 << 20);
    cuda::postprocess_kernel<LT><<<(unsigned)blocks, threads, 0, stream>>>(
        logits + s0 * kLogitSize * kLogitSize, base, g, order[0], order[1], order[2], mixed,
        sizes, p.resized_hw[0], p.resized_hw[1]);
    SAMUNET_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace

size_t preprocess_cuda_workspace_bytes(const PreprocessParams& p) {
  if (p.run.n == 0) return 0;
  size_t bytes = 0;
  with_volume_type(p.volume.dtype, [&](auto t) {
    bytes = pre_layout(p, cuda::LutTraits<decltype(t)>::size).bytes;
  });
  return bytes;
}

void preprocess_cuda(const PreprocessParams& p, cudaStream_t stream) {
  check_preprocess(p);
  if (p.run.n == 0) return;
  SAMUNET_CHECK(p.run.n <= 65535, "preprocess: at most 65535 slices per call on CUDA, got ",
                p.run.n);
  with_volume_type(p.volume.dtype, [&](auto t) { preprocess_in<decltype(t)>(p, stream); });
}

void postprocess_cuda(const PostprocessParams& p, cudaStream_t stream) {
  check_postprocess(p);
  if (p.run.n == 0 || p.run.H * p.run.W == 0) return;
  if (p.logit_dtype == DType::F32) launch_postprocess<float>(p, stream);
  else if (p.logit_dtype == DType::BF16) launch_postprocess<__nv_bfloat16>(p, stream);
  else launch_postprocess<__half>(p, stream);
}

}  // namespace sam_unet
