// CUDA kernels of the volume ops (no framework types). Launchers: ops_cuda.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "sam_unet/elem.h"
#include "sam_unet/resample.h"

namespace sam_unet::cuda {

// One slice run: element (s, h, w) of the run at base + s*s_slice + h*s_h + w*s_w.
struct RunGeom {
  int64_t n, H, W;
  int64_t s_slice, s_h, s_w;
};

// Pillow taps of one axis in device memory: first/count (out) and k (out, ksize).
struct TapTable {
  int ksize;
  const int* first;
  const int* count;
  const int32_t* k;
};

// Fill the tap tables of one axis (one thread per output sample).
__global__ void taps_kernel(int64_t in_size, int64_t out_size, int ksize, int* first, int* count,
                            int32_t* k) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < out_size) resample_taps(in_size, out_size, i, ksize, &first[i], &count[i], &k[(int64_t)i * ksize]);
}

// How a stored element reads: Bits, the unsigned type loaded (byte-swapped for volumes stored
// in the other byte order), value(bits) as float64 (64-bit integers as NumPy's astype(float64)),
// and for the lookup-table types integer(bits).
template <typename T>
struct Elem;
template <>
struct Elem<uint8_t> {  // also bool
  using Bits = unsigned char;
  __device__ static double value(Bits b) { return (double)b; }
  __device__ static int integer(Bits b) { return (int)b; }
};
template <>
struct Elem<int8_t> {
  using Bits = unsigned char;
  __device__ static double value(Bits b) { return (double)(signed char)b; }
  __device__ static int integer(Bits b) { return (int)(signed char)b; }
};
template <>
struct Elem<int16_t> {
  using Bits = unsigned short;
  __device__ static double value(Bits b) { return (double)(short)b; }
  __device__ static int integer(Bits b) { return (int)(short)b; }
};
template <>
struct Elem<uint16_t> {
  using Bits = unsigned short;
  __device__ static double value(Bits b) { return (double)b; }
  __device__ static int integer(Bits b) { return (int)b; }
};
template <>
struct Elem<int32_t> {
  using Bits = unsigned int;
  __device__ static double value(Bits b) { return (double)(int)b; }
};
template <>
struct Elem<uint32_t> {
  using Bits = unsigned int;
  __device__ static double value(Bits b) { return (double)b; }
};
template <>
struct Elem<int64_t> {
  using Bits = unsigned long long;
  __device__ static double value(Bits b) { return (double)(long long)b; }
};
template <>
struct Elem<uint64_t> {
  using Bits = unsigned long long;
  __device__ static double value(Bits b) { return (double)b; }
};
template <>
struct Elem<float> {
  using Bits = unsigned int;
  __device__ static double value(Bits b) { return (double)__uint_as_float(b); }
};
template <>
struct Elem<double> {
  using Bits = unsigned long long;
  __device__ static double value(Bits b) { return __longlong_as_double((long long)b); }
};
template <>
struct Elem<Half16> {
  using Bits = unsigned short;
  __device__ static double value(Bits b) { return (double)__half2float(__ushort_as_half(b)); }
};
template <>
struct Elem<BFloat16> {
  using Bits = unsigned short;
  __device__ static double value(Bits b) { return (double)__uint_as_float((unsigned int)b << 16); }
};

template <typename T>
__device__ __forceinline__ typename Elem<T>::Bits load_bits(const T* p, bool swap) {
  using B = typename Elem<T>::Bits;
  const B b = __ldg(reinterpret_cast<const B*>(p));
  return swap ? (B)byteswap(b) : b;
}

template <typename T>
__device__ __forceinline__ double load_value(const T* p, bool swap) {
  return Elem<T>::value(load_bits(p, swap));
}

// Per-slice (offset, denom) for slice-minmax: one block per slice, threads.x along the slice
// axis with the smaller stride (coalesced when it is contiguous), warp-shuffle reduction.
template <typename T>
__global__ void minmax_kernel(const T* __restrict__ base, RunGeom g, bool swap, bool h_fast,
                              bool has_window, double lo, double hi, double2* __restrict__ stats,
                              double2* __restrict__ range) {
  const int64_t s = blockIdx.x;
  const T* p = base + s * g.s_slice;
  const int64_t inner = h_fast ? g.H : g.W, outer = h_fast ? g.W : g.H;
  const int64_t s_in = h_fast ? g.s_h : g.s_w, s_out = h_fast ? g.s_w : g.s_h;
  double mn = INFINITY, mx = -INFINITY;
  for (int64_t o = threadIdx.y; o < outer; o += blockDim.y) {
    const T* row = p + o * s_out;
    for (int64_t i = threadIdx.x; i < inner; i += blockDim.x) {
      const double x = load_value(row + i * s_in, swap);
      mn = fmin(mn, x);
      mx = fmax(mx, x);
    }
  }
  for (int off = 16; off > 0; off >>= 1) {
    mn = fmin(mn, __shfl_down_sync(0xffffffffu, mn, off));
    mx = fmax(mx, __shfl_down_sync(0xffffffffu, mx, off));
  }
  __shared__ double smin[32], smax[32];
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int warp = tid / 32, lane = tid % 32, warps = (blockDim.x * blockDim.y + 31) / 32;
  if (lane == 0) {
    smin[warp] = mn;
    smax[warp] = mx;
  }
  __syncthreads();
  if (tid == 0) {
    for (int w = 1; w < warps; ++w) {
      mn = fmin(mn, smin[w]);
      mx = fmax(mx, smax[w]);
    }
    range[s] = make_double2(mn, mx);
    if (has_window) {
      mn = mn < lo ? lo : (mn > hi ? hi : mn);
      mx = mx < lo ? lo : (mx > hi ? hi : mx);
    }
    stats[s] = make_double2(mn, mx - mn + 1e-6);
  }
}

// 8- and 16-bit integer volumes (bool as uint8) convert through a per-slice lookup table (one
// exact float64 conversion per distinct value instead of one per tap):
// index = value - LutTraits<T>::lowest.
template <typename T>
struct LutTraits {
  static constexpr bool enabled = false;
  static constexpr int lowest = 0, size = 0;
};
template <>
struct LutTraits<uint8_t> {
  static constexpr bool enabled = true;
  static constexpr int lowest = 0, size = 256;
};
template <>
struct LutTraits<int8_t> {
  static constexpr bool enabled = true;
  static constexpr int lowest = -128, size = 256;
};
template <>
struct LutTraits<int16_t> {
  static constexpr bool enabled = true;
  static constexpr int lowest = -32768, size = 65536;
};
template <>
struct LutTraits<uint16_t> {
  static constexpr bool enabled = true;
  static constexpr int lowest = 0, size = 65536;
};

// Fill the lookup tables: grid (size / 256, slices). slice-minmax: table s over the slice's raw
// [min, max] (other entries are never read); window mode: one table (gridDim.y == 1).
template <typename T>
__global__ void lut_kernel(const double2* __restrict__ stats, const double2* __restrict__ range,
                           bool clip, double lo, double hi, uint8_t* __restrict__ lut) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= LutTraits<T>::size) return;
  const int64_t s = blockIdx.y;
  const double v = (double)(LutTraits<T>::lowest + i);
  double offset = lo, denom = hi - lo;
  if (stats) {
    const double2 rg = range[s];
    if (v < rg.x || v > rg.y) return;
    offset = stats[s].x;
    denom = stats[s].y;
  }
  lut[s * LutTraits<T>::size + i] = intensity_u8(v, clip, lo, hi, offset, denom);
}

template <typename OutT>
__device__ __forceinline__ OutT to_out(float v);
template <>
__device__ __forceinline__ float to_out<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half to_out<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 to_out<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Fused resize + normalise + pad: one thread per output pixel (x fastest, coalesced writes),
// both Pillow passes computed from the raw input (the horizontal pass rounded to 8 bits per
// intermediate row sample, exactly as Pillow). stats == nullptr: window mode (lo, hi - lo).
// kHFast: the input's rows (H) are its contiguous axis (e.g. nibabel's Fortran order), so
// threadIdx.x runs along output rows to keep the input reads coalesced.
template <typename T, typename OutT, bool kHFast>
__global__ void preprocess_kernel(const T* __restrict__ base, RunGeom g, bool swap, int h2,
                                  int w2, TapTable tx, TapTable ty,
                                  const double2* __restrict__ stats, bool clip, double lo, double hi, const uint8_t* __restrict__ lut,
                                  int64_t lut_stride, OutT* __restrict__ out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int j = blockIdx.y * blockDim.y + threadIdx.y;
  const int x = kHFast ? j : i;
  const int y = kHFast ? i : j;
  const int64_t s = blockIdx.z;
  if (x >= kImageSize || y >= kImageSize) return;
  OutT* o = out + s * 3 * kImageSize * kImageSize + (int64_t)y * kImageSize + x;
  constexpr int64_t plane = (int64_t)kImageSize * kImageSize;
  if (y >= h2 || x >= w2) {
    o[0] = to_out<OutT>(0.0f);
    o[plane] = to_out<OutT>(0.0f);
    o[2 * plane] = to_out<OutT>(0.0f);
    return;
  }
  double offset, denom;
  if (stats) {
    const double2 st = stats[s];
    offset = st.x;
    denom = st.y;
  } else {
    offset = lo;
    denom = hi - lo;
  }
  const T* p = base + s * g.s_slice;
  const uint8_t* table = lut ? lut + s * lut_stride : nullptr;
  (void)table;
  const int yf = ty.first[y], yc = ty.count[y];
  const int xf = tx.first[x], xc = tx.count[x];
  const int32_t* ky = ty.k + (int64_t)y * ty.ksize;
  const int32_t* kx = tx.k + (int64_t)x * tx.ksize;
  int32_t accv = 1 << (kPrecisionBits - 1);
  for (int t = 0; t < yc; ++t) {
    const T* row = p + (int64_t)(yf + t) * g.s_h + (int64_t)xf * g.s_w;
    int32_t acch = 1 << (kPrecisionBits - 1);
    if constexpr (LutTraits<T>::enabled) {
      for (int u = 0; u < xc; ++u) {
        const int raw = Elem<T>::integer(load_bits(row + (int64_t)u * g.s_w, swap));
        acch += (int32_t)__ldg(table + (raw - LutTraits<T>::lowest)) * __ldg(kx + u);
      }
    } else {
      for (int u = 0; u < xc; ++u) {
        const uint8_t v = intensity_u8(load_value(row + (int64_t)u * g.s_w, swap), clip, lo, hi,
                                       offset, denom);
        acch += (int32_t)v * __ldg(kx + u);
      }
    }
    accv += (int32_t)clip8(acch) * __ldg(ky + t);
  }
  const float v = (float)clip8(accv);
#pragma unroll
  for (int c = 0; c < 3; ++c) o[c * plane] = to_out<OutT>((v - pixel_mean(c)) / pixel_std(c));
}

template <typename LT>
__device__ __forceinline__ float load_logit(const LT* p);
template <>
__device__ __forceinline__ float load_logit<float>(const float* p) { return __ldg(p); }
template <>
__device__ __forceinline__ float load_logit<__half>(const __half* p) { return __half2float(*p); }
template <>
__device__ __forceinline__ float load_logit<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

// Per-slice (h', w') of one postprocess launch of slices of mixed sizes, passed by value (no
// device memory, no copy): ((h' - 1) << 8) | (w' - 1).
constexpr int kSizesPerLaunch = 256;
struct SliceSizes {
  uint16_t hw[kSizesPerLaunch];
};

// Fused 64 -> 256 bilinear, crop, -> (H, W) bilinear, threshold: one thread per output voxel,
// the linear index decoded with the output's smallest-stride axis fastest (coalesced writes).
// mixed == false: every slice has (h2, w2); else sizes.hw gives each slice's.
template <typename LT>
__global__ void postprocess_kernel(const LT* __restrict__ logits, uint8_t* __restrict__ base,
                                   RunGeom g, int f0, int f1, int f2, bool mixed,
                                   const SliceSizes sizes, int h2, int w2) {
  const int64_t dims[3] = {g.n, g.H, g.W};
  const int64_t total = g.n * g.H * g.W;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int64_t c[3];
    int64_t r = idx;
    c[f0] = r % dims[f0];
    r /= dims[f0];
    c[f1] = r % dims[f1];
    c[f2] = r / dims[f1];
    const int64_t s = c[0], h = c[1], w = c[2];
    int hh = h2, ww = w2;
    if (mixed) {
      const int e = sizes.hw[s];
      hh = (e >> 8) + 1;
      ww = (e & 255) + 1;
    }
    int iy[4], ix[4];
    float wy[4], wx[4];
    composed_taps((int)h, hh, (int)g.H, iy, wy);
    composed_taps((int)w, ww, (int)g.W, ix, wx);
    const LT* L = logits + s * kLogitSize * kLogitSize;
    float acc = 0.0f;
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const LT* row = L + iy[a] * kLogitSize;
      const float rv = wx[0] * load_logit(row + ix[0]) + wx[1] * load_logit(row + ix[1]) +
                       wx[2] * load_logit(row + ix[2]) + wx[3] * load_logit(row + ix[3]);
      acc += wy[a] * rv;
    }
    base[s * g.s_slice + h * g.s_h + w * g.s_w] = acc > 0.0f ? 1 : 0;
  }
}

}  // namespace sam_unet::cuda
