// Service manager integration for `strata serve` (docs/service.md): sockets
// passed by socket activation (LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES, through
// Debian's libsystemd) and readiness, reload, stop, status and watchdog
// messages (sd_notify). Without a service manager (no LISTEN_FDS, no
// NOTIFY_SOCKET) every call here does nothing.
//
// Threads: take_listen_fds() once, on the serve thread, before any other
// thread starts (it unsets the environment variables). notify() from any
// thread. Watchdog is owned by the serve thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/result.h"

#include "core/thread_annotations.h"

namespace strata::daemon {

struct ActivatedSockets {
  std::vector<int> nbd;  // named "nbd", or unnamed: NBD listeners (TCP or Unix)
  int control = -1;      // named "control": the control socket
  bool any() const { return !nbd.empty() || control >= 0; }
};

// The sockets the service manager passed to this process (none when
// LISTEN_PID is not ours). A socket with another name, or one that is not a
// listening stream socket, is an error: better than serving it wrongly.
Result<ActivatedSockets> take_listen_fds();

// Sends `state` ("READY=1", "STATUS=...") to $NOTIFY_SOCKET when it is set.
void notify(std::string_view state);

// RELOADING=1 with the MONOTONIC_USEC systemd wants beside it.
std::string reloading_state();

// Sends WATCHDOG=1 at half of $WATCHDOG_USEC (when set for this pid) while
// `alive()` says the server still works (each I/O queue ran a closure within
// the time it is given), and STATUS= from `status()` every few seconds
// either way (when it changed).
class Watchdog {
 public:
  using Alive = std::function<bool(std::chrono::microseconds timeout)>;
  Watchdog(Alive alive, std::function<std::string()> status);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  void stop();

 private:
  void run();
  Alive alive_;
  std::function<std::string()> status_;
  uint64_t period_us_ = 0;  // 0: no watchdog, only STATUS
  Mutex mu_;
  std::condition_variable_any cv_;
  bool stopping_ GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace strata::daemon
