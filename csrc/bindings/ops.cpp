// Placeholder table of ops; the native-ops work fills it.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace sam_unet::bindings {
void register_ops(py::module_& m) { (void)m; }
}  // namespace sam_unet::bindings
