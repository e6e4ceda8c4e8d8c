// The pybind11 module sam_unet._C: a thin table over the plain C++ API in csrc/include.
#include <pybind11/pybind11.h>

#include "sam_unet/build_info.h"

namespace py = pybind11;

namespace sam_unet::bindings {
void register_ops(py::module_& m);     // csrc/bindings/ops.cpp
void register_slices(py::module_& m);  // csrc/bindings/slices.cpp
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "sam_unet native ops (C++ CPU, CUDA when compiled in)";
  m.def(
      "build_info",
      [] {
        const sam_unet::BuildInfo info = sam_unet::build_info();
        py::dict d;
        d["version"] = SAMUNET_VERSION;
        d["with_cuda"] = info.with_cuda;
        d["cuda_version"] = info.cuda_runtime_version;
        d["cuda_driver_version"] = info.cuda_driver_version;
        d["device_count"] = info.device_count;
        d["with_openmp"] = info.with_openmp;
        d["cuda_status"] = info.cuda_status;
        return d;
      },
      "Dict: version, with_cuda, cuda_version (CUDART_VERSION, 0 without CUDA), "
      "cuda_driver_version, device_count (0 when no driver or device), with_openmp, "
      "cuda_status ('ok', or why the CUDA ops cannot run here, in words).");
  sam_unet::bindings::register_ops(m);
  sam_unet::bindings::register_slices(m);
}
