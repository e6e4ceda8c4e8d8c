// The emulated CUDA runtime behind cuda_runtime.h: launches (plain calls or fibers per block,
// blocks over a few OS threads), host "device" memory, events and streams, and a log of them.
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cuda_runtime.h"

namespace emu {

// --- the log and the sticky error ---------------------------------------------------------------
std::mutex g_mutex;
std::vector<std::string> g_log;
std::map<void*, size_t> g_allocs;
std::string g_error_text;
thread_local cudaError_t g_last_error = cudaSuccess;
int g_next_event = 1;

std::string stream_name(cudaStream_t s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "s%llx", (unsigned long long)(uintptr_t)s);
  return buf;
}

void log(const std::string& entry) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_log.push_back(entry);
}

cudaError_t fail(cudaError_t err, const std::string& text) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_error_text.empty()) g_error_text = text;
  g_last_error = err;
  return err;
}

// --- fibers -------------------------------------------------------------------------------------
constexpr size_t kStackBytes = 128 << 10;
enum State { kRunnable, kWaiting, kDone };

struct Fiber {
  ucontext_t ctx;
  State state;
  uint3 tid;
};

struct BlockRun {
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  std::vector<unsigned long long> slots;  // shuffle exchange, one per thread
  ucontext_t sched;
  int current = -1;
  bool barrier_seen = false;
  std::string error;
};

thread_local BlockRun* g_run = nullptr;  // the block running on fibers on this OS thread
thread_local std::vector<std::unique_ptr<char[]>> g_stacks;

void fiber_main() {
  BlockRun* r = g_run;
  const int t = r->current;
  try {
    (*r->body)();
  } catch (const std::exception& e) {
    if (r->error.empty()) r->error = e.what();
  } catch (...) {
    if (r->error.empty()) r->error = "unknown exception in a kernel";
  }
  r->fibers[t].state = kDone;  // uc_link returns to the scheduler
}

uint3 thread_index(int t, const dim3& b) {
  return uint3{(unsigned)(t % b.x), (unsigned)((t / b.x) % b.y), (unsigned)(t / (b.x * b.y))};
}

// Run one block's threads as fibers; returns whether any of them reached a barrier.
bool run_block_fibers(const std::function<void()>& body, const dim3& b, std::string* error) {
  const int n = (int)(b.x * b.y * b.z);
  BlockRun r;
  r.body = &body;
  r.fibers.resize(n);
  r.slots.assign(n, 0);
  while ((int)g_stacks.size() < n) g_stacks.emplace_back(new char[kStackBytes]);
  for (int t = 0; t < n; ++t) {
    Fiber& f = r.fibers[t];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = g_stacks[t].get();
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &r.sched;
    makecontext(&f.ctx, fiber_main, 0);
    f.state = kRunnable;
    f.tid = thread_index(t, b);
  }
  BlockRun* outer = g_run;
  g_run = &r;
  for (;;) {
    int done = 0;
    for (int t = 0; t < n && r.error.empty(); ++t) {
      if (r.fibers[t].state != kRunnable) continue;
      r.current = t;
      threadIdx = r.fibers[t].tid;
      swapcontext(&r.sched, &r.fibers[t].ctx);
    }
    if (!r.error.empty()) break;
    for (int t = 0; t < n; ++t) done += r.fibers[t].state == kDone;
    if (done == n) break;
    for (int t = 0; t < n; ++t)  // every live thread is at the barrier: release them
      if (r.fibers[t].state == kWaiting) r.fibers[t].state = kRunnable;
  }
  g_run = outer;
  if (!r.error.empty()) *error = r.error;
  return r.barrier_seen;
}

void barrier() {
  BlockRun* r = g_run;
  if (!r)
    throw std::runtime_error(
        "__syncthreads/shuffle in a kernel whose first block reached none (conditional barrier)");
  const int t = r->current;
  r->barrier_seen = true;
  r->fibers[t].state = kWaiting;
  swapcontext(&r->fibers[t].ctx, &r->sched);
}

unsigned long long shuffle(unsigned long long value, int delta, int width, bool down) {
  BlockRun* r = g_run;
  if (!r) barrier();  // throws
  const int t = r->current;
  r->slots[t] = value;
  barrier();
  const int lane = t % 32, seg = lane % width;
  int src = t;
  if (down && seg + delta < width) src = t + delta;
  if (!down && seg - delta >= 0) src = t - delta;
  if (src >= (int)r->slots.size()) src = t;  // a partial last warp
  const unsigned long long out = r->slots[src];
  barrier();
  return out;
}

// --- launches -----------------------------------------------------------------------------------
int worker_threads() {
  if (const char* env = std::getenv("SAMUNET_EMU_THREADS")) return std::max(1, std::atoi(env));
  return (int)std::min(4u, std::max(1u, std::thread::hardware_concurrency()));
}

void run_grid(const LaunchConfig& c, const std::function<void()>& body) {
  const dim3 g = c.grid, b = c.block;
  {
    char buf[160];
    std::snprintf(buf, sizeof buf, "launch grid=(%u,%u,%u) block=(%u,%u,%u) %s", g.x, g.y, g.z,
                  b.x, b.y, b.z, stream_name(c.stream).c_str());
    log(buf);
  }
  const unsigned long long threads = (unsigned long long)b.x * b.y * b.z;
  if (g.x == 0 || g.y == 0 || g.z == 0 || threads == 0 || threads > 1024 || b.z > 64 ||
      g.x > 2147483647u || g.y > 65535 || g.z > 65535 || c.smem > 48 * 1024) {
    fail(cudaErrorInvalidConfiguration, "invalid launch configuration");
    return;
  }
  const long long blocks = (long long)g.x * g.y * g.z;
  std::atomic<long long> next{0};
  std::atomic<int> mode{0};  // 0: first block not yet run, 1: plain calls, 2: fibers
  std::mutex error_mutex;
  std::string error;
  auto work = [&](bool first) {
    gridDim = g;
    blockDim = b;
    for (;;) {
      const long long k = first ? 0 : next.fetch_add(1);
      if (k >= blocks) return;
      blockIdx = uint3{(unsigned)(k % g.x), (unsigned)((k / g.x) % g.y),
                       (unsigned)(k / ((long long)g.x * g.y))};
      std::string err;
      if (first || mode.load() == 2) {
        const bool barriers = run_block_fibers(body, b, &err);
        if (first) mode = barriers ? 2 : 1;
      } else {
        try {
          for (int t = 0; t < (int)threads; ++t) {
            threadIdx = thread_index(t, b);
            body();
          }
        } catch (const std::exception& e) {
          err = e.what();
        }
      }
      if (!err.empty()) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (error.empty()) error = err;
        next = blocks;
      }
      if (first) return;
    }
  };
  work(true);  // block 0 on fibers: learns whether the kernel uses barriers
  next = 1;
  const int workers = blocks > 64 ? std::min<long long>(worker_threads(), blocks - 1) : 1;
  if (workers <= 1) {
    work(false);
  } else {
    std::vector<std::thread> pool;
    for (int w = 0; w < workers; ++w) pool.emplace_back(work, false);
    for (auto& t : pool) t.join();
  }
  if (!error.empty()) fail(cudaErrorLaunchFailure, "kernel failed: " + error);
}

}  // namespace emu

void __syncthreads() { emu::barrier(); }

// --- runtime API --------------------------------------------------------------------------------
using emu::fail;
using emu::log;
using emu::stream_name;

cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::g_last_error;
  emu::g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return emu::g_last_error; }
const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorSystemDriverMismatch: return "cudaErrorSystemDriverMismatch";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t err) { return cudaGetErrorName(err); }

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  void* p = std::aligned_alloc(256, std::max<size_t>(256, (bytes + 255) & ~size_t(255)));
  if (!p) return fail(cudaErrorMemoryAllocation, "cudaMalloc failed");
  std::memset(p, 0xAB, bytes);  // fresh device memory holds garbage
  {
    std::lock_guard<std::mutex> lock(emu::g_mutex);
    emu::g_allocs[p] = bytes;
  }
  log("malloc " + std::to_string(bytes));
  *ptr = p;
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  if (!ptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(emu::g_mutex);
    if (!emu::g_allocs.erase(ptr)) {
      emu::g_last_error = cudaErrorInvalidValue;
      return cudaErrorInvalidValue;
    }
  }
  std::free(ptr);
  log("free");
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t stream) {
  log("mallocAsync " + stream_name(stream));
  return cudaMalloc(ptr, bytes);
}
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream) {
  log("freeAsync " + stream_name(stream));
  return cudaFree(ptr);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  std::memmove(dst, src, bytes);
  log("memcpyAsync kind=" + std::to_string((int)kind) + " " + std::to_string(bytes) + " " +
      stream_name(stream));
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  std::memmove(dst, src, bytes);
  log("memcpy kind=" + std::to_string((int)kind) + " " + std::to_string(bytes));
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream) {
  std::memset(dst, value, bytes);
  log("memsetAsync " + std::to_string(bytes) + " " + stream_name(stream));
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  log("streamSynchronize " + stream_name(stream));
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  log("deviceSynchronize");
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  int id;
  {
    std::lock_guard<std::mutex> lock(emu::g_mutex);
    id = emu::g_next_event++;
  }
  *event = reinterpret_cast<cudaEvent_t>((uintptr_t)id);
  log("eventCreate e" + std::to_string(id) + " flags=" + std::to_string(flags));
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, 0); }
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  log("eventRecord e" + std::to_string((uintptr_t)event) + " " + stream_name(stream));
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  log("streamWaitEvent " + stream_name(stream) + " e" + std::to_string((uintptr_t)event));
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  log("eventSynchronize e" + std::to_string((uintptr_t)event));
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  log("eventDestroy e" + std::to_string((uintptr_t)event));
  return cudaSuccess;
}
namespace emu {
// What the emulated driver reports (emu_set_driver): its CUDA version (0: no driver), the error
// of cudaGetDeviceCount and the device count.
int g_driver_version = CUDART_VERSION;
cudaError_t g_count_error = cudaSuccess;
int g_device_count = 1;
}  // namespace emu

cudaError_t cudaGetDeviceCount(int* count) {
  if (emu::g_count_error != cudaSuccess) {
    *count = 0;
    emu::g_last_error = emu::g_count_error;
    return emu::g_count_error;
  }
  *count = emu::g_device_count;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : fail(cudaErrorInvalidValue, "no such device");
}
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* ptr) {
  attr->type = cudaMemoryTypeDevice;
  attr->device = 0;
  attr->devicePointer = const_cast<void*>(ptr);
  attr->hostPointer = nullptr;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* version) {
  *version = emu::g_driver_version;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = CUDART_VERSION;
  return cudaSuccess;
}

// --- what the tests read ------------------------------------------------------------------------
extern "C" {

// The log (entries separated by newlines) into buf, then cleared; len 0: only its size.
size_t emu_take_log(char* buf, size_t len) {
  std::lock_guard<std::mutex> lock(emu::g_mutex);
  std::string all;
  for (const auto& e : emu::g_log) all += e + "\n";
  if (len == 0) return all.size();
  emu::g_log.clear();
  const size_t n = std::min(all.size(), len ? len - 1 : 0);
  if (len) {
    std::memcpy(buf, all.data(), n);
    buf[n] = 0;
  }
  return all.size();
}

void emu_set_driver(int version, int count_error, int count) {
  emu::g_driver_version = version;
  emu::g_count_error = (cudaError_t)count_error;
  emu::g_device_count = count;
}

int emu_live_allocations() {
  std::lock_guard<std::mutex> lock(emu::g_mutex);
  return (int)emu::g_allocs.size();
}

// The first kernel/launch error text since the last call, then cleared (empty: none).
size_t emu_take_error(char* buf, size_t len) {
  std::lock_guard<std::mutex> lock(emu::g_mutex);
  const std::string e = emu::g_error_text;
  emu::g_error_text.clear();
  const size_t n = std::min(e.size(), len ? len - 1 : 0);
  if (len) {
    std::memcpy(buf, e.data(), n);
    buf[n] = 0;
  }
  return e.size();
}

}  // extern "C"
