// Shared by the kernels of this folder: a thread pool (also handed to oneDNN) and one lock, because MindSpore
// may launch two of these kernels at once from different threads and they share the pool and scratch memory.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <sched.h>
#include <thread>
#include <vector>

extern "C" {
typedef int dnnl_status;
typedef void *dnnl_handle;
dnnl_status dnnl_engine_create(dnnl_handle *engine, int kind, size_t index);
dnnl_status dnnl_threadpool_interop_stream_create(dnnl_handle *stream, dnnl_handle engine, void *threadpool);
}

namespace kitseg {

// oneDNN's threadpool interface (dnnl::threadpool_interop::threadpool_iface): the library calls these
// virtual functions in this order, so the class layout must match it.
class ThreadPool {
 public:
  explicit ThreadPool(int threads) : threads_(threads < 1 ? 1 : threads) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  }
  virtual int get_num_threads() const { return threads_; }
  virtual bool get_in_parallel() const { return inside_; }
  virtual void parallel_for(int n, const std::function<void(int, int)> &fn) {
    if (n <= 1 || threads_ == 1 || inside_) {
      for (int i = 0; i < n; ++i) fn(i, n);
      return;
    }
    {
      std::unique_lock<std::mutex> lock(mutex_);
      job_ = &fn;
      jobs_ = n;
      next_.store(0);
      busy_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    RunJobs(fn, n);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return busy_ == 0; });
    job_ = nullptr;
  }
  virtual uint64_t get_flags() const { return 0; }  // synchronous
  virtual void wait() {}
  virtual ~ThreadPool() {}  // never destroyed: the workers live as long as the process

 private:
  void RunJobs(const std::function<void(int, int)> &fn, int n) {
    inside_ = true;
    for (int i = next_.fetch_add(1); i < n; i = next_.fetch_add(1)) fn(i, n);
    inside_ = false;
  }
  void WorkerLoop() {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int, int)> *fn;
      int n;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        fn = job_;
        n = jobs_;
      }
      RunJobs(*fn, n);
      std::unique_lock<std::mutex> lock(mutex_);
      if (--busy_ == 0) done_.notify_one();
    }
  }
  int threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int, int)> *job_ = nullptr;
  int jobs_ = 0, busy_ = 0;
  uint64_t generation_ = 0;
  std::atomic<int> next_{0};
  static inline thread_local bool inside_ = false;
};

inline int ThreadCount() {
  const char *env = std::getenv("KITSEG_CPU_THREADS");
  if (env && std::atoi(env) > 0) return std::atoi(env);
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  return 1;
}

struct Runtime {
  dnnl_handle engine = nullptr, stream = nullptr;
  ThreadPool *pool = nullptr;
  std::mutex mutex;  // one kernel at a time
  bool ok = false;
};

// The pool and oneDNN's engine and stream on it, created on first use and kept for the process lifetime.
inline Runtime &GetRuntime() {
  static Runtime runtime;
  static std::once_flag once;
  std::call_once(once, [] {
    runtime.pool = new ThreadPool(ThreadCount());
    runtime.ok = dnnl_engine_create(&runtime.engine, 1 /* CPU */, 0) == 0 &&
                 dnnl_threadpool_interop_stream_create(&runtime.stream, runtime.engine, runtime.pool) == 0;
  });
  return runtime;
}
}  // namespace kitseg
