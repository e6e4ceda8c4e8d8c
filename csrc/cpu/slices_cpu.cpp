// Strided 3D copies on the CPU (gather slices into a slab, scatter a slab back): the loops follow
// memory order; where the two arrays' contiguous axes differ, the copy is a tiled transpose
// (source lines staged whole, 16-byte SSE2 register transposes), so both sides stream.
#include "sam_unet/slices.h"

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "sam_unet/check.h"
#include "sam_unet/ops.h"
#include "sam_unet/parallel.h"

namespace sam_unet {
namespace {

constexpr int64_t kMinParallelBytes = 256 << 10;  // below this one thread is as fast

int64_t mag(int64_t v) { return v < 0 ? -v : v; }

struct Plan {
  const char* src;
  char* dst;
  int64_t dim[3], ss[3], ds[3];  // strides in elements
  int es;                        // element size
};

// Walk axis k backwards on both sides (the same copy, described from the other end).
void flip(Plan& p, int k) {
  p.src += (p.dim[k] - 1) * p.ss[k] * p.es;
  p.ss[k] = -p.ss[k];
  p.dst += (p.dim[k] - 1) * p.ds[k] * p.es;
  p.ds[k] = -p.ds[k];
}

// The axis of smallest |stride| among those longer than 1 (the later axis on ties), -1 if none.
int fast_axis(const int64_t* st, const int64_t* dim) {
  int best = -1;
  for (int k = 2; k >= 0; --k) {
    if (dim[k] <= 1) continue;
    if (best < 0 || mag(st[k]) < mag(st[best])) best = k;
  }
  return best;
}

// A short contiguous copy, inlined (a memcpy call costs as much as a 128-byte row).
template <typename E>
inline void copy_run(const E* s, E* d, int64_t n) {
  int64_t k = 0;
#if defined(__SSE2__)
  constexpr int64_t R = 16 / (int64_t)sizeof(E);
  for (; k + R <= n; k += R)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + k),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k)));
#endif
  for (; k < n; ++k) d[k] = s[k];
}

// A contiguous copy with streaming (non-temporal) stores from the first 16-byte boundary of the
// destination: a large copy's destination is not read back soon (a slab bound for the GPU, a
// mask volume), and streaming stores of whole lines skip reading each line before writing it.
// The caller fences (_mm_sfence) before the data is used.
template <typename E>
inline void copy_run_streaming(const E* s, E* d, int64_t n) {
#if defined(__SSE2__)
  constexpr int64_t R = 16 / (int64_t)sizeof(E);
  // a short row that starts inside a cache line would stream partial lines (each one a
  // separate write to memory): ordinary stores do better
  if (n * (int64_t)sizeof(E) < 256 && (reinterpret_cast<uintptr_t>(d) & 63) != 0)
    return copy_run<E>(s, d, n);
  int64_t k = 0;
  while (k < n && (reinterpret_cast<uintptr_t>(d + k) & 15) != 0) {
    d[k] = s[k];
    ++k;
  }
  for (; k + R <= n; k += R)
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + k),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k)));
  for (; k < n; ++k) d[k] = s[k];
#else
  copy_run<E>(s, d, n);
#endif
}

constexpr int64_t kStreamingBytes = 4 << 20;  // copies at least this large stream their stores

// Both arrays run along axis f: rows along f, merged with the next axes where both sides stay
// contiguous (a slice-major volume is one block). A task is about 64 KB: a piece of a long row,
// or a group of short rows (a C-order volume sliced along Z into a slab of the same order has
// one row per (x, y) of n elements, one per slice).
template <typename E>
void copy_rows(const Plan& p, int f) {
  int o1 = f == 0 ? 1 : 0, o0 = f == 2 ? 1 : 2;
  if (mag(p.ds[o1]) > mag(p.ds[o0])) std::swap(o0, o1);  // o1: the next-fastest on the dst side
  int64_t len = p.dim[f], n1 = p.dim[o1], n0 = p.dim[o0];
  const int64_t sf = p.ss[f], df = p.ds[f];
  const bool contiguous = sf == 1 && df == 1;
  if (contiguous && (n1 == 1 || (p.ss[o1] == len && p.ds[o1] == len))) {
    len *= n1;
    n1 = 1;
    if (n0 == 1 || (p.ss[o0] == len && p.ds[o0] == len)) {
      len *= n0;
      n0 = 1;
    }
  }
  constexpr int64_t kTask = (64 << 10) / (int64_t)sizeof(E);  // elements per task
  const int64_t chunk = contiguous ? std::max<int64_t>(1, kTask) : len;
  const int64_t pieces = (len + chunk - 1) / chunk;
  const int64_t rows = n0 * n1;
  const int64_t group = pieces > 1 ? 1 : std::max<int64_t>(1, kTask / std::max<int64_t>(1, len));
  const int64_t tasks = pieces > 1 ? rows * pieces : (rows + group - 1) / group;
  const int64_t bytes = rows * len * (int64_t)sizeof(E);
  const bool streaming = contiguous && bytes >= kStreamingBytes;
  // short rows far apart in the source (a C-order volume sliced along Z): the hardware
  // prefetchers do not follow them, so each row's lines are requested kAhead rows early
  const bool prefetch = group > 1 && mag(p.ss[o1]) * (int64_t)sizeof(E) > 256;
  constexpr int64_t kAhead = 8;
  const E* src = reinterpret_cast<const E*>(p.src);
  E* dst = reinterpret_cast<E*>(p.dst);
  parallel_tasks(tasks, bytes, kMinParallelBytes, [&](int64_t t) {
    const int64_t piece = pieces > 1 ? t % pieces : 0;
    const int64_t r0 = pieces > 1 ? t / pieces : t * group;
    const int64_t r1 = pieces > 1 ? r0 + 1 : std::min(rows, r0 + group);
    const int64_t start = piece * chunk, count = std::min(chunk, len - start);
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t i1 = row % n1, i0 = row / n1;
      const E* s = src + i0 * p.ss[o0] + i1 * p.ss[o1] + start * sf;
#if defined(__SSE2__)
      if (prefetch && row + kAhead < r1) {
        const int64_t ahead = row + kAhead;
        const uintptr_t first = reinterpret_cast<uintptr_t>(
            src + (ahead / n1) * p.ss[o0] + (ahead % n1) * p.ss[o1] + start * sf);
        const uintptr_t last = first + count * sizeof(E) - 1;
        for (uintptr_t line = first & ~uintptr_t(63); line <= last; line += 64)
          _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T1);
      }
#endif
      E* d = dst + i0 * p.ds[o0] + i1 * p.ds[o1] + start * df;
      if (!contiguous) {
        for (int64_t k = 0; k < count; ++k) d[k * df] = s[k * sf];
      } else if (streaming) {
        copy_run_streaming<E>(s, d, count);
      } else if (count * (int64_t)sizeof(E) >= 512) {
        std::memcpy(d, s, (size_t)count * sizeof(E));
      } else {
        copy_run<E>(s, d, count);
      }
    }
#if defined(__SSE2__)
    if (streaming) _mm_sfence();  // this task's streaming stores land before it counts as done
#endif
  });
}

#if defined(__SSE2__)
template <int ES>
inline __m128i unpack_lo(__m128i x, __m128i y) {
  if constexpr (ES == 1) return _mm_unpacklo_epi8(x, y);
  else if constexpr (ES == 2) return _mm_unpacklo_epi16(x, y);
  else if constexpr (ES == 4) return _mm_unpacklo_epi32(x, y);
  else return _mm_unpacklo_epi64(x, y);
}
template <int ES>
inline __m128i unpack_hi(__m128i x, __m128i y) {
  if constexpr (ES == 1) return _mm_unpackhi_epi8(x, y);
  else if constexpr (ES == 2) return _mm_unpackhi_epi16(x, y);
  else if constexpr (ES == 4) return _mm_unpackhi_epi32(x, y);
  else return _mm_unpackhi_epi64(x, y);
}

// An R x R block (R = 16 / sizeof(E)): source row j (R contiguous elements) at s + j*sb becomes
// column j of the destination, whose row i is at d + i*da. log2(R) rounds of interleaving row k
// with row k + R/2 leave the transpose.
template <typename E>
inline void transpose_block(const E* s, int64_t sb, E* d, int64_t da) {
  constexpr int R = 16 / (int)sizeof(E);
  __m128i r[R], t[R];
  for (int j = 0; j < R; ++j) r[j] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + j * sb));
  for (int round = 1; round < R; round *= 2) {
    for (int k = 0; k < R / 2; ++k) {
      t[2 * k] = unpack_lo<sizeof(E)>(r[k], r[k + R / 2]);
      t[2 * k + 1] = unpack_hi<sizeof(E)>(r[k], r[k + R / 2]);
    }
    for (int j = 0; j < R; ++j) r[j] = t[j];
  }
  for (int i = 0; i < R; ++i) _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i * da), r[i]);
}
#endif

#if defined(__SSE2__)
// A destination row written whole from a staging buffer: streaming (non-temporal) stores where
// the row is 16-byte aligned and long, as memcpy does for large copies: the lines are not read
// first (a slab bound for the GPU, a mask volume: neither is read back soon).
template <typename E>
inline void copy_out(const E* s, E* d, int64_t n) {
  const int64_t bytes = n * (int64_t)sizeof(E);
  if (bytes < 256 || (reinterpret_cast<uintptr_t>(d) & 15) != 0) return copy_run<E>(s, d, n);
  const char* src = reinterpret_cast<const char*>(s);
  char* dst = reinterpret_cast<char*>(d);
  int64_t k = 0;
  for (; k + 16 <= bytes; k += 16)
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + k),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k)));
  std::memcpy(dst + k, src + k, (size_t)(bytes - k));
}
#endif

// Per-thread staging buffers of a tile (kept between calls).
template <typename E>
E* staging(size_t count, int slot) {
  thread_local std::vector<E> buffers[2];
  std::vector<E>& b = buffers[slot];
  if (b.size() < count) b.assign(count, E{});
  return b.data();
}

#if defined(__SSE2__)
// A tile whose source rows (index b) run along a and whose destination rows (index a) run
// along b (sa == db == 1): the source rows are first copied whole into a padded buffer (the
// reads stream through memory a row at a time), then transposed in registers. Destination rows
// a page or more apart (a C-order volume sliced along its contiguous Z, so each row is another
// slice) alias in the caches when written 16 bytes at a time: those are transposed into a
// second buffer and written a whole row at a time.
template <typename E>
void copy_tile_transpose(const E* s, E* d, int64_t a0, int64_t a1, int64_t b0, int64_t b1,
                         int64_t sb, int64_t da) {
  constexpr int64_t R = 16 / (int64_t)sizeof(E), pad = 64 / (int64_t)sizeof(E);
  const int64_t na = a1 - a0, nb = b1 - b0;
  const int64_t na_r = (na + R - 1) / R * R, nb_r = (nb + R - 1) / R * R;
  const int64_t pi = na_r + pad;  // input buffer: nb rows (b) of na elements (a)
  E* in = staging<E>((size_t)(nb_r * pi), 0);
  for (int64_t b = 0; b < nb; ++b) copy_run<E>(s + a0 + (b0 + b) * sb, in + b * pi, na);
  const bool stage_out = da * (int64_t)sizeof(E) >= 4096;
  if (stage_out) {  // output buffer: na rows (a) of nb elements (b); past-the-edge lanes unused
    const int64_t po = nb_r + pad;
    E* out = staging<E>((size_t)(na_r * po), 1);
    for (int64_t b = 0; b < nb_r; b += R)
      for (int64_t a = 0; a < na_r; a += R)
        transpose_block<E>(in + a + b * pi, pi, out + a * po + b, po);
    for (int64_t a = 0; a < na; ++a) copy_out(out + a * po, d + (a0 + a) * da + b0, nb);
    _mm_sfence();  // order the streaming stores before the caller's next use of the data
    return;
  }
  int64_t b = 0;
  for (; b + R <= nb; b += R) {
    int64_t a = 0;
    for (; a + R <= na; a += R)
      transpose_block<E>(in + a + b * pi, pi, d + (a0 + a) * da + b0 + b, da);
    for (; a < na; ++a)
      for (int64_t k = b; k < b + R; ++k) d[(a0 + a) * da + b0 + k] = in[a + k * pi];
  }
  for (; b < nb; ++b)
    for (int64_t a = 0; a < na; ++a) d[(a0 + a) * da + b0 + b] = in[a + b * pi];
}
#endif

// One tile [a0, a1) x [b0, b1): element (a, b) from s + a*sa + b*sb to d + a*da + b*db.
template <typename E>
void copy_tile(const E* s, E* d, int64_t a0, int64_t a1, int64_t b0, int64_t b1, int64_t sa,
               int64_t sb, int64_t da, int64_t db) {
#if defined(__SSE2__)
  if (sa == 1 && db == 1) return copy_tile_transpose<E>(s, d, a0, a1, b0, b1, sb, da);
#endif
  for (int64_t a = a0; a < a1; ++a)
    for (int64_t b = b0; b < b1; ++b) d[a * da + b * db] = s[a * sa + b * sb];
}

// The source runs along axis a, the destination along axis b != a: tiles of (a, b) per index of
// the third axis, a innermost so consecutive tiles continue the same source lines. Tiles are
// long along a (whole source lines of up to 1 KB) and about 16 KB in all.
template <typename E>
void copy_transposed(const Plan& p, int a, int b) {
  const int c = 3 - a - b;
  constexpr int64_t R = 16 / (int64_t)sizeof(E);
  const int64_t TA = std::min<int64_t>(p.dim[a], 1024 / (int64_t)sizeof(E));
  const int64_t TB = std::max<int64_t>(R, (16 << 10) / (TA * (int64_t)sizeof(E)) / R * R);
  const int64_t ta = (p.dim[a] + TA - 1) / TA, tb = (p.dim[b] + TB - 1) / TB;
  const int64_t tasks = p.dim[c] * tb * ta;
  const int64_t bytes = p.dim[0] * p.dim[1] * p.dim[2] * (int64_t)sizeof(E);
  const E* src = reinterpret_cast<const E*>(p.src);
  E* dst = reinterpret_cast<E*>(p.dst);
  parallel_tasks(tasks, bytes, kMinParallelBytes, [&](int64_t t) {
    const int64_t ia = t % ta, rest = t / ta;
    const int64_t ib = rest % tb, ic = rest / tb;
    const int64_t a0 = ia * TA, b0 = ib * TB;
    copy_tile<E>(src + ic * p.ss[c], dst + ic * p.ds[c], a0, std::min(p.dim[a], a0 + TA), b0,
                 std::min(p.dim[b], b0 + TB), p.ss[a], p.ss[b], p.ds[a], p.ds[b]);
  });
}

template <typename E>
void copy_typed(Plan p) {
  const int fd = fast_axis(p.ds, p.dim);
  if (fd < 0) {  // a single element
    std::memcpy(p.dst, p.src, sizeof(E));
    return;
  }
  if (p.ds[fd] < 0) flip(p, fd);
  const int fs = fast_axis(p.ss, p.dim);
  if (fs == fd) return copy_rows<E>(p, fd);
  if (p.ss[fs] < 0) flip(p, fs);
  copy_transposed<E>(p, fs, fd);
}

}  // namespace

void copy_strided_cpu(const void* src, const int64_t src_strides[3], void* dst,
                      const int64_t dst_strides[3], const int64_t shape[3], int itemsize) {
  SAMUNET_CHECK(itemsize == 1 || itemsize == 2 || itemsize == 4 || itemsize == 8,
                "item size must be 1, 2, 4 or 8 bytes, got ", itemsize);
  Plan p{static_cast<const char*>(src), static_cast<char*>(dst), {}, {}, {}, itemsize};
  for (int k = 0; k < 3; ++k) {
    SAMUNET_CHECK(shape[k] >= 0, "negative extent ", shape[k]);
    if (shape[k] == 0) return;
    p.dim[k] = shape[k];
    p.ss[k] = src_strides[k];
    p.ds[k] = dst_strides[k];
  }
  switch (itemsize) {
    case 1: copy_typed<uint8_t>(p); break;
    case 2: copy_typed<uint16_t>(p); break;
    case 4: copy_typed<uint32_t>(p); break;
    default: copy_typed<uint64_t>(p); break;
  }
}

namespace {

// The run [z0, z0 + n) as a (n, H, W) strided array: base pointer and element strides.
const char* run_geometry(const StridedVolume& vol, int axis, int64_t z0, int64_t n, int64_t st[3],
                         int64_t shape[3]) {
  SAMUNET_CHECK(vol.itemsize == 1 || vol.itemsize == 2 || vol.itemsize == 4 || vol.itemsize == 8,
                "volume: item size must be 1, 2, 4 or 8 bytes, got ", vol.itemsize);
  Volume3D v;
  v.data = vol.data;
  for (int k = 0; k < 3; ++k) {
    v.shape[k] = vol.shape[k];
    v.strides[k] = vol.strides[k];
  }
  const SliceRun r = make_slice_run(v, axis, z0, n);
  st[0] = r.s_slice;
  st[1] = r.s_h;
  st[2] = r.s_w;
  shape[0] = r.n;
  shape[1] = r.H;
  shape[2] = r.W;
  return static_cast<const char*>(vol.data) + r.z0 * r.s_slice * vol.itemsize;
}

}  // namespace

void gather_slices_cpu(const StridedVolume& vol, int axis, int64_t z0, int64_t n, void* slab,
                       const int64_t* slab_strides) {
  int64_t st[3], shape[3];
  const char* base = run_geometry(vol, axis, z0, n, st, shape);
  const int64_t contiguous[3] = {shape[1] * shape[2], shape[2], 1};
  copy_strided_cpu(base, st, slab, slab_strides ? slab_strides : contiguous, shape, vol.itemsize);
}

void scatter_slices_cpu(const void* slab, const StridedVolume& vol, int axis, int64_t z0,
                        int64_t n, const int64_t* slab_strides) {
  int64_t st[3], shape[3];
  const char* base = run_geometry(vol, axis, z0, n, st, shape);
  const int64_t contiguous[3] = {shape[1] * shape[2], shape[2], 1};
  copy_strided_cpu(slab, slab_strides ? slab_strides : contiguous, const_cast<char*>(base), st,
                   shape, vol.itemsize);
}

}  // namespace sam_unet
