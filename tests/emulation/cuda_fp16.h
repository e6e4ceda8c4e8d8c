// Host emulation of cuda_fp16.h: __half as its bits, conversions through GCC's _Float16 (round
// to nearest even), independent of the project's own half.h.
#pragma once

#include <cstring>

#include "cuda_runtime.h"

struct __half {
  unsigned short x;
};

inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline __half __float2half_rn(float f) {
  const _Float16 h = (_Float16)f;
  __half out;
  std::memcpy(&out.x, &h, 2);
  return out;
}
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) {
  _Float16 v;
  std::memcpy(&v, &h.x, 2);
  return (float)v;
}
