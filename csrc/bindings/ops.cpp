// Bindings of the volume ops: array conversion (buffer protocol for host arrays,
// __cuda_array_interface__ for torch/CuPy device arrays, no copies), validation with messages
// naming the argument, and CPU/CUDA dispatch by where the data lives.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <initializer_list>
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
  bool swapped = false;      // stored in the other byte order (big-endian)
  bool has_stream = false;   // __cuda_array_interface__ v3 names the producer's stream
  uintptr_t stream = 0;
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

// tag: "" (the array's own dtype) or "bfloat16" (2-byte items holding bfloat16, which torch
// exports as "<V2" and NumPy has no code for).
DType dtype_from(char kind, int64_t size, const std::string& what, const char* name,
                 const std::string& tag) {
  if (tag == "bfloat16") {
    SAMUNET_CHECK(size == 2, name, ": tagged bfloat16 but has ", size, "-byte items");
    return DType::BF16;
  }
  SAMUNET_CHECK(tag.empty(), name, ": unknown dtype tag '", tag, "' (only 'bfloat16')");
  if (kind == 'b' && size == 1) return DType::Bool;
  if (kind == 'u' && size == 1) return DType::U8;
  if (kind == 'i' && size == 1) return DType::I8;
  if (kind == 'i' && size == 2) return DType::I16;
  if (kind == 'u' && size == 2) return DType::U16;
  if (kind == 'i' && size == 4) return DType::I32;
  if (kind == 'u' && size == 4) return DType::U32;
  if (kind == 'i' && size == 8) return DType::I64;
  if (kind == 'u' && size == 8) return DType::U64;
  if (kind == 'f' && size == 2) return DType::F16;
  if (kind == 'f' && size == 4) return DType::F32;
  if (kind == 'f' && size == 8) return DType::F64;
  SAMUNET_CHECK(false, name, ": unsupported dtype '", what,
                "' (supported: bool, int8/16/32/64, uint8/16/32/64, float16, bfloat16, float32, "
                "float64)");
  return DType::U8;
}

DType dtype_from_format(std::string fmt, int64_t itemsize, const char* name,
                        const std::string& tag, bool* swapped) {
  const std::string orig = fmt;
  *swapped = false;
  while (!fmt.empty() && (fmt[0] == '@' || fmt[0] == '=' || fmt[0] == '<' || fmt[0] == '>' ||
                          fmt[0] == '!')) {
    if (fmt[0] == '>' || fmt[0] == '!') *swapped = true;
    fmt.erase(0, 1);
  }
  SAMUNET_CHECK(fmt.size() == 1 || !tag.empty(), name, ": unsupported dtype (buffer format '",
                orig, "'); supported: bool, int8/16/32/64, uint8/16/32/64, float16, bfloat16, "
                "float32, float64");
  char kind = '?';
  switch (fmt.empty() ? '?' : fmt[0]) {
    case 'B': case 'H': case 'I': case 'L': case 'Q': kind = 'u'; break;
    case 'b': case 'h': case 'i': case 'l': case 'q': kind = 'i'; break;
    case 'e': case 'f': case 'd': kind = 'f'; break;
    case '?': kind = 'b'; break;
    default: break;
  }
  return dtype_from(kind, itemsize, orig, name, tag);
}

Array as_array(const py::object& obj, const char* name, bool writable,
               const std::string& tag = "") {
  Array a;
  if (py::hasattr(obj, "__cuda_array_interface__")) {
    py::dict cai = obj.attr("__cuda_array_interface__");
    const std::string typestr = py::str(cai["typestr"]);
    SAMUNET_CHECK(typestr.size() >= 3, name, ": unsupported typestr '", typestr, "'");
    const int64_t itemsize = std::stoll(typestr.substr(2));
    a.swapped = typestr[0] == '>' && itemsize > 1;
    a.dtype = dtype_from(typestr[1], itemsize, typestr, name, tag);
    if (cai.contains("stream") && !cai["stream"].is_none()) {
      a.has_stream = true;
      a.stream = cai["stream"].cast<uintptr_t>();
    }
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
  a.dtype = dtype_from_format(info->format, info->itemsize, name, tag, &a.swapped);
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
  const std::string why = cuda_unavailable_reason();
  if (!why.empty()) SAMUNET_FAIL(an, " is a CUDA array but the CUDA ops cannot run: ", why);
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

// Order the launch stream after the producers' streams of CUDA arrays that name one.
void wait_for_producers(cudaStream_t stream, std::initializer_list<const Array*> arrays) {
  for (const Array* a : arrays)
    if (a->cuda && a->has_stream) cuda_stream_wait(stream, a->stream);
}

// Scratch memory for a CUDA preprocess from the caller's allocator: workspace(nbytes) returns a
// CUDA array of at least nbytes bytes, kept alive in *keep until the launches are queued.
void attach_workspace(PreprocessParams& p, const py::object& workspace, py::object* keep) {
  const size_t bytes = preprocess_cuda_workspace_bytes(p);
  if (bytes == 0 || workspace.is_none()) return;
  *keep = workspace(bytes);
  py::dict cai = keep->attr("__cuda_array_interface__");
  const std::string typestr = py::str(cai["typestr"]);
  int64_t size = std::stoll(typestr.substr(2));
  for (auto d : py::tuple(cai["shape"])) size *= d.cast<int64_t>();
  SAMUNET_CHECK((size_t)size >= bytes, "workspace(", bytes, ") returned ", size, " bytes");
  py::tuple data = cai["data"];
  p.workspace = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  p.workspace_bytes = (size_t)size;
}

py::array_t<int32_t> preprocess(const py::object& volume, const py::object& out, int64_t z0,
                                int64_t n, int axis, const std::string& mode,
                                const py::object& window, uintptr_t stream,
                                const std::string& volume_dtype, const std::string& out_dtype,
                                const py::object& workspace) {
  const Array vol = as_array(volume, "volume", false, volume_dtype);
  const Array dst = as_array(out, "out", true, out_dtype);
  PreprocessParams p;
  p.volume = volume_of(vol, "volume");
  p.byteswap = vol.swapped;
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
  SAMUNET_CHECK(!dst.swapped && (dst.dtype == DType::F16 || dst.dtype == DType::F32 ||
                                 dst.dtype == DType::BF16),
                "out must be float16, bfloat16 or float32 in native byte order, got ",
                dst.swapped ? "big-endian " : "", dtype_name(dst.dtype));
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
    const auto st = reinterpret_cast<cudaStream_t>(stream);
    py::object keep;
    attach_workspace(p, workspace, &keep);
    wait_for_producers(st, {&vol, &dst});
    preprocess_cuda(p, st);
  }
  return sizes;
}

void postprocess(const py::object& logits, const py::object& out_volume, int64_t z0, int64_t n,
                 int axis, const py::object& resized_hw, uintptr_t stream,
                 const std::string& logits_dtype) {
  const Array lg = as_array(logits, "logits", false, logits_dtype);
  const Array dst = as_array(out_volume, "out_volume", true);
  PostprocessParams p;
  p.out = volume_of(dst, "out_volume");
  p.run = make_slice_run(p.out, axis, z0, n);
  const std::vector<int64_t> want = {n, 1, kLogitSize, kLogitSize};
  SAMUNET_CHECK(lg.shape == want, "logits must have shape ", shape_str(want), ", got ",
                shape_str(lg.shape));
  SAMUNET_CHECK(c_contiguous(lg), "logits must be C-contiguous");
  SAMUNET_CHECK(!lg.swapped, "logits must be in native byte order");
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
    const auto st = reinterpret_cast<cudaStream_t>(stream);
    wait_for_producers(st, {&lg, &dst});
    postprocess_cuda(p, st);
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
        py::arg("window") = py::none(), py::arg("stream") = 0, py::arg("volume_dtype") = "",
        py::arg("out_dtype") = "", py::arg("workspace") = py::none(),
        "Slices [z0, z0+n) along axis of a (X, Y, Z) volume -> out (n, 3, 256, 256) "
        "float16/bfloat16/float32 (normalised, padded); returns int32 (n, 2) resized (h', w'). "
        "Host arrays (buffer protocol) run on the CPU, CUDA arrays (__cuda_array_interface__) "
        "on their device on `stream` (a cudaStream_t as int, 0 = default), after the streams "
        "the arrays name. volume_dtype/out_dtype: '' or 'bfloat16' (2-byte items read as "
        "bfloat16). workspace: None or a callable nbytes -> CUDA byte array (the caller's "
        "allocator) for the CUDA scratch memory.");
  m.def("postprocess", &postprocess, py::arg("logits"), py::arg("out_volume"), py::arg("z0"),
        py::arg("n"), py::arg("axis") = -1, py::arg("resized_hw") = py::none(),
        py::arg("stream") = 0, py::arg("logits_dtype") = "",
        "(n, 1, 64, 64) float16/bfloat16/float32 logits -> uint8 {0,1} masks written into "
        "out_volume at slices [z0, z0+n) along axis; resized_hw is (h', w') or (n, 2).");
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
  m.def(
      "cuda_pointer_device",
      [](uintptr_t ptr) { return cuda_pointer_device(reinterpret_cast<const void*>(ptr)); },
      py::arg("ptr"), "CUDA device of a device/managed pointer, -1 otherwise.");
}

}  // namespace sam_unet::bindings
