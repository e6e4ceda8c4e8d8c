#include <cuda_runtime.h>

#include "sam_unet/build_info.h"

namespace sam_unet {

void cuda_query(BuildInfo& info) {
  info.cuda_runtime_version = CUDART_VERSION;
  int driver = 0;
  if (cudaDriverGetVersion(&driver) == cudaSuccess) info.cuda_driver_version = driver;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error; no device is not a failure here
    count = 0;
  }
  info.device_count = count;
}

}  // namespace sam_unet
