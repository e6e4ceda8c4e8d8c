// Error checking for the plain C++ API: precondition failures throw std::invalid_argument
// (ValueError in Python), runtime failures std::runtime_error (RuntimeError).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace sam_unet::detail {

template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace sam_unet::detail

// SAMUNET_CHECK(cond, "message parts", ...): throws std::invalid_argument when cond is false.
#define SAMUNET_CHECK(cond, ...)                                                   \
  do {                                                                             \
    if (!(cond)) throw std::invalid_argument(::sam_unet::detail::concat(__VA_ARGS__)); \
  } while (0)

// SAMUNET_FAIL("message parts", ...): throws std::runtime_error.
#define SAMUNET_FAIL(...) throw std::runtime_error(::sam_unet::detail::concat(__VA_ARGS__))

#ifdef __CUDACC__
#define SAMUNET_CUDA_CHECK(call)                                                           \
  do {                                                                                     \
    cudaError_t samunet_err_ = (call);                                                     \
    if (samunet_err_ != cudaSuccess)                                                       \
      SAMUNET_FAIL("CUDA error in ", #call, " (", __FILE__, ":", __LINE__, "): ",          \
                   cudaGetErrorString(samunet_err_));                                      \
  } while (0)
#endif
