// CPU implementations of the volume ops: groups of slices in parallel (OpenMP), each group read
// in one sweep in the volume's memory order, so strided and slice-contiguous layouts both stream.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include "sam_unet/check.h"
#include "sam_unet/elem.h"
#include "sam_unet/half.h"
#include "sam_unet/ops.h"
#include "sam_unet/parallel.h"
#include "sam_unet/resample.h"

namespace sam_unet {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::U8: return "uint8";
    case DType::I16: return "int16";
    case DType::U16: return "uint16";
    case DType::I32: return "int32";
    case DType::F16: return "float16";
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    case DType::I8: return "int8";
    case DType::U32: return "uint32";
    case DType::I64: return "int64";
    case DType::U64: return "uint64";
    case DType::BF16: return "bfloat16";
    case DType::Bool: return "bool";
  }
  return "?";
}

int dtype_size(DType t) {
  switch (t) {
    case DType::U8: case DType::I8: case DType::Bool: return 1;
    case DType::I16: case DType::U16: case DType::F16: case DType::BF16: return 2;
    case DType::I32: case DType::U32: case DType::F32: return 4;
    case DType::F64: case DType::I64: case DType::U64: return 8;
  }
  return 0;
}

void resized_shape(int64_t h, int64_t w, int32_t* h2, int32_t* w2) {
  double scale = kImageSize * 1.0 / (double)std::max(h, w);
  *h2 = std::max<int32_t>(1, (int32_t)(h * scale + 0.5));
  *w2 = std::max<int32_t>(1, (int32_t)(w * scale + 0.5));
}

SliceRun make_slice_run(const Volume3D& vol, int axis, int64_t z0, int64_t n) {
  SAMUNET_CHECK(axis >= -3 && axis < 3, "axis must be in [-3, 2], got ", axis);
  if (axis < 0) axis += 3;
  for (int d = 0; d < 3; ++d)
    SAMUNET_CHECK(vol.shape[d] > 0, "volume has an empty axis: shape (", vol.shape[0], ", ",
                  vol.shape[1], ", ", vol.shape[2], ")");
  SAMUNET_CHECK(n >= 0 && z0 >= 0 && z0 + n <= vol.shape[axis], "slices [z0, z0 + n) = [", z0,
                ", ", z0 + n, ") outside the axis ", axis, " of length ", vol.shape[axis]);
  SliceRun r;
  r.axis = axis;
  r.z0 = z0;
  r.n = n;
  int a = axis == 0 ? 1 : 0, b = axis == 2 ? 1 : 2;
  r.H = vol.shape[a];
  r.W = vol.shape[b];
  r.s_slice = vol.strides[axis];
  r.s_h = vol.strides[a];
  r.s_w = vol.strides[b];
  return r;
}

void check_preprocess(const PreprocessParams& p) {
  SAMUNET_CHECK(dtype_size(p.volume.dtype) > 0, "volume: unsupported dtype");
  SAMUNET_CHECK(p.out_dtype == DType::F16 || p.out_dtype == DType::F32 || p.out_dtype == DType::BF16,
                "out: dtype must be float16, bfloat16 or float32, got ", dtype_name(p.out_dtype));
  SAMUNET_CHECK(p.mode == NormMode::SliceMinMax || p.mode == NormMode::Window,
                "mode must be 'slice-minmax' or 'window'");
  SAMUNET_CHECK(p.mode != NormMode::Window || p.has_window, "mode 'window' requires window=(lo, hi)");
  if (p.has_window) {
    SAMUNET_CHECK(std::isfinite(p.lo) && std::isfinite(p.hi), "window bounds must be finite");
    SAMUNET_CHECK(p.lo < p.hi, "window must have lo < hi, got lo=", p.lo, " hi=", p.hi);
  }
  int32_t h2, w2;
  resized_shape(p.run.H, p.run.W, &h2, &w2);
  SAMUNET_CHECK(resample_ksize(p.run.H, h2) <= kMaxTaps && resample_ksize(p.run.W, w2) <= kMaxTaps,
                "volume: slice size ", p.run.H, "x", p.run.W,
                " is too large to resize (downscale factor at most 31)");
}

void check_postprocess(const PostprocessParams& p) {
  SAMUNET_CHECK(p.logit_dtype == DType::F16 || p.logit_dtype == DType::F32 ||
                    p.logit_dtype == DType::BF16,
                "logits: dtype must be float16, bfloat16 or float32, got ",
                dtype_name(p.logit_dtype));
  SAMUNET_CHECK(p.out.dtype == DType::U8, "out_volume: dtype must be uint8, got ",
                dtype_name(p.out.dtype));
  for (int64_t s = 0; s < p.run.n; ++s) {
    int32_t h2 = p.resized_hw[2 * s], w2 = p.resized_hw[2 * s + 1];
    SAMUNET_CHECK(h2 >= 1 && h2 <= kImageSize && w2 >= 1 && w2 <= kImageSize,
                  "resized_hw[", s, "] = (", h2, ", ", w2, ") must lie in [1, ", kImageSize, "]");
  }
}

void scale_boxes_cpu(const float* in, float* out, int64_t n, int64_t H, int64_t W, int32_t h2,
                     int32_t w2) {
  SAMUNET_CHECK(H > 0 && W > 0 && h2 > 0 && w2 > 0, "box scaling sizes must be positive");
  const double fx = (double)w2 / (double)W, fy = (double)h2 / (double)H;
  for (int64_t i = 0; i < n; ++i) {
    out[4 * i + 0] = (float)(in[4 * i + 0] * fx);
    out[4 * i + 1] = (float)(in[4 * i + 1] * fy);
    out[4 * i + 2] = (float)(in[4 * i + 2] * fx);
    out[4 * i + 3] = (float)(in[4 * i + 3] * fy);
  }
}

namespace {

// How the stored elements of a volume read: S the stored type, V the value compared and
// converted (64-bit integers as float64, as NumPy's astype(float64); 16-bit floats as float),
// is_int: V is an integer type (lookup-table conversion). Swap: stored in the other byte order.
template <typename T, bool Swap>
struct Reader {
  using S = T;
  using V = std::conditional_t<std::is_integral_v<T> && sizeof(T) == 8, double, T>;
  static constexpr bool is_int = std::is_integral_v<T> && sizeof(T) < 8;
  static V get(const S* p) {
    if constexpr (!Swap || sizeof(T) == 1) {
      return (V)*p;
    } else {
      using U = std::conditional_t<sizeof(T) == 2, uint16_t,
                                   std::conditional_t<sizeof(T) == 4, uint32_t,
                                                      unsigned long long>>;
      U bits;
      std::memcpy(&bits, p, sizeof(U));
      bits = byteswap(bits);
      T v;
      std::memcpy(&v, &bits, sizeof(U));
      return (V)v;
    }
  }
};
template <bool Swap>
struct Reader<Half16, Swap> {
  using S = uint16_t;
  using V = float;
  static constexpr bool is_int = false;
  static V get(const S* p) { return half_bits_to_float(Swap ? byteswap(*p) : *p); }
};
template <bool Swap>
struct Reader<BFloat16, Swap> {
  using S = uint16_t;
  using V = float;
  static constexpr bool is_int = false;
  static V get(const S* p) { return bf16_bits_to_float(Swap ? byteswap(*p) : *p); }
};

inline float to_float(float v) { return v; }
inline float to_float(Half16 v) { return half_bits_to_float(v.bits); }
inline float to_float(BFloat16 v) { return bf16_bits_to_float(v.bits); }

struct Taps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> k;
  Taps(int64_t in, int64_t out) : ksize(resample_ksize(in, out)), first(out), count(out), k(out * ksize) {
    for (int64_t i = 0; i < out; ++i)
      resample_taps(in, out, (int)i, ksize, &first[i], &count[i], &k[i * ksize]);
  }
};

// How many slices a worker handles together: enough that the slices of one cache line are read
// together when the slice axis is the contiguous one.
int64_t group_size(const SliceRun& r, int itemsize) {
  int64_t a = r.s_slice < 0 ? -r.s_slice : r.s_slice;
  int64_t b = std::min(r.s_h < 0 ? -r.s_h : r.s_h, r.s_w < 0 ? -r.s_w : r.s_w);
  if (a <= b) return std::max<int64_t>(1, 64 / itemsize);  // a whole cache line per group
  return 1;
}

// Sweep the (G, H, W) elements of a group in memory order: calls
// line(s, h, w, inner, len, stride) for each line along the axis of smallest |stride|
// (inner: 0 slice, 1 row, 2 column), the caller looping over the line itself.
template <typename LineFn>
void sweep_lines(const SliceRun& r, int64_t G, LineFn&& line) {
  const int64_t st[3] = {r.s_slice, r.s_h, r.s_w};
  const int64_t dim[3] = {G, r.H, r.W};
  auto mag = [&](int a) { return dim[a] > 1 ? (st[a] < 0 ? -st[a] : st[a]) : INT64_MAX; };
  int inner = 2;
  if (mag(1) < mag(inner)) inner = 1;
  if (mag(0) < mag(inner)) inner = 0;
  int o0 = inner == 0 ? 1 : 0, o1 = inner == 2 ? 1 : 2;
  if (mag(o0) < mag(o1)) std::swap(o0, o1);  // o0 the outer (larger stride)
  int64_t idx[3] = {0, 0, 0};
  for (idx[o0] = 0; idx[o0] < dim[o0]; ++idx[o0])
    for (idx[o1] = 0; idx[o1] < dim[o1]; ++idx[o1])
      line(idx[0], idx[1], idx[2], inner, dim[inner], st[inner]);
}

template <typename R>
void to_u8_group(const PreprocessParams& p, int64_t g0, int64_t G, uint8_t* u8,
                 std::vector<double>& offset, std::vector<double>& denom,
                 std::vector<uint8_t>& lut, bool& nonfinite) {
  const SliceRun& r = p.run;
  using S = typename R::S;  // stored element
  using V = typename R::V;  // its value, as compared and converted
  const S* base = static_cast<const S*>(p.volume.data) + (r.z0 + g0) * r.s_slice;
  const int64_t HW = r.H * r.W;
  const int64_t dstep[3] = {HW, r.W, 1};
  constexpr bool is_int = R::is_int;
  std::vector<double> mn(G, std::numeric_limits<double>::infinity());
  std::vector<double> mx(G, -std::numeric_limits<double>::infinity());
  auto src_at = [&](int64_t s, int64_t h, int64_t w) {
    return base + s * r.s_slice + h * r.s_h + w * r.s_w;
  };
  // slice axis contiguous: tiles of (row, 64 columns) read for all slices of the group while
  // the tile's cache lines are hot, writing each slice's row segment contiguously
  const int64_t a_s = r.s_slice < 0 ? -r.s_slice : r.s_slice;
  const bool slice_inner = G > 1 && a_s < std::min(r.s_h < 0 ? -r.s_h : r.s_h,
                                                    r.s_w < 0 ? -r.s_w : r.s_w);
  constexpr int64_t kTile = 64;
  {  // min/max: slice-minmax offsets, integer lookup-table ranges, NaN/Inf detection
    bool bad = false;
    if (slice_inner) {
      // the G slices of one (row, column) are adjacent: min/max lanes across slices (SIMD)
      std::vector<V> lo(G), hi(G);
      const S* first = src_at(0, 0, 0);
      for (int64_t s = 0; s < G; ++s) lo[s] = hi[s] = R::get(first + s * r.s_slice);
      bool nan = false;
      for (int64_t h = 0; h < r.H; ++h)
        for (int64_t w = 0; w < r.W; ++w) {
          const S* src = src_at(0, h, w);
          if (r.s_slice == 1) {
            for (int64_t s = 0; s < G; ++s) {
              const V v = R::get(src + s);
              if constexpr (!is_int) nan |= !(v == v);
              lo[s] = v < lo[s] ? v : lo[s];
              hi[s] = v > hi[s] ? v : hi[s];
            }
          } else {
            for (int64_t s = 0; s < G; ++s) {
              const V v = R::get(src + s * r.s_slice);
              if constexpr (!is_int) nan |= !(v == v);
              lo[s] = v < lo[s] ? v : lo[s];
              hi[s] = v > hi[s] ? v : hi[s];
            }
          }
        }
      for (int64_t s = 0; s < G; ++s) {
        if constexpr (!is_int) bad |= nan || !std::isfinite((double)lo[s]) || !std::isfinite((double)hi[s]);
        mn[s] = (double)lo[s];
        mx[s] = (double)hi[s];
      }
    } else {
      sweep_lines(r, G, [&](int64_t s, int64_t h, int64_t w, int inner, int64_t len,
                            int64_t st) {
        const S* src = src_at(s, h, w);
        if (inner == 0) {  // a degenerate layout: one element per slice
          for (int64_t k = 0; k < len; ++k) {
            const double x = (double)R::get(src + k * st);
            if constexpr (!is_int) bad |= !std::isfinite(x);
            mn[s + k] = std::min(mn[s + k], x);
            mx[s + k] = std::max(mx[s + k], x);
          }
          return;
        }
        V lo = R::get(src), hi = lo;
        bool nan = false;
        for (int64_t k = 0; k < len; ++k) {
          const V v = R::get(src + k * st);
          if constexpr (!is_int) nan |= !(v == v);
          lo = v < lo ? v : lo;
          hi = v > hi ? v : hi;
        }
        if constexpr (!is_int) bad |= nan || !std::isfinite((double)lo) || !std::isfinite((double)hi);
        mn[s] = std::min(mn[s], (double)lo);
        mx[s] = std::max(mx[s], (double)hi);
      });
    }
    if (bad) {
      nonfinite = true;
      return;
    }
  }
  for (int64_t s = 0; s < G; ++s) {
    if (p.mode == NormMode::SliceMinMax) {
      double lo = mn[s], hi = mx[s];
      if (p.has_window) {
        lo = std::min(std::max(lo, p.lo), p.hi);
        hi = std::min(std::max(hi, p.lo), p.hi);
      }
      offset[s] = lo;
      denom[s] = hi - lo + 1e-6;
    } else {
      offset[s] = p.lo;
      denom[s] = p.hi - p.lo;
    }
  }
  // Integer slices with fewer distinct values than pixels: one exact float64 conversion per
  // value through a lookup table instead of one per pixel.
  std::vector<const uint8_t*> table(G, nullptr);
  if constexpr (is_int) {
    std::vector<int64_t> at(G, -1);
    size_t total = 0;
    for (int64_t s = 0; s < G; ++s) {
      if ((mx[s] - mn[s] + 1.0) * 2.0 <= (double)HW) {
        at[s] = (int64_t)total;
        total += (size_t)(mx[s] - mn[s]) + 1;
      }
    }
    lut.resize(total);
    for (int64_t s = 0; s < G; ++s) {
      if (at[s] < 0) continue;
      const int64_t vmin = (int64_t)mn[s], count = (int64_t)(mx[s] - mn[s]) + 1;
      uint8_t* L = lut.data() + at[s];
      for (int64_t i = 0; i < count; ++i)
        L[i] = intensity_u8((double)(vmin + i), p.has_window, p.lo, p.hi, offset[s], denom[s]);
      table[s] = L - vmin;
    }
  }
  auto convert_run = [&](int64_t s, const S* src, int64_t st, uint8_t* dst, int64_t ds,
                         int64_t len) {
    if (is_int && table[s]) {
      const uint8_t* L = table[s];
      for (int64_t k = 0; k < len; ++k) dst[k * ds] = L[(int64_t)R::get(src + k * st)];
    } else {
      const double off = offset[s], den = denom[s];
      for (int64_t k = 0; k < len; ++k)
        dst[k * ds] = intensity_u8((double)R::get(src + k * st), p.has_window, p.lo, p.hi, off, den);
    }
  };
  if (slice_inner) {
    for (int64_t h = 0; h < r.H; ++h)
      for (int64_t w0 = 0; w0 < r.W; w0 += kTile) {
        const int64_t len = std::min(r.W, w0 + kTile) - w0;
        for (int64_t s = 0; s < G; ++s)
          convert_run(s, src_at(s, h, w0), r.s_w, u8 + s * HW + h * r.W + w0, 1, len);
      }
  } else {
    sweep_lines(r, G, [&](int64_t s, int64_t h, int64_t w, int inner, int64_t len, int64_t st) {
      if (inner == 0) {  // a degenerate layout: one element per slice
        for (int64_t k = 0; k < len; ++k)
          convert_run(s + k, src_at(s + k, h, w), 1, u8 + (s + k) * HW + h * r.W + w, 1, 1);
      } else {
        convert_run(s, src_at(s, h, w), st, u8 + s * HW + h * r.W + w, dstep[inner], len);
      }
    });
  }
}

// One horizontal Pillow pass over a row with K taps per sample (reads up to K - 1 bytes past a
// sample's last tap: the caller's buffer has that slack, and those taps' coefficients are 0).
template <int K>
void hpass_fixed(const uint8_t* src, uint8_t* dst, int w2, const Taps& tx) {
  for (int x = 0; x < w2; ++x) {
    const int32_t* k = &tx.k[(size_t)x * K];
    const uint8_t* s = src + tx.first[x];
    int32_t acc = 1 << (kPrecisionBits - 1);
    for (int t = 0; t < K; ++t) acc += (int32_t)s[t] * k[t];
    dst[x] = clip8(acc);
  }
}

template <typename OutT>
void resize_normalize_write(const uint8_t* u8, int64_t H, int64_t W, int h2, int w2,
                            const Taps& tx, const Taps& ty, std::vector<uint8_t>& tmp,
                            std::vector<uint8_t>& res, const OutT lut[3][256], OutT* out) {
  // horizontal pass over the rows the vertical pass uses (Pillow's order)
  const int y_first = ty.first[0];
  const int y_last = ty.first[h2 - 1] + ty.count[h2 - 1];
  const int rows = y_last - y_first;
  tmp.resize((size_t)rows * w2);
  for (int y = 0; y < rows; ++y) {
    const uint8_t* src = u8 + (int64_t)(y + y_first) * W;
    uint8_t* dst = tmp.data() + (int64_t)y * w2;
    switch (tx.ksize) {  // fixed tap counts unroll; taps past a sample's count are zero
      case 3: hpass_fixed<3>(src, dst, w2, tx); break;
      case 5: hpass_fixed<5>(src, dst, w2, tx); break;
      case 7: hpass_fixed<7>(src, dst, w2, tx); break;
      case 9: hpass_fixed<9>(src, dst, w2, tx); break;
      case 11: hpass_fixed<11>(src, dst, w2, tx); break;
      default:
        for (int x = 0; x < w2; ++x) {
          const int32_t* k = &tx.k[(size_t)x * tx.ksize];
          const uint8_t* s = src + tx.first[x];
          int32_t acc = 1 << (kPrecisionBits - 1);
          for (int t = 0; t < tx.count[x]; ++t) acc += (int32_t)s[t] * k[t];
          dst[x] = clip8(acc);
        }
    }
  }
  // vertical pass
  res.resize((size_t)h2 * w2);
  std::vector<int32_t> acc(w2);
  for (int y = 0; y < h2; ++y) {
    const int32_t* k = &ty.k[(size_t)y * ty.ksize];
    std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
    for (int t = 0; t < ty.count[y]; ++t) {
      const uint8_t* src = tmp.data() + (int64_t)(ty.first[y] - y_first + t) * w2;
      const int32_t kt = k[t];
      for (int x = 0; x < w2; ++x) acc[x] += (int32_t)src[x] * kt;
    }
    uint8_t* dst = res.data() + (int64_t)y * w2;
    for (int x = 0; x < w2; ++x) dst[x] = clip8(acc[x]);
  }
  // normalise + pad
  for (int c = 0; c < 3; ++c) {
    OutT* plane = out + (int64_t)c * kImageSize * kImageSize;
    for (int y = 0; y < kImageSize; ++y) {
      OutT* row = plane + (int64_t)y * kImageSize;
      int x = 0;
      if (y < h2) {
        const uint8_t* src = res.data() + (int64_t)y * w2;
        for (; x < w2; ++x) row[x] = lut[c][src[x]];
      }
      std::memset(row + x, 0, sizeof(OutT) * (kImageSize - x));
    }
  }
}

template <typename R, typename OutT>
void preprocess_typed(const PreprocessParams& p) {
  const SliceRun& r = p.run;
  if (r.n == 0) return;
  int32_t h2, w2;
  resized_shape(r.H, r.W, &h2, &w2);
  const Taps tx(r.W, w2), ty(r.H, h2);
  OutT lut[3][256];
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v) {
      float f = ((float)v - pixel_mean(c)) / pixel_std(c);
      if constexpr (std::is_same_v<OutT, float>) lut[c][v] = f;
      else if (p.out_dtype == DType::BF16) lut[c][v] = float_to_bf16_bits(f);
      else lut[c][v] = float_to_half_bits(f);
    }
  const int64_t G = group_size(r, (int)sizeof(typename R::S));
  const int64_t groups = (r.n + G - 1) / G;
  std::atomic<bool> nonfinite{false};
  OutT* out = static_cast<OutT*>(p.out);
#pragma omp parallel if (parallel_ok())
  {
    std::vector<uint8_t> u8((size_t)G * r.H * r.W + kMaxTaps), tmp, res, vlut;
    std::vector<double> offset(G), denom(G);
#pragma omp for schedule(dynamic, 1)
    for (int64_t g = 0; g < groups; ++g) {
      if (nonfinite.load()) continue;
      const int64_t g0 = g * G, gn = std::min(G, r.n - g0);
      bool bad = false;
      to_u8_group<R>(p, g0, gn, u8.data(), offset, denom, vlut, bad);
      if (bad) { nonfinite = true; continue; }
      for (int64_t s = 0; s < gn; ++s)
        resize_normalize_write<OutT>(u8.data() + s * r.H * r.W, r.H, r.W, h2, w2, tx, ty, tmp,
                                     res, lut, out + (g0 + s) * 3 * kImageSize * kImageSize);
    }
  }
  SAMUNET_CHECK(!nonfinite.load(), "volume contains NaN or Inf intensities in slices [", r.z0,
                ", ", r.z0 + r.n, ")");
}

template <typename T, bool Swap>
void preprocess_in(const PreprocessParams& p) {
  if (p.out_dtype == DType::F32) preprocess_typed<Reader<T, Swap>, float>(p);
  else preprocess_typed<Reader<T, Swap>, uint16_t>(p);  // float16 or bfloat16 bits
}

template <bool Swap>
void preprocess_dispatch(const PreprocessParams& p) {
  switch (p.volume.dtype) {
    case DType::U8: case DType::Bool: preprocess_in<uint8_t, Swap>(p); break;
    case DType::I8: preprocess_in<int8_t, Swap>(p); break;
    case DType::I16: preprocess_in<int16_t, Swap>(p); break;
    case DType::U16: preprocess_in<uint16_t, Swap>(p); break;
    case DType::I32: preprocess_in<int32_t, Swap>(p); break;
    case DType::U32: preprocess_in<uint32_t, Swap>(p); break;
    case DType::I64: preprocess_in<int64_t, Swap>(p); break;
    case DType::U64: preprocess_in<uint64_t, Swap>(p); break;
    case DType::F16: preprocess_in<Half16, Swap>(p); break;
    case DType::BF16: preprocess_in<BFloat16, Swap>(p); break;
    case DType::F32: preprocess_in<float, Swap>(p); break;
    case DType::F64: preprocess_in<double, Swap>(p); break;
  }
}

struct Composed {
  std::vector<int> idx;  // (size, 4)
  std::vector<float> wt;
  Composed(int cropped, int64_t out) : idx(out * 4), wt(out * 4) {
    for (int64_t i = 0; i < out; ++i) composed_taps((int)i, cropped, (int)out, &idx[4 * i], &wt[4 * i]);
  }
};

// The postprocess inner loops: 4 rows blended with the row weights and thresholded at 0. Built
// for AVX2+FMA too (chosen at load time) where the compiler supports function multiversioning:
// the default x86-64 target has 4-wide SSE only, and these loops are compute-bound (ifunc
// dispatch needs glibc, hence Linux only).
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__INTEL_COMPILER)
#define SAMUNET_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SAMUNET_MULTIVERSION
#endif

SAMUNET_MULTIVERSION
void blend4_threshold(const float* t0, const float* t1, const float* t2, const float* t3,
                      float a0, float a1, float a2, float a3, uint8_t* dst, int64_t len) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const float v = a0 * t0[i] + a1 * t1[i] + a2 * t2[i] + a3 * t3[i];
    dst[i] = v > 0.0f ? 1 : 0;
  }
}

// Scratch floats of the calling thread, kept between calls: a fresh 8 MB vector per call would
// cost a memset and thousands of page faults, as much as the op itself. Slot 0 and 1 are distinct.
float* scratch(size_t count, int slot) {
  thread_local std::vector<float> buffers[2];
  std::vector<float>& b = buffers[slot];
  if (b.size() < count) {
    b.clear();
    b.shrink_to_fit();
    b.resize(count);
  }
  return b.data();
}

SAMUNET_MULTIVERSION
void blend4(const float* t0, const float* t1, const float* t2, const float* t3, float a0, float a1,
            float a2, float a3, float* dst, int64_t len) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) dst[i] = a0 * t0[i] + a1 * t1[i] + a2 * t2[i] + a3 * t3[i];
}

// One output row of a slice-inner run: for each column w, n contiguous slices' bytes at
// row + w * s_w, from rows T0..T3 laid out [w][s].
SAMUNET_MULTIVERSION
void blend4_threshold_columns(const float* T0, const float* T1, const float* T2, const float* T3,
                              float a0, float a1, float a2, float a3, int64_t n, int64_t W,
                              uint8_t* row, int64_t s_w) {
  for (int64_t w = 0; w < W; ++w) {
    const float* t0 = T0 + w * n;
    const float* t1 = T1 + w * n;
    const float* t2 = T2 + w * n;
    const float* t3 = T3 + w * n;
    uint8_t* o = row + w * s_w;
#pragma omp simd
    for (int64_t s = 0; s < n; ++s) {
      const float v = a0 * t0[s] + a1 * t1[s] + a2 * t2[s] + a3 * t3[s];
      o[s] = v > 0.0f ? 1 : 0;
    }
  }
}

// dst[b][w] = src[w][b] for b < kLogitSize, w < W: 4x4 SSE blocks, 8 destination rows at a time
// (rows W floats apart share few cache sets when W is a power of two).
void transpose_to_rows(const float* src, float* dst, int64_t W) {
  for (int b0 = 0; b0 < kLogitSize; b0 += 8) {
    int64_t w = 0;
#if defined(__SSE2__)
    for (; w + 4 <= W; w += 4) {
      for (int b = b0; b < b0 + 8; b += 4) {
        __m128 r0 = _mm_loadu_ps(src + (w + 0) * kLogitSize + b);
        __m128 r1 = _mm_loadu_ps(src + (w + 1) * kLogitSize + b);
        __m128 r2 = _mm_loadu_ps(src + (w + 2) * kLogitSize + b);
        __m128 r3 = _mm_loadu_ps(src + (w + 3) * kLogitSize + b);
        _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
        _mm_storeu_ps(dst + (b + 0) * W + w, r0);
        _mm_storeu_ps(dst + (b + 1) * W + w, r1);
        _mm_storeu_ps(dst + (b + 2) * W + w, r2);
        _mm_storeu_ps(dst + (b + 3) * W + w, r3);
      }
    }
#endif
    for (; w < W; ++w)
      for (int b = b0; b < b0 + 8; ++b) dst[b * W + w] = src[w * kLogitSize + b];
  }
}

// Slice-inner outputs (|s_slice| == 1: the slice axis is the contiguous one, e.g. the last axis
// of a C-ordered volume) whose slices share one (h', w'): the whole run is computed voxel-column
// by voxel-column. T holds logits composed with the column operator in [b][w][s] order, so each
// output (h, w) is 4 contiguous runs of n floats blended into n contiguous bytes: no transpose.
template <typename LT>
void postprocess_slices_inner(const PostprocessParams& p, const SliceRun& r, bool transpose) {
  int32_t h2 = p.resized_hw[0], w2 = p.resized_hw[1];
  if (transpose) std::swap(h2, w2);
  const Composed cx(w2, r.W), cy(h2, r.H);
  const LT* logits = static_cast<const LT*>(p.logits);
  const int64_t n = r.n, W = r.W;
  const int64_t map = (int64_t)kLogitSize * kLogitSize;
  // Ls[b][a][s]: the logits with the slice index innermost, so that both passes are blends of
  // contiguous runs of n floats with scalar weights.
  float* Ls = scratch((size_t)map * n, 0);
  float* T = scratch((size_t)kLogitSize * W * n, 1);
#pragma omp parallel if (parallel_ok())
  {
#pragma omp for schedule(static)
    for (int64_t b = 0; b < kLogitSize; ++b) {
      for (int a = 0; a < kLogitSize; ++a) {
        const int64_t i = transpose ? (int64_t)a * kLogitSize + b : b * kLogitSize + a;
        float* d = &Ls[((size_t)b * kLogitSize + a) * n];
        for (int64_t s = 0; s < n; ++s) {
          d[s] = to_float(logits[s * map + i]);
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < kLogitSize; ++b) {
      const float* Lb = &Ls[(size_t)b * kLogitSize * n];
      float* Tb = &T[(size_t)b * W * n];
      for (int64_t w = 0; w < W; ++w) {
        const int* i4 = &cx.idx[4 * w];
        const float* w4 = &cx.wt[4 * w];
        blend4(Lb + i4[0] * n, Lb + i4[1] * n, Lb + i4[2] * n, Lb + i4[3] * n, w4[0], w4[1],
               w4[2], w4[3], Tb + w * n, n);
      }
    }
  }
  uint8_t* base = static_cast<uint8_t*>(p.out.data) + r.z0 * r.s_slice;
  const int64_t step = r.s_slice;  // +1 or -1
#pragma omp parallel if (parallel_ok())
  {
    std::vector<uint8_t> buf(step < 0 ? n : 0);
#pragma omp for schedule(static)
    for (int64_t h = 0; h < r.H; ++h) {
      const int* iy = &cy.idx[4 * h];
      const float* wy = &cy.wt[4 * h];
      const float a0 = wy[0], a1 = wy[1], a2 = wy[2], a3 = wy[3];
      const float* T0 = &T[(size_t)iy[0] * W * n];
      const float* T1 = &T[(size_t)iy[1] * W * n];
      const float* T2 = &T[(size_t)iy[2] * W * n];
      const float* T3 = &T[(size_t)iy[3] * W * n];
      uint8_t* row = base + h * r.s_h;
      if (step > 0) {
        blend4_threshold_columns(T0, T1, T2, T3, a0, a1, a2, a3, n, W, row, r.s_w);
        continue;
      }
      for (int64_t w = 0; w < W; ++w) {
        blend4_threshold(T0 + w * n, T1 + w * n, T2 + w * n, T3 + w * n, a0, a1, a2, a3,
                         buf.data(), n);
        uint8_t* d = row + w * r.s_w;
        for (int64_t s = 0; s < n; ++s) d[-s] = buf[s];
      }
    }
  }
}

template <typename LT>
void postprocess_typed(const PostprocessParams& p) {
  SliceRun r = p.run;
  if (r.n == 0) return;
  // Rows are computed one at a time and written along the column axis: when the rows (H) are
  // the contiguous axis instead, work on the transposed problem (maps and sizes transposed).
  const bool transpose = r.H > 1 && r.W > 1 &&
                         (r.s_h < 0 ? -r.s_h : r.s_h) < (r.s_w < 0 ? -r.s_w : r.s_w);
  if (transpose) {
    std::swap(r.H, r.W);
    std::swap(r.s_h, r.s_w);
  }
  if (r.n > 1 && (r.s_slice == 1 || r.s_slice == -1) && r.H > 1 && r.W > 1) {
    bool same = true;
    for (int64_t s = 1; s < r.n && same; ++s)
      same = p.resized_hw[2 * s] == p.resized_hw[0] && p.resized_hw[2 * s + 1] == p.resized_hw[1];
    if (same) return postprocess_slices_inner<LT>(p, r, transpose);
  }
  const LT* logits = static_cast<const LT*>(p.logits);
  uint8_t* base = static_cast<uint8_t*>(p.out.data) + r.z0 * r.s_slice;
  const int64_t G = group_size(r, 1);
  const int64_t groups = (r.n + G - 1) / G;
  const int64_t map = (int64_t)kLogitSize * kLogitSize;
  const bool slice_inner = (r.s_slice < 0 ? -r.s_slice : r.s_slice) <
                           (r.s_w < 0 ? -r.s_w : r.s_w);
  const int64_t bands = std::max<int64_t>(1, std::min<int64_t>(r.H / 8, 16 / std::max<int64_t>(1, groups)));
  // T[s] = logits[s] composed with the column operator: (64, W) per slice, computed once and
  // shared. Each output row is then 4 contiguous rows of T blended with the row weights:
  // vectorisable, no per-voxel gathers.
  float* T = scratch((size_t)r.n * kLogitSize * r.W, 1);
#pragma omp parallel if (parallel_ok())
  {
    // Per slice: Lt[a][b] (logit column a as a contiguous run over rows b), P[w][b] = the column
    // operator applied as blends of those runs, then T[s][b][w] = P[w][b] (a transpose).
    std::vector<float> Lt((size_t)map), P((size_t)r.W * kLogitSize);
    std::vector<Composed> cxs;  // the column operator for the last width seen (usually all)
    int32_t cached_w2 = -1;
#pragma omp for schedule(dynamic, 1)
    for (int64_t s = 0; s < r.n; ++s) {
      int32_t h2 = p.resized_hw[2 * s], w2 = p.resized_hw[2 * s + 1];
      if (transpose) std::swap(h2, w2);
      if (w2 != cached_w2) {
        cxs.clear();
        cxs.emplace_back(w2, r.W);
        cached_w2 = w2;
      }
      const Composed& cx = cxs[0];
      const LT* src = logits + s * map;
      for (int a = 0; a < kLogitSize; ++a)
        for (int b = 0; b < kLogitSize; ++b) {
          const int64_t i = transpose ? (int64_t)a * kLogitSize + b : b * kLogitSize + a;
          Lt[a * kLogitSize + b] = to_float(src[i]);
        }
      for (int64_t w = 0; w < r.W; ++w) {
        const int* i4 = &cx.idx[4 * w];
        const float* w4 = &cx.wt[4 * w];
        blend4(&Lt[i4[0] * kLogitSize], &Lt[i4[1] * kLogitSize], &Lt[i4[2] * kLogitSize],
               &Lt[i4[3] * kLogitSize], w4[0], w4[1], w4[2], w4[3], &P[w * kLogitSize],
               kLogitSize);
      }
      float* Ts = &T[(size_t)s * kLogitSize * r.W];
      transpose_to_rows(P.data(), Ts, r.W);
    }
  }
#pragma omp parallel if (parallel_ok())
  {
    std::vector<uint8_t> rowbuf(G * r.W);
    std::vector<Composed> cy;
    int64_t loaded = -1;  // the group whose maps and tables this thread holds
    // tasks: (group, band of rows), so few groups still spread over the threads; different
    // rows never share an output cache line when the slice axis is the contiguous one
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < groups * bands; ++task) {
      const int64_t g = task / bands, band = task % bands;
      const int64_t g0 = g * G, gn = std::min(G, r.n - g0);
      const int64_t h_begin = r.H * band / bands, h_end = r.H * (band + 1) / bands;
      if (loaded != g) {
        loaded = g;
        cy.clear();
        for (int64_t s = 0; s < gn; ++s) {
          int32_t h2 = p.resized_hw[2 * (g0 + s)], w2 = p.resized_hw[2 * (g0 + s) + 1];
          if (transpose) std::swap(h2, w2);
          cy.emplace_back(h2, r.H);
        }
      }
      for (int64_t h = h_begin; h < h_end; ++h) {
        for (int64_t s = 0; s < gn; ++s) {
          const int* iy = &cy[s].idx[4 * h];
          const float* wy = &cy[s].wt[4 * h];
          const float* Ts = &T[(g0 + s) * kLogitSize * r.W];
          const float* T0 = Ts + iy[0] * r.W;
          const float* T1 = Ts + iy[1] * r.W;
          const float* T2 = Ts + iy[2] * r.W;
          const float* T3 = Ts + iy[3] * r.W;
          const float a0 = wy[0], a1 = wy[1], a2 = wy[2], a3 = wy[3];
          blend4_threshold(T0, T1, T2, T3, a0, a1, a2, a3, &rowbuf[s * r.W], r.W);
        }
        uint8_t* row = base + h * r.s_h + g0 * r.s_slice;
        if (slice_inner) {
          // A byte transpose (gn, W) -> (W, gn) in 64-column tiles: the tile's output lines
          // stay in L1 while every slice fills its byte of each.
          constexpr int64_t kTile = 64;
          for (int64_t w0 = 0; w0 < r.W; w0 += kTile) {
            const int64_t w1 = std::min(r.W, w0 + kTile);
            for (int64_t s = 0; s < gn; ++s) {
              const uint8_t* src = &rowbuf[s * r.W];
              uint8_t* o = row + s * r.s_slice;
              for (int64_t w = w0; w < w1; ++w) o[w * r.s_w] = src[w];
            }
          }
        } else {
          for (int64_t s = 0; s < gn; ++s) {
            uint8_t* o = row + s * r.s_slice;
            const uint8_t* src = &rowbuf[s * r.W];
            if (r.s_w == 1) {
              std::memcpy(o, src, (size_t)r.W);
            } else {
              for (int64_t w = 0; w < r.W; ++w) o[w * r.s_w] = src[w];
            }
          }
        }
      }
    }
  }
}

}  // namespace

void preprocess_cpu(const PreprocessParams& p) {
  check_preprocess(p);
  if (p.byteswap && dtype_size(p.volume.dtype) > 1) preprocess_dispatch<true>(p);
  else preprocess_dispatch<false>(p);
}

void postprocess_cpu(const PostprocessParams& p) {
  check_postprocess(p);
  if (p.logit_dtype == DType::F32) postprocess_typed<float>(p);
  else if (p.logit_dtype == DType::BF16) postprocess_typed<BFloat16>(p);
  else postprocess_typed<Half16>(p);
}

#ifndef SAMUNET_WITH_CUDA
bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }
int cuda_pointer_device(const void*) { return -1; }
int cuda_current_device() { return -1; }
void cuda_set_device(int) {}
std::string cuda_unavailable_reason() {
  return "sam_unet._C was built without CUDA: reinstall with nvcc on PATH "
         "(SAMUNET_CUDA=ON pip install .)";
}
size_t preprocess_cuda_workspace_bytes(const PreprocessParams&) { return 0; }
void cuda_stream_wait(cudaStream_t, uintptr_t) {}
void preprocess_cuda(const PreprocessParams&, cudaStream_t) {
  SAMUNET_FAIL("sam_unet._C was built without CUDA: reinstall with nvcc on PATH");
}
void postprocess_cuda(const PostprocessParams&, cudaStream_t) {
  SAMUNET_FAIL("sam_unet._C was built without CUDA: reinstall with nvcc on PATH");
}
#endif

}  // namespace sam_unet
