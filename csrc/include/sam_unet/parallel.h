// When the ops may enter an OpenMP parallel region.
//
// GNU libgomp's thread pool does not survive fork(): a forked child of a process that has run a
// parallel region hangs in its next one (its pool threads do not exist in the child). A
// pthread_atfork child handler marks such children, and every parallel region of the native ops
// carries `if(sam_unet::parallel_ok(...))`, so a marked child runs them on its calling thread.
#pragma once

#include <cstdint>
#include <functional>

namespace sam_unet {

// False in a forked child of a process that had entered a parallel region (and in its
// descendants), and for work below min_work (not worth waking the pool); true otherwise, in
// which case the caller is about to enter a region and the process is marked as having done so.
bool parallel_ok(int64_t work = 1, int64_t min_work = 0);

// True when this process runs the ops serially because it was forked after the parent had run
// them in parallel.
bool serial_after_fork();

// fn(t) for every t in [0, tasks), on the calling thread and on helper threads that are free to
// join. The tasks go to whoever asks next, and the caller waits only for helpers that have
// already taken a task: on a busy machine a helper that is not scheduled in time finds no work
// left, where an OpenMP region would wait for it at its barrier (milliseconds per call). One
// call at a time uses the helpers; a concurrent call (another thread) runs on its own thread.
// Serial below min_work and where parallel_ok() says so. fn must not throw.
void parallel_tasks(int64_t tasks, int64_t work, int64_t min_work,
                    const std::function<void(int64_t)>& fn);

}  // namespace sam_unet
