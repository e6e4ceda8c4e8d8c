#include "sam_unet/build_info.h"

namespace sam_unet {

BuildInfo build_info() {
  BuildInfo info;
#ifdef _OPENMP
  info.with_openmp = true;
#endif
#ifdef SAMUNET_WITH_CUDA
  info.with_cuda = true;
  cuda_query(info);
#endif
  return info;
}

}  // namespace sam_unet
