// Fork detection for the OpenMP regions (see sam_unet/parallel.h).
#include "sam_unet/parallel.h"

#include <pthread.h>

#include <atomic>

namespace sam_unet {
namespace {

std::atomic<bool> g_entered{false};  // this process has entered a parallel region
std::atomic<bool> g_serial{false};   // forked after a parallel region: never enter another

void on_fork_child() {
  if (g_entered.load(std::memory_order_relaxed)) g_serial.store(true, std::memory_order_relaxed);
}

struct AtforkRegistration {
  AtforkRegistration() { pthread_atfork(nullptr, nullptr, &on_fork_child); }
};
const AtforkRegistration g_registration;

}  // namespace

bool parallel_ok(int64_t work, int64_t min_work) {
  if (work < min_work || g_serial.load(std::memory_order_relaxed)) return false;
  g_entered.store(true, std::memory_order_relaxed);
  return true;
}

bool serial_after_fork() { return g_serial.load(std::memory_order_relaxed); }

}  // namespace sam_unet
