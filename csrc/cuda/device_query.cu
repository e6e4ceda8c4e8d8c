// What the CUDA runtime this module was built with can see here, and why it cannot run, in words.
#include <cuda_runtime.h>

#include <string>

#include "sam_unet/build_info.h"
#include "sam_unet/ops.h"

namespace sam_unet {
namespace {

std::string version_str(int v) {  // 12020 -> "12.2"
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

}  // namespace

std::string cuda_unavailable_reason() {
  int driver = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) cudaGetLastError();  // clear the error (not sticky, but be tidy)
  if (err == cudaSuccess && count > 0) return "";
  const std::string runtime = version_str(CUDART_VERSION);
  if (driver == 0)
    return "no NVIDIA driver was found (libcuda.so cannot be loaded); install the NVIDIA driver "
           "to use the CUDA ops (this module's CUDA runtime is " + runtime + ")";
  if (err == cudaErrorInsufficientDriver)
    return "CUDA driver " + version_str(driver) + " is older than the runtime " + runtime +
           " this module was built with; update the driver or build with an older toolkit";
  if (err == cudaErrorSystemDriverMismatch)
    return "the NVIDIA kernel module and the user-mode driver (libcuda.so, CUDA " +
           version_str(driver) + ") are different versions; reboot or reinstall the driver";
  if (err == cudaErrorNoDevice || (err == cudaSuccess && count == 0))
    return "no CUDA device is visible (driver CUDA " + version_str(driver) +
           "); check nvidia-smi and CUDA_VISIBLE_DEVICES";
  return std::string("CUDA cannot be initialised: ") + cudaGetErrorName(err) + " (" +
         cudaGetErrorString(err) + "), driver CUDA " + version_str(driver) + ", runtime " +
         runtime;
}

void cuda_query(BuildInfo& info) {
  info.cuda_runtime_version = CUDART_VERSION;
  int driver = 0;
  if (cudaDriverGetVersion(&driver) == cudaSuccess) info.cuda_driver_version = driver;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no device is not a failure here: cuda_status says why
    count = 0;
  }
  info.device_count = count;
  info.cuda_status = cuda_unavailable_reason();
  if (info.cuda_status.empty()) info.cuda_status = "ok";
}

}  // namespace sam_unet
