// Gathering slices of a strided volume into a contiguous slab and scattering a slab back: the
// host side of the GPU pipeline (pinned slabs in, masks out), multi-threaded on the CPU.
#pragma once

#include <cstdint>

namespace sam_unet {

// A 3D array of any element type: element (i, j, k) at data + (i*strides[0] + j*strides[1] +
// k*strides[2]) * itemsize bytes (strides in elements, negative allowed).
struct StridedVolume {
  void* data = nullptr;
  int itemsize = 1;  // 1, 2, 4 or 8
  int64_t shape[3] = {0, 0, 0};
  int64_t strides[3] = {0, 0, 0};
};

// Slices [z0, z0 + n) along `axis` (negative allowed) of `vol` -> slab (n, H, W), H and W the
// two remaining axes in order, with `slab_strides` (elements; nullptr: C-contiguous). A slab
// laid out in the volume's own memory order is a row copy; any other layout a tiled transpose.
// Throws std::invalid_argument on a bad run/itemsize.
void gather_slices_cpu(const StridedVolume& vol, int axis, int64_t z0, int64_t n, void* slab,
                       const int64_t* slab_strides = nullptr);

// The reverse: slab (n, H, W) -> slices [z0, z0 + n) along `axis` of `vol`.
void scatter_slices_cpu(const void* slab, const StridedVolume& vol, int axis, int64_t z0,
                        int64_t n, const int64_t* slab_strides = nullptr);

// dst <- src for two 3D arrays of the same shape and item size, any strides (in elements); the
// two must not overlap. The loop order follows memory order, tiled transposes where the two
// arrays' contiguous axes differ.
void copy_strided_cpu(const void* src, const int64_t src_strides[3], void* dst,
                      const int64_t dst_strides[3], const int64_t shape[3], int itemsize);

}  // namespace sam_unet
