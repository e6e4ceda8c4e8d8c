// What the native module was built with and what it can see at run time.
#pragma once

#include <string>

namespace sam_unet {

struct BuildInfo {
  bool with_cuda = false;        // CUDA ops compiled in
  int cuda_runtime_version = 0;  // CUDART_VERSION the module was built against (e.g. 13000)
  int cuda_driver_version = 0;   // 0 when no driver is loaded
  int device_count = 0;          // 0 when there is no driver or no device, never an error
  bool with_openmp = false;
  std::string cuda_architectures;
  // "ok" when the CUDA ops can run, else why not in words (no driver, driver older than the
  // runtime, no device, built without CUDA)
  std::string cuda_status = "sam_unet._C was built without CUDA";
};

BuildInfo build_info();

#ifdef SAMUNET_WITH_CUDA
// Implemented in csrc/cuda/device_query.cu.
void cuda_query(BuildInfo& info);
#endif

}  // namespace sam_unet
