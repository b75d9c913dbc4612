#include "control/jobs.h"

#include <sys/resource.h>
#include <unistd.h>

#include <fmt/core.h>

#include "core/log.h"

namespace strata::control {

const char* state_name(Job::State s) {
  switch (s) {
    case Job::State::kRunning: return "running";
    case Job::State::kDone: return "done";
    case Job::State::kFailed: return "failed";
    case Job::State::kCancelled: return "cancelled";
  }
  return "?";
}

void Job::progress(uint64_t done, uint64_t total, const nlohmann::json& detail) {
  MutexLock l(mu_);
  done_ = done;
  total_ = total;
  if (!detail.is_null()) detail_ = detail;
}

Job::State Job::state() const {
  MutexLock l(mu_);
  return state_;
}

nlohmann::json Job::detail() const {
  MutexLock l(mu_);
  return detail_;
}

std::chrono::steady_clock::time_point Job::ended_at() const {
  MutexLock l(mu_);
  return ended_;
}

nlohmann::json Job::to_json() const {
  MutexLock l(mu_);
  auto end = state_ == State::kRunning ? std::chrono::steady_clock::now() : ended_;
  double secs = std::chrono::duration<double>(end - started_).count();
  double rate = secs > 0 ? static_cast<double>(done_) / secs : 0;
  nlohmann::json j = {{"id", id_},
                      {"device", device_},
                      {"kind", kind_},
                      {"state", state_name(state_)},
                      {"done_bytes", done_},
                      {"total_bytes", total_},
                      {"seconds", secs},
                      {"rate_bytes_per_second", static_cast<uint64_t>(rate)},
                      {"eta_seconds", nullptr},
                      {"error", error_}};
  if (state_ == State::kRunning && rate > 0 && total_ >= done_)
    j["eta_seconds"] = static_cast<double>(total_ - done_) / rate;
  if (!result_.is_null()) j["result"] = result_;
  // A merge counts chunks, not bytes.
  if (detail_.is_object() && detail_.contains("unit")) j["unit"] = detail_["unit"];
  // A point-in-time copy (flatten): the moment it copies, once taken.
  if (detail_.is_object() && detail_.contains("point_in_time")) j["point_in_time"] = detail_["point_in_time"];
  return j;
}

bool Job::wait(std::chrono::milliseconds timeout) const {
  std::unique_lock<Mutex> l(mu_);
  return cv_.wait_for(l, timeout, [&]() NO_THREAD_SAFETY_ANALYSIS { return state_ != State::kRunning; });
}

void Job::finish(Result<nlohmann::json> r) {
  {
    MutexLock l(mu_);
    ended_ = std::chrono::steady_clock::now();
    if (r) {
      state_ = State::kDone;
      result_ = std::move(*r);
      if (total_ > 0) done_ = total_;
    } else {
      state_ = cancelled() && r.error().code == ECANCELED ? State::kCancelled : State::kFailed;
      error_ = r.error().message;
    }
  }
  cv_.notify_all();
}

Jobs::~Jobs() { stop(); }

void Jobs::prune() {
  auto now = std::chrono::steady_clock::now();
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    if (it->second->state() != Job::State::kRunning && now - it->second->ended_at() > kKeep) {
      auto t = threads_.find(it->first);
      if (t != threads_.end()) {
        t->second.join();  // ended long ago
        threads_.erase(t);
      }
      it = jobs_.erase(it);
    } else {
      ++it;
    }
  }
}

Result<std::shared_ptr<Job>> Jobs::start(const std::string& device, const std::string& kind, Body body) {
  MutexLock l(mu_);
  prune();
  for (const auto& [id, j] : jobs_)
    if (j->device() == device && j->state() == Job::State::kRunning)
      return fail(EBUSY, fmt::format("job {} ({}) is running on device '{}'", id, j->kind(), device));
  auto job = std::make_shared<Job>(next_id_++, device, kind);
  jobs_[job->id()] = job;
  threads_[job->id()] = std::thread([job, body = std::move(body)] {
    // Background work: the job's own thread (its copy loop) yields the CPU to
    // the control thread and the queues (nice 10; this thread only).
    (void)::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10);
    LOG_INFO("job {}: {} of '{}' started", job->id(), job->kind(), job->device());
    auto r = body(*job);
    if (!r && job->cancelled()) r = fail(ECANCELED, r.error().message);
    job->finish(std::move(r));
    LOG_INFO("job {}: {}", job->id(), state_name(job->state()));
  });
  return job;
}

std::shared_ptr<Job> Jobs::find(uint64_t id) const {
  MutexLock l(mu_);
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<Job>> Jobs::list() const {
  MutexLock l(mu_);
  std::vector<std::shared_ptr<Job>> out;
  for (const auto& [id, j] : jobs_) out.push_back(j);
  return out;
}

bool Jobs::running_on(const std::string& device) const {
  MutexLock l(mu_);
  for (const auto& [id, j] : jobs_)
    if (j->device() == device && j->state() == Job::State::kRunning) return true;
  return false;
}

void Jobs::stop() {
  std::map<uint64_t, std::thread> threads;
  {
    MutexLock l(mu_);
    for (auto& [id, j] : jobs_) j->cancel();
    threads = std::move(threads_);
    threads_.clear();
  }
  for (auto& [id, t] : threads) t.join();
}

}  // namespace strata::control
