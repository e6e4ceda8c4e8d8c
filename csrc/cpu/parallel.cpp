// Fork detection for the OpenMP regions, and the helper threads of parallel_tasks (see
// sam_unet/parallel.h).
#include "sam_unet/parallel.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

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

namespace {

// Helper threads waiting for one job at a time. Created on first use and never destroyed (a
// forked child, which runs serially, must not join threads it does not have).
class Helpers {
 public:
  explicit Helpers(int count) {
    for (int i = 0; i < count; ++i) std::thread([this] { serve(); }).detach();
  }

  // Runs the job on the caller and any helper that joins; false if another call holds them.
  bool run(int64_t tasks, const std::function<void(int64_t)>& fn) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy) return false;
    {
      std::lock_guard<std::mutex> lock(m_);
      fn_ = &fn;
      tasks_ = tasks;
      next_.store(0);
      open_ = true;
      ++generation_;
    }
    wake_.notify_all();
    for (int64_t t; (t = next_.fetch_add(1)) < tasks;) fn(t);
    std::unique_lock<std::mutex> lock(m_);
    open_ = false;  // no helper joins from here; wait for those inside
    done_.wait(lock, [this] { return inside_ == 0; });
    return true;
  }

 private:
  void serve() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      wake_.wait(lock, [&] { return open_ && generation_ != seen; });
      seen = generation_;
      ++inside_;
      const std::function<void(int64_t)>* fn = fn_;
      const int64_t tasks = tasks_;
      lock.unlock();
      for (int64_t t; (t = next_.fetch_add(1)) < tasks;) (*fn)(t);
      lock.lock();
      if (--inside_ == 0) done_.notify_all();
    }
  }

  std::mutex busy_;  // held by the call that owns the helpers
  std::mutex m_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t tasks_ = 0;
  std::atomic<int64_t> next_{0};
  bool open_ = false;
  uint64_t generation_ = 0;
  int inside_ = 0;
};

int helper_count() {
#ifdef _OPENMP
  const int threads = omp_get_max_threads();  // honours OMP_NUM_THREADS
#else
  const int threads = (int)std::thread::hardware_concurrency();
#endif
  return std::max(0, threads - 1);
}

}  // namespace

void parallel_tasks(int64_t tasks, int64_t work, int64_t min_work,
                    const std::function<void(int64_t)>& fn) {
  static const int count = helper_count();
  if (tasks > 1 && count > 0 && parallel_ok(work, min_work)) {
    static Helpers* helpers = new Helpers(count);
    if (helpers->run(tasks, fn)) return;
  }
  for (int64_t t = 0; t < tasks; ++t) fn(t);
}

}  // namespace sam_unet
