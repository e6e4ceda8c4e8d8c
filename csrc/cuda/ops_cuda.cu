// Launchers of the CUDA volume ops: workspace (stream-ordered allocations), tap tables built
// on the device, then the kernels of ops_kernels.cuh, all on the caller's stream.
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

namespace {

int64_t abs64(int64_t v) { return v < 0 ? -v : v; }

// Stream-ordered scratch memory, freed on the stream when it goes out of scope.
class Workspace {
 public:
  Workspace(size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes) SAMUNET_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
  }
  ~Workspace() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  char* get() const { return static_cast<char*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

size_t align256(size_t v) { return (v + 255) & ~size_t(255); }

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
  // workspace: x tables, y tables, per-slice stats
  const size_t bx_first = 0;
  const size_t bx_count = align256(bx_first + sizeof(int) * w2);
  const size_t bx_k = align256(bx_count + sizeof(int) * w2);
  const size_t by_first = align256(bx_k + sizeof(int32_t) * (size_t)w2 * kx);
  const size_t by_count = align256(by_first + sizeof(int) * h2);
  const size_t by_k = align256(by_count + sizeof(int) * h2);
  const size_t b_stats = align256(by_k + sizeof(int32_t) * (size_t)h2 * ky);
  const size_t b_range = align256(b_stats + (minmax ? sizeof(double2) * (size_t)r.n : 0));
  const size_t b_lut = align256(b_range + (minmax ? sizeof(double2) * (size_t)r.n : 0));
  constexpr bool use_lut = cuda::LutTraits<T>::enabled;
  const int64_t lut_tables = use_lut ? (minmax ? r.n : 1) : 0;
  const size_t bytes = b_lut + (size_t)lut_tables * cuda::LutTraits<T>::size;
  Workspace ws(bytes, stream);
  char* w = ws.get();
  int* xf = reinterpret_cast<int*>(w + bx_first);
  int* xc = reinterpret_cast<int*>(w + bx_count);
  int32_t* xk = reinterpret_cast<int32_t*>(w + bx_k);
  int* yf = reinterpret_cast<int*>(w + by_first);
  int* yc = reinterpret_cast<int*>(w + by_count);
  int32_t* yk = reinterpret_cast<int32_t*>(w + by_k);
  double2* stats = minmax ? reinterpret_cast<double2*>(w + b_stats) : nullptr;
  double2* range = minmax ? reinterpret_cast<double2*>(w + b_range) : nullptr;
  uint8_t* lut = use_lut ? reinterpret_cast<uint8_t*>(w + b_lut) : nullptr;

  cuda::taps_kernel<<<(w2 + 127) / 128, 128, 0, stream>>>(r.W, w2, kx, xf, xc, xk);
  cuda::taps_kernel<<<(h2 + 127) / 128, 128, 0, stream>>>(r.H, h2, ky, yf, yc, yk);
  SAMUNET_CUDA_CHECK(cudaGetLastError());

  const T* base = static_cast<const T*>(p.volume.data) + r.z0 * r.s_slice;
  const cuda::RunGeom g = geom(r);
  if (minmax) {
    const bool h_fast = abs64(r.s_h) < abs64(r.s_w);
    cuda::minmax_kernel<T><<<(unsigned)r.n, dim3(32, 8), 0, stream>>>(
        base, g, h_fast, p.has_window, p.lo, p.hi, stats, range);
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
      base, g, h2, w2, cuda::TapTable{kx, xf, xc, xk}, cuda::TapTable{ky, yf, yc, yk}, stats,
      p.has_window, p.lo, p.hi, lut, minmax ? (int64_t)cuda::LutTraits<T>::size : 0,
      static_cast<OutT*>(p.out));
  SAMUNET_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void preprocess_in(const PreprocessParams& p, cudaStream_t stream) {
  if (p.out_dtype == DType::F32) launch_preprocess<T, float>(p, stream);
  else launch_preprocess<T, __half>(p, stream);
}

template <typename LT>
void launch_postprocess(const PostprocessParams& p, cudaStream_t stream) {
  const SliceRun& r = p.run;
  bool uniform = true;
  for (int64_t s = 1; s < r.n; ++s)
    uniform = uniform && p.resized_hw[2 * s] == p.resized_hw[0] &&
              p.resized_hw[2 * s + 1] == p.resized_hw[1];
  Workspace ws(uniform ? 0 : sizeof(int32_t) * 2 * (size_t)r.n, stream);
  const int32_t* sizes = nullptr;
  if (!uniform) {
    SAMUNET_CUDA_CHECK(cudaMemcpyAsync(ws.get(), p.resized_hw, sizeof(int32_t) * 2 * r.n,
                                       cudaMemcpyHostToDevice, stream));
    sizes = reinterpret_cast<const int32_t*>(ws.get());
  }
  // output axes (slice, h, w) ordered by |stride|, fastest first
  int order[3] = {0, 1, 2};
  const int64_t st[3] = {abs64(r.s_slice), abs64(r.s_h), abs64(r.s_w)};
  std::stable_sort(order, order + 3, [&](int a, int b) { return st[a] < st[b]; });
  uint8_t* base = static_cast<uint8_t*>(p.out.data) + r.z0 * r.s_slice;
  const int64_t total = r.n * r.H * r.W;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 1 << 20);
  cuda::postprocess_kernel<LT><<<(unsigned)blocks, threads, 0, stream>>>(
      static_cast<const LT*>(p.logits), base, geom(r), order[0], order[1], order[2], sizes,
      p.resized_hw[0], p.resized_hw[1]);
  SAMUNET_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void preprocess_cuda(const PreprocessParams& p, cudaStream_t stream) {
  check_preprocess(p);
  if (p.run.n == 0) return;
  SAMUNET_CHECK(p.run.n <= 65535, "preprocess: at most 65535 slices per call on CUDA, got ",
                p.run.n);
  switch (p.volume.dtype) {
    case DType::U8: preprocess_in<uint8_t>(p, stream); break;
    case DType::I16: preprocess_in<int16_t>(p, stream); break;
    case DType::U16: preprocess_in<uint16_t>(p, stream); break;
    case DType::I32: preprocess_in<int32_t>(p, stream); break;
    case DType::F32: preprocess_in<float>(p, stream); break;
    case DType::F64: preprocess_in<double>(p, stream); break;
    default: SAMUNET_CHECK(false, "volume: unsupported dtype");
  }
}

void postprocess_cuda(const PostprocessParams& p, cudaStream_t stream) {
  check_postprocess(p);
  if (p.run.n == 0 || p.run.H * p.run.W == 0) return;
  if (p.logit_dtype == DType::F32) launch_postprocess<float>(p, stream);
  else launch_postprocess<__half>(p, stream);
}

}  // namespace sam_unet
