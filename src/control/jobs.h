// Jobs: the long operations of the control socket (merge, flatten, sync)
// each run on a thread of their own, so that the control thread answers
// status and every other client while they run. A job reports progress
// (done/total bytes), can be cancelled (its body polls cancelled()), and is
// listed for kKeep after it ends.
//
// Threads: Jobs may be called from any thread. A job's body runs on its own
// thread; it touches only its Job through progress()/cancelled().
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/result.h"
#include "core/thread_annotations.h"

namespace strata::control {

class Job {
 public:
  enum class State { kRunning, kDone, kFailed, kCancelled };
  Job(uint64_t id, std::string device, std::string kind) : id_(id), device_(std::move(device)), kind_(std::move(kind)) {}

  uint64_t id() const { return id_; }
  const std::string& device() const { return device_; }
  const std::string& kind() const { return kind_; }
  // For the body: progress so far; whether cancel() was asked.
  void progress(uint64_t done, uint64_t total, const nlohmann::json& detail = nullptr) EXCLUDES(mu_);
  bool cancelled() const { return cancel_.load(std::memory_order_relaxed); }
  const std::atomic<bool>* cancel_flag() const { return &cancel_; }
  void cancel() { cancel_.store(true); }

  State state() const EXCLUDES(mu_);
  // {id, device, kind, state, done_bytes, total_bytes, rate_bytes_per_second, eta_seconds, error, result}
  nlohmann::json to_json() const EXCLUDES(mu_);
  // The last progress detail (the lines a following client is sent).
  nlohmann::json detail() const EXCLUDES(mu_);
  // Blocks until the job ends or `timeout` passes; true: it ended.
  bool wait(std::chrono::milliseconds timeout) const EXCLUDES(mu_);
  std::chrono::steady_clock::time_point ended_at() const EXCLUDES(mu_);

  // For Jobs: the body's outcome.
  void finish(Result<nlohmann::json> r) EXCLUDES(mu_);

 private:
  const uint64_t id_;
  const std::string device_, kind_;
  std::atomic<bool> cancel_{false};
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  mutable Mutex mu_;
  mutable std::condition_variable_any cv_;
  State state_ GUARDED_BY(mu_) = State::kRunning;
  uint64_t done_ GUARDED_BY(mu_) = 0, total_ GUARDED_BY(mu_) = 0;
  nlohmann::json detail_ GUARDED_BY(mu_);
  nlohmann::json result_ GUARDED_BY(mu_);
  std::string error_ GUARDED_BY(mu_);
  std::chrono::steady_clock::time_point ended_ GUARDED_BY(mu_);
};

const char* state_name(Job::State s);

class Jobs {
 public:
  // Finished jobs stay listed this long.
  static constexpr std::chrono::seconds kKeep{600};
  using Body = std::function<Result<nlohmann::json>(Job&)>;
  Jobs() = default;
  ~Jobs();  // cancels what runs and joins every thread
  Jobs(const Jobs&) = delete;
  Jobs& operator=(const Jobs&) = delete;

  // Starts `body` on a thread of its own. Refused (EBUSY) while another job
  // runs on the same device.
  Result<std::shared_ptr<Job>> start(const std::string& device, const std::string& kind, Body body) EXCLUDES(mu_);
  std::shared_ptr<Job> find(uint64_t id) const EXCLUDES(mu_);
  std::vector<std::shared_ptr<Job>> list() const EXCLUDES(mu_);
  bool running_on(const std::string& device) const EXCLUDES(mu_);
  // Cancels every running job and waits for them all.
  void stop() EXCLUDES(mu_);

 private:
  void prune() REQUIRES(mu_);
  mutable Mutex mu_;
  uint64_t next_id_ GUARDED_BY(mu_) = 1;
  std::map<uint64_t, std::shared_ptr<Job>> jobs_ GUARDED_BY(mu_);
  std::map<uint64_t, std::thread> threads_ GUARDED_BY(mu_);
};

}  // namespace strata::control
