// Arithmetic shared by the CPU and CUDA ops (host and device): Pillow's 8-bit bilinear
// coefficients, intensity conversion, and PyTorch's bilinear source index (align_corners=False).
#pragma once

#include <cmath>
#include <cstdint>

#include "sam_unet/ops.h"

#ifndef SAMUNET_HD
#if defined(__CUDACC__)
#define SAMUNET_HD __host__ __device__ __forceinline__
#else
#define SAMUNET_HD inline
#endif
#endif

namespace sam_unet {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's fixed point for 8-bit images

// Pillow: maximum taps per output sample of the bilinear filter for in -> out.
SAMUNET_HD int resample_ksize(int64_t in_size, int64_t out_size) {
  double scale = (double)in_size / (double)out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  return (int)ceil(filterscale) * 2 + 1;
}

SAMUNET_HD double triangle_filter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

// One output sample's taps, operation for operation as Pillow's precompute_coeffs followed by
// normalize_coeffs_8bpc (double arithmetic; the only multiply-add is by a power of two, so FMA
// contraction on the device cannot change a result). k receives ksize integers (zeros past cnt).
SAMUNET_HD void resample_taps(int64_t in_size, int64_t out_size, int xx, int ksize, int* first,
                              int* count, int32_t* k) {
  double scale = (double)in_size / (double)out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = 1.0 * filterscale;
  double center = (xx + 0.5) * scale;
  double ss = 1.0 / filterscale;
  int xmin = (int)(center - support + 0.5);
  if (xmin < 0) xmin = 0;
  int xmax = (int)(center + support + 0.5);
  if (xmax > in_size) xmax = (int)in_size;
  xmax -= xmin;
  double w[64];  // ksize <= 64 is checked by the callers (input sides up to 8064)
  double ww = 0.0;
  for (int x = 0; x < xmax; ++x) {
    w[x] = triangle_filter((x + xmin - center + 0.5) * ss);
    ww += w[x];
  }
  for (int x = 0; x < ksize; ++x) {
    if (x < xmax) {
      double v = w[x];
      if (ww != 0.0) v /= ww;
      k[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << kPrecisionBits))
                   : (int32_t)(0.5 + v * (1 << kPrecisionBits));
    } else {
      k[x] = 0;
    }
  }
  *first = xmin;
  *count = xmax;
}

constexpr int kMaxTaps = 64;

SAMUNET_HD uint8_t clip8(int32_t v) {
  v >>= kPrecisionBits;  // arithmetic shift, as Pillow's lookup index
  return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Intensity to 8 bits: y = (clip(x) - offset) / denom * 255, truncated (float64), where
// (offset, denom) = (min, max - min + 1e-6) in slice-minmax mode and (lo, hi - lo) in window mode.
SAMUNET_HD uint8_t intensity_u8(double x, bool clip, double lo, double hi, double offset,
                                double denom) {
  if (clip) x = x < lo ? lo : (x > hi ? hi : x);
  double y = (x - offset) / denom * 255;
  y = y < 0.0 ? 0.0 : (y > 255.0 ? 255.0 : y);
  return (uint8_t)(int)y;
}

// PyTorch's bilinear (align_corners=False) source index for one output coordinate.
SAMUNET_HD void linear_source(int dst, int in_size, int out_size, int* i0, int* i1,
                              float* l1) {
  float scale = (float)in_size / (float)out_size;
  float src = scale * ((float)dst + 0.5f) - 0.5f;
  if (src < 0.0f) src = 0.0f;
  int a = (int)src;
  if (a > in_size - 1) a = in_size - 1;
  *i0 = a;
  *i1 = a + ((a < in_size - 1) ? 1 : 0);
  *l1 = src - (float)a;
}

// Composed 1D weights of (64 -> 256 bilinear, crop to `cropped`, cropped -> `out_size`
// bilinear) for output index `dst`: up to 4 (index into the 64 axis, weight) pairs.
SAMUNET_HD void composed_taps(int dst, int cropped, int out_size, int* idx, float* wt) {
  int c0, c1;
  float lc;
  linear_source(dst, cropped, out_size, &c0, &c1, &lc);
  int a0, a1, b0, b1;
  float la, lb;
  linear_source(c0, kLogitSize, kImageSize, &a0, &a1, &la);
  linear_source(c1, kLogitSize, kImageSize, &b0, &b1, &lb);
  float w0 = 1.0f - lc, w1 = lc;
  idx[0] = a0; wt[0] = w0 * (1.0f - la);
  idx[1] = a1; wt[1] = w0 * la;
  idx[2] = b0; wt[2] = w1 * (1.0f - lb);
  idx[3] = b1; wt[3] = w1 * lb;
}

// Pixel normalisation constants (float32 arithmetic, as the reference).
SAMUNET_HD float pixel_mean(int c) { return c == 0 ? 123.675f : (c == 1 ? 116.28f : 103.53f); }
SAMUNET_HD float pixel_std(int c) { return c == 0 ? 58.395f : (c == 1 ? 57.12f : 57.375f); }

}  // namespace sam_unet
