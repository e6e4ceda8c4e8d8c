// Bindings of gather_slices / scatter_slices (host arrays through the buffer protocol; only the
// item size matters, the caller checks that both sides have one dtype) and of the thread state.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "sam_unet/check.h"
#include "sam_unet/ops.h"
#include "sam_unet/parallel.h"
#include "sam_unet/slices.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace sam_unet::bindings {
namespace {

struct HostArray {
  py::buffer_info info;
  std::vector<int64_t> shape, strides;  // strides in elements
};

HostArray host_array(const py::object& obj, const char* name, bool writable) {
  SAMUNET_CHECK(!py::hasattr(obj, "__cuda_array_interface__"), name,
                " is a CUDA array; gather_slices/scatter_slices work on host arrays (NumPy, "
                "torch CPU tensors, pinned or not)");
  SAMUNET_CHECK(PyObject_CheckBuffer(obj.ptr()), name,
                " must be a NumPy array or a torch CPU tensor, got ",
                std::string(py::str(py::type::of(obj).attr("__name__"))));
  HostArray a;
  try {
    a.info = py::reinterpret_borrow<py::buffer>(obj).request(writable);
  } catch (py::error_already_set& e) {
    SAMUNET_CHECK(false, name, writable ? " must be a writable array: " : ": ", e.what());
  }
  const int64_t es = a.info.itemsize;
  SAMUNET_CHECK(es == 1 || es == 2 || es == 4 || es == 8, name,
                ": item size must be 1, 2, 4 or 8 bytes, got ", es);
  for (auto d : a.info.shape) a.shape.push_back(d);
  for (auto s : a.info.strides) {
    SAMUNET_CHECK(s % es == 0, name, ": strides must be multiples of the item size");
    a.strides.push_back(s / es);
  }
  return a;
}

StridedVolume volume_of(const HostArray& a, const char* name) {
  SAMUNET_CHECK(a.shape.size() == 3, name, " must be 3D (X, Y, Z), got ", a.shape.size(), "D");
  StridedVolume v;
  v.data = a.info.ptr;
  v.itemsize = (int)a.info.itemsize;
  for (int k = 0; k < 3; ++k) {
    v.shape[k] = a.shape[k];
    v.strides[k] = a.strides[k];
  }
  return v;
}

// An array written to must not have two elements at one address (a broadcast torch view is
// writable): sorted by |stride|, each axis steps past the whole extent of the faster ones.
void check_distinct(const HostArray& a, const char* name) {
  std::vector<std::pair<int64_t, int64_t>> axes;  // (|stride|, extent)
  for (size_t k = 0; k < a.shape.size(); ++k)
    if (a.shape[k] > 1) axes.emplace_back(a.strides[k] < 0 ? -a.strides[k] : a.strides[k],
                                          a.shape[k]);
  std::sort(axes.begin(), axes.end());
  int64_t span = 1;
  for (const auto& [stride, extent] : axes) {
    SAMUNET_CHECK(stride >= span, name, " has overlapping strides (a broadcast view?); pass an "
                  "array whose elements each have their own memory");
    span = stride * extent;
  }
}

// The slab of a run: (n, H, W), the volume's item size, any strides.
void check_slab(const HostArray& slab, const StridedVolume& vol, int axis, int64_t z0, int64_t n,
                const char* name, bool written) {
  Volume3D v;
  for (int k = 0; k < 3; ++k) {
    v.shape[k] = vol.shape[k];
    v.strides[k] = vol.strides[k];
  }
  const SliceRun r = make_slice_run(v, axis, z0, n);
  SAMUNET_CHECK(slab.info.itemsize == vol.itemsize, name, " has ", slab.info.itemsize,
                "-byte items but the volume ", vol.itemsize, "-byte items; both need one dtype");
  const std::vector<int64_t> want = {n, r.H, r.W};
  SAMUNET_CHECK(slab.shape == want, name, " must be an (n, H, W) = (", n, ", ", r.H, ", ", r.W,
                ") array");
  if (written) check_distinct(slab, name);
}

const int64_t* strides_of(const HostArray& a) { return a.strides.data(); }

void gather(const py::object& volume, const py::object& out, int64_t z0, int64_t n, int axis) {
  const HostArray vol = host_array(volume, "volume", false);
  const HostArray dst = host_array(out, "out", true);
  const StridedVolume v = volume_of(vol, "volume");
  check_slab(dst, v, axis, z0, n, "out", true);
  py::gil_scoped_release release;
  gather_slices_cpu(v, axis, z0, n, dst.info.ptr, strides_of(dst));
}

void scatter(const py::object& slab, const py::object& out_volume, int64_t z0, int64_t n,
             int axis) {
  const HostArray src = host_array(slab, "slab", false);
  const HostArray vol = host_array(out_volume, "out_volume", true);
  const StridedVolume v = volume_of(vol, "out_volume");
  check_distinct(vol, "out_volume");
  check_slab(src, v, axis, z0, n, "slab", false);
  py::gil_scoped_release release;
  scatter_slices_cpu(src.info.ptr, v, axis, z0, n, strides_of(src));
}

}  // namespace

void register_slices(py::module_& m) {
  m.def("gather_slices", &gather, py::arg("volume"), py::arg("out"), py::arg("z0"), py::arg("n"),
        py::arg("axis") = -1,
        "Slices [z0, z0+n) along axis of a host (X, Y, Z) volume (any strides) -> out, an "
        "(n, H, W) array of the same item size, any non-overlapping strides (multi-threaded).");
  m.def("scatter_slices", &scatter, py::arg("slab"), py::arg("out_volume"), py::arg("z0"),
        py::arg("n"), py::arg("axis") = -1,
        "The reverse of gather_slices: an (n, H, W) slab (any strides) -> slices [z0, z0+n) "
        "along axis of out_volume (any strides).");
  m.def(
      "threads_info",
      [] {
        py::dict d;
#ifdef _OPENMP
        d["max_threads"] = omp_get_max_threads();
#else
        d["max_threads"] = 1;
#endif
        d["serial_after_fork"] = serial_after_fork();
        return d;
      },
      "Dict: max_threads (OpenMP), serial_after_fork (True in a child forked after the parent "
      "ran the ops in parallel: the ops then run on the calling thread).");
}

}  // namespace sam_unet::bindings
