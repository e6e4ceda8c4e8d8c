// Bindings of the volume ops: array conversion (buffer protocol for host arrays,
// __cuda_array_interface__ for torch/CuPy device arrays, no copies), validation with messages
// naming the argument, and CPU/CUDA dispatch by where the data lives.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "sam_unet/check.h"
#include "sam_unet/ops.h"

namespace py = pybind11;

namespace sam_unet::bindings {
namespace {

struct Array {
  void* ptr = nullptr;
  DType dtype = DType::U8;
  std::vector<int64_t> shape, strides;  // strides in elements
  bool cuda = false;
  int device = -1;
  std::shared_ptr<py::buffer_info> keep;  // holds the host buffer while in use
};

std::string shape_str(const std::vector<int64_t>& v) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << (v.size() == 1 ? ",)" : ")");
  return os.str();
}

DType dtype_from(char kind, int64_t size, const std::string& what, const char* name) {
  if (kind == 'u' && size == 1) return DType::U8;
  if (kind == 'i' && size == 2) return DType::I16;
  if (kind == 'u' && size == 2) return DType::U16;
  if (kind == 'i' && size == 4) return DType::I32;
  if (kind == 'f' && size == 2) return DType::F16;
  if (kind == 'f' && size == 4) return DType::F32;
  if (kind == 'f' && size == 8) return DType::F64;
  SAMUNET_CHECK(false, name, ": unsupported dtype '", what,
                "' (supported: uint8, int16, uint16, int32, float16, float32, float64)");
  return DType::U8;
}

DType dtype_from_format(std::string fmt, int64_t itemsize, const char* name) {
  const std::string orig = fmt;
  while (!fmt.empty() && (fmt[0] == '@' || fmt[0] == '=' || fmt[0] == '<')) fmt.erase(0, 1);
  SAMUNET_CHECK(fmt.size() == 1, name, ": unsupported buffer format '", orig,
                "' (big-endian or structured data)");
  char kind = '?';
  switch (fmt[0]) {
    case 'B': case 'H': case 'I': case 'L': case 'Q': kind = 'u'; break;
    case 'b': case 'h': case 'i': case 'l': case 'q': kind = 'i'; break;
    case 'e': case 'f': case 'd': kind = 'f'; break;
    default: break;
  }
  return dtype_from(kind, itemsize, orig, name);
}

Array as_array(const py::object& obj, const char* name, bool writable) {
  Array a;
  if (py::hasattr(obj, "__cuda_array_interface__")) {
    py::dict cai = obj.attr("__cuda_array_interface__");
    const std::string typestr = py::str(cai["typestr"]);
    SAMUNET_CHECK(typestr.size() >= 3 && typestr[0] != '>', name, ": unsupported typestr '",
                  typestr, "'");
    const int64_t itemsize = std::stoll(typestr.substr(2));
    a.dtype = dtype_from(typestr[1], itemsize, typestr, name);
    for (auto d : py::tuple(cai["shape"])) a.shape.push_back(d.cast<int64_t>());
    py::tuple data = cai["data"];
    a.ptr = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
    const bool readonly = data[1].cast<bool>();
    SAMUNET_CHECK(!(writable && readonly), name, " is read-only");
    if (cai.contains("mask"))
      SAMUNET_CHECK(cai["mask"].is_none(), name, ": masked CUDA arrays are not supported");
    if (!cai.contains("strides") || cai["strides"].is_none()) {
      a.strides.assign(a.shape.size(), 1);
      for (int i = (int)a.shape.size() - 2; i >= 0; --i)
        a.strides[i] = a.strides[i + 1] * a.shape[i + 1];
    } else {
      for (auto s : py::tuple(cai["strides"])) {
        const int64_t b = s.cast<int64_t>();
        SAMUNET_CHECK(b % itemsize == 0, name, ": strides must be multiples of the item size");
        a.strides.push_back(b / itemsize);
      }
    }
    a.cuda = true;
    return a;
  }
  SAMUNET_CHECK(PyObject_CheckBuffer(obj.ptr()), name,
                " must be a NumPy array (buffer protocol) or a CUDA array with "
                "__cuda_array_interface__ (torch, CuPy), got ",
                std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto info = std::make_shared<py::buffer_info>();
  try {
    *info = py::reinterpret_borrow<py::buffer>(obj).request(writable);
  } catch (py::error_already_set& e) {
    SAMUNET_CHECK(false, name, writable ? " must be a writable array: " : ": ", e.what());
  }
  a.keep = info;
  a.ptr = info->ptr;
  a.dtype = dtype_from_format(info->format, info->itemsize, name);
  for (auto d : info->shape) a.shape.push_back(d);
  for (auto s : info->strides) {
    SAMUNET_CHECK(s % info->itemsize == 0, name, ": strides must be multiples of the item size");
    a.strides.push_back(s / info->itemsize);
  }
  return a;
}

bool c_contiguous(const Array& a) {
  int64_t expect = 1;
  for (int i = (int)a.shape.size() - 1; i >= 0; --i) {
    if (a.shape[i] != 1 && a.strides[i] != expect) return false;
    expect *= a.shape[i];
  }
  return true;
}

Volume3D volume_of(const Array& a, const char* name) {
  SAMUNET_CHECK(a.shape.size() == 3, name, " must be 3D (X, Y, Z), got ", a.shape.size(),
                "D of shape ", shape_str(a.shape));
  Volume3D v;
  v.data = a.ptr;
  v.dtype = a.dtype;
  for (int d = 0; d < 3; ++d) {
    SAMUNET_CHECK(a.shape[d] > 0, name, " has an empty axis: shape ", shape_str(a.shape));
    v.shape[d] = a.shape[d];
    v.strides[d] = a.strides[d];
  }
  return v;
}

// Resolve where two arrays live: both host (returns -1) or both on one CUDA device.
int placement(const Array& a, const char* an, const Array& b, const char* bn) {
  SAMUNET_CHECK(a.cuda == b.cuda, an, " is on ", a.cuda ? "a CUDA device" : "the host", " but ",
                bn, " is on ", b.cuda ? "a CUDA device" : "the host", "; both must be on the same device");
  if (!a.cuda) return -1;
  if (!cuda_compiled())
    SAMUNET_FAIL(an, " is a CUDA array but sam_unet._C was built without CUDA: reinstall with "
                 "nvcc on PATH (SAMUNET_CUDA=ON pip install .)");
  if (cuda_device_count() == 0)
    SAMUNET_FAIL(an, " is a CUDA array but no CUDA device is visible to sam_unet._C");
  const int da = cuda_pointer_device(a.ptr), db = cuda_pointer_device(b.ptr);
  SAMUNET_CHECK(da >= 0, an, " does not point to CUDA device memory");
  SAMUNET_CHECK(db >= 0, bn, " does not point to CUDA device memory");
  SAMUNET_CHECK(da == db, an, " is on cuda:", da, " but ", bn, " is on cuda:", db);
  return da;
}

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (device < 0) return;
    prev_ = cuda_current_device();
    if (prev_ != device) cuda_set_device(device);
    else prev_ = -1;
  }
  ~DeviceGuard() {
    if (prev_ >= 0) {
      try { cuda_set_device(prev_); } catch (...) {}
    }
  }

 private:
  int prev_ = -1;
};

NormMode parse_mode(const std::string& mode) {
  if (mode == "slice-minmax") return NormMode::SliceMinMax;
  if (mode == "window") return NormMode::Window;
  SAMUNET_CHECK(false, "mode must be 'slice-minmax' or 'window', got '", mode, "'");
  return NormMode::SliceMinMax;
}

py::array_t<int32_t> preprocess(const py::object& volume, const py::object& out, int64_t z0,
                                int64_t n, int axis, const std::string& mode,
                                const py::object& window, uintptr_t stream) {
  const Array vol = as_array(volume, "volume", false);
  const Array dst = as_array(out, "out", true);
  PreprocessParams p;
  p.volume = volume_of(vol, "volume");
  p.run = make_slice_run(p.volume, axis, z0, n);
  p.mode = parse_mode(mode);
  if (!window.is_none()) {
    py::sequence w = window;
    SAMUNET_CHECK(py::len(w) == 2, "window must be (lo, hi)");
    p.has_window = true;
    p.lo = w[0].cast<double>();
    p.hi = w[1].cast<double>();
  }
  const std::vector<int64_t> want = {n, 3, kImageSize, kImageSize};
  SAMUNET_CHECK(dst.shape == want, "out must have shape ", shape_str(want), ", got ",
                shape_str(dst.shape));
  SAMUNET_CHECK(c_contiguous(dst), "out must be C-contiguous");
  SAMUNET_CHECK(dst.dtype == DType::F16 || dst.dtype == DType::F32,
                "out must be float16 or float32, got ", dtype_name(dst.dtype));
  p.out = dst.ptr;
  p.out_dtype = dst.dtype;
  check_preprocess(p);
  const int device = placement(vol, "volume", dst, "out");

  py::array_t<int32_t> sizes({n, int64_t(2)});
  int32_t h2, w2;
  resized_shape(p.run.H, p.run.W, &h2, &w2);
  auto s = sizes.mutable_unchecked<2>();
  for (int64_t i = 0; i < n; ++i) {
    s(i, 0) = h2;
    s(i, 1) = w2;
  }
  if (device < 0) {
    py::gil_scoped_release release;
    preprocess_cpu(p);
  } else {
    DeviceGuard guard(device);
    preprocess_cuda(p, reinterpret_cast<cudaStream_t>(stream));
  }
  return sizes;
}

void postprocess(const py::object& logits, const py::object& out_volume, int64_t z0, int64_t n,
                 int axis, const py::object& resized_hw, uintptr_t stream) {
  const Array lg = as_array(logits, "logits", false);
  const Array dst = as_array(out_volume, "out_volume", true);
  PostprocessParams p;
  p.out = volume_of(dst, "out_volume");
  p.run = make_slice_run(p.out, axis, z0, n);
  const std::vector<int64_t> want = {n, 1, kLogitSize, kLogitSize};
  SAMUNET_CHECK(lg.shape == want, "logits must have shape ", shape_str(want), ", got ",
                shape_str(lg.shape));
  SAMUNET_CHECK(c_contiguous(lg), "logits must be C-contiguous");
  p.logits = lg.ptr;
  p.logit_dtype = lg.dtype;
  auto hw = py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(resized_hw);
  SAMUNET_CHECK(hw, "resized_hw must be an integer array of (h', w') pairs");
  std::vector<int32_t> sizes(2 * n);
  if (hw.ndim() == 1) {
    SAMUNET_CHECK(hw.shape(0) == 2, "resized_hw must be (h', w') or (n, 2)");
    for (int64_t i = 0; i < n; ++i) {
      sizes[2 * i] = hw.at(0);
      sizes[2 * i + 1] = hw.at(1);
    }
  } else {
    SAMUNET_CHECK(hw.ndim() == 2 && hw.shape(0) == n && hw.shape(1) == 2,
                  "resized_hw must be (h', w') or (n, 2) with n = ", n);
    for (int64_t i = 0; i < 2 * n; ++i) sizes[i] = hw.data()[i];
  }
  p.resized_hw = sizes.data();
  check_postprocess(p);
  const int device = placement(lg, "logits", dst, "out_volume");
  if (device < 0) {
    py::gil_scoped_release release;
    postprocess_cpu(p);
  } else {
    DeviceGuard guard(device);
    postprocess_cuda(p, reinterpret_cast<cudaStream_t>(stream));
  }
}

py::array_t<float> scale_boxes(const py::object& boxes, int64_t H, int64_t W, int32_t h2,
                               int32_t w2) {
  auto b = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(boxes);
  SAMUNET_CHECK(b && b.ndim() == 2 && b.shape(1) == 4, "boxes must be an (N, 4) array");
  py::array_t<float> out({b.shape(0), py::ssize_t(4)});
  scale_boxes_cpu(b.data(), out.mutable_data(), b.shape(0), H, W, h2, w2);
  return out;
}

}  // namespace

void register_ops(py::module_& m) {
  m.def("preprocess", &preprocess, py::arg("volume"), py::arg("out"), py::arg("z0"),
        py::arg("n"), py::arg("axis") = -1, py::arg("mode") = "slice-minmax",
        py::arg("window") = py::none(), py::arg("stream") = 0,
        "Slices [z0, z0+n) along axis of a (X, Y, Z) volume -> out (n, 3, 256, 256) float16/32 "
        "(normalised, padded); returns int32 (n, 2) resized (h', w'). Host arrays (buffer "
        "protocol) run on the CPU, CUDA arrays (__cuda_array_interface__) on their device on "
        "`stream` (a cudaStream_t as int, 0 = default).");
  m.def("postprocess", &postprocess, py::arg("logits"), py::arg("out_volume"), py::arg("z0"),
        py::arg("n"), py::arg("axis") = -1, py::arg("resized_hw") = py::none(),
        py::arg("stream") = 0,
        "(n, 1, 64, 64) float16/32 logits -> uint8 {0,1} masks written into out_volume at "
        "slices [z0, z0+n) along axis; resized_hw is (h', w') or (n, 2).");
  m.def("scale_boxes", &scale_boxes, py::arg("boxes"), py::arg("H"), py::arg("W"),
        py::arg("h2"), py::arg("w2"), "(N, 4) boxes scaled by (w'/W, h'/H), float32.");
  m.def(
      "resized_shape",
      [](int64_t h, int64_t w) {
        SAMUNET_CHECK(h > 0 && w > 0, "image size must be positive");
        int32_t h2, w2;
        resized_shape(h, w, &h2, &w2);
        return py::make_tuple(h2, w2);
      },
      py::arg("h"), py::arg("w"));
  m.def("cuda_compiled", &cuda_compiled);
}

}  // namespace sam_unet::bindings
