// Clang thread-safety annotations (-Wthread-safety), as leveldb's
// port/thread_annotations.h: a lock contract written where the compiler can
// check it. They expand to nothing on other compilers. std::mutex is not
// annotated by libstdc++, so annotated code locks a strata::Mutex.
#pragma once

#include <mutex>

#if defined(__clang__)
#define STRATA_TSA(x) __attribute__((x))
#else
#define STRATA_TSA(x)
#endif

#define CAPABILITY(x) STRATA_TSA(capability(x))
#define SCOPED_CAPABILITY STRATA_TSA(scoped_lockable)
#define GUARDED_BY(x) STRATA_TSA(guarded_by(x))
#define PT_GUARDED_BY(x) STRATA_TSA(pt_guarded_by(x))
#define REQUIRES(...) STRATA_TSA(requires_capability(__VA_ARGS__))
#define EXCLUDES(...) STRATA_TSA(locks_excluded(__VA_ARGS__))
#define ACQUIRE(...) STRATA_TSA(acquire_capability(__VA_ARGS__))
#define RELEASE(...) STRATA_TSA(release_capability(__VA_ARGS__))
#define NO_THREAD_SAFETY_ANALYSIS STRATA_TSA(no_thread_safety_analysis)

namespace strata {

class CAPABILITY("mutex") Mutex {
 public:
  void lock() ACQUIRE() { mu_.lock(); }
  void unlock() RELEASE() { mu_.unlock(); }
  std::mutex& native() { return mu_; }

 private:
  std::mutex mu_;
};

class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~MutexLock() RELEASE() { mu_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mu_;
};

}  // namespace strata
