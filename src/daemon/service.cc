#include "daemon/service.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>

#include <fmt/core.h>

#include "core/log.h"

namespace strata::daemon {

Result<ActivatedSockets> take_listen_fds() {
  ActivatedSockets out;
  char** names = nullptr;
  // unset_environment=1: the variables are not inherited by anything started
  // later (a job's helper), and a second call finds nothing.
  int n = sd_listen_fds_with_names(1, &names);
  if (n < 0) return posix_error("LISTEN_FDS", -n);
  Result<ActivatedSockets> r = out;
  for (int i = 0; i < n; ++i) {
    int fd = SD_LISTEN_FDS_START + i;
    std::string name = names && names[i] ? names[i] : "";
    if (r) {
      if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
        r = fail(EINVAL, fmt::format("passed socket {} ('{}'): not a listening stream socket", fd, name));
      } else if (name == "control") {
        if (r->control >= 0)
          r = fail(EINVAL, "two passed sockets are named 'control'");
        else
          r->control = fd;
      } else if (name.empty() || name == "nbd" || name == "unknown" || name == "stored") {
        // "unknown": systemd's name for a socket given no FileDescriptorName.
        r->nbd.push_back(fd);
      } else {
        r = fail(EINVAL, fmt::format("passed socket {} is named '{}': expected 'nbd' or 'control'", fd, name));
      }
    }
    if (names) std::free(names[i]);
  }
  std::free(names);
  if (!r) {
    for (int i = 0; i < n; ++i) ::close(SD_LISTEN_FDS_START + i);
    return r;
  }
  for (int fd : r->nbd) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  if (r->control >= 0) ::fcntl(r->control, F_SETFD, FD_CLOEXEC);
  return r;
}

void notify(std::string_view state) {
  std::string s(state);
  int r = sd_notify(0, s.c_str());
  if (r < 0) LOG_DEBUG("sd_notify {}: {}", s, std::strerror(-r));
}

std::string reloading_state() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t us = static_cast<uint64_t>(ts.tv_sec) * 1000000 + static_cast<uint64_t>(ts.tv_nsec) / 1000;
  return fmt::format("RELOADING=1\nMONOTONIC_USEC={}", us);
}

Watchdog::Watchdog(Alive alive, std::function<std::string()> status)
    : alive_(std::move(alive)), status_(std::move(status)) {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) period_us_ = usec / 2;
  thread_ = std::thread([this] { run(); });
}

Watchdog::~Watchdog() { stop(); }

void Watchdog::stop() {
  {
    MutexLock l(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::run() {
  using namespace std::chrono;
  constexpr auto kStatusEvery = seconds(5);
  const auto tick = period_us_ ? std::min<microseconds>(microseconds(period_us_), kStatusEvery)
                               : duration_cast<microseconds>(kStatusEvery);
  auto next_status = steady_clock::now();
  std::string last_status;
  for (;;) {
    const auto start = steady_clock::now();
    if (period_us_) {
      // A queue stuck in a blocking call misses its closure: no ping, and the
      // service manager restarts us after WatchdogSec.
      if (alive_(microseconds(period_us_ / 2)))
        notify("WATCHDOG=1");
      else
        LOG_WARN("watchdog: an I/O queue did not answer within {} ms; not pinging", period_us_ / 1000);
    }
    if (steady_clock::now() >= next_status) {
      std::string s = status_();
      if (s != last_status) notify("STATUS=" + s);
      last_status = s;
      next_status = steady_clock::now() + kStatusEvery;
    }
    MutexLock l(mu_);
    if (cv_.wait_until(mu_, start + tick, [this]() NO_THREAD_SAFETY_ANALYSIS { return stopping_; })) return;
  }
}

}  // namespace strata::daemon
