// Stored element types the ops read beyond the C++ arithmetic types (16-bit float tags) and byte
// swaps of stored bits (big-endian volumes), shared by the CPU ops and the CUDA kernels.
#pragma once

#include <cstdint>

#ifndef SAMUNET_HD
#if defined(__CUDACC__)
#define SAMUNET_HD __host__ __device__ __forceinline__
#else
#define SAMUNET_HD inline
#endif
#endif

namespace sam_unet {

// IEEE binary16 and bfloat16 elements, as their bit patterns.
struct Half16 {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

SAMUNET_HD uint8_t byteswap(uint8_t v) { return v; }
SAMUNET_HD uint16_t byteswap(uint16_t v) { return (uint16_t)((v >> 8) | (v << 8)); }
SAMUNET_HD uint32_t byteswap(uint32_t v) {
  return (v >> 24) | ((v >> 8) & 0xff00u) | ((v << 8) & 0xff0000u) | (v << 24);
}
SAMUNET_HD unsigned long long byteswap(unsigned long long v) {
  return ((unsigned long long)byteswap((uint32_t)v) << 32) | byteswap((uint32_t)(v >> 32));
}

}  // namespace sam_unet
