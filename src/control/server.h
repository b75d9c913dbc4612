// Control server: a Unix socket (mode 0600) speaking JSON lines, served by one
// thread of its own (it may block; it is not an I/O thread). A peer whose uid
// is neither root nor the server's owner is refused (SO_PEERCRED).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

#include "control/commands.h"
#include "core/result.h"

namespace strata::control {

// Sends one control client its JSON lines. progress() may be called from any
// thread (a merge reports from a queue thread) and never blocks: what the
// socket has no room for waits in memory, whole lines only, up to
// kMaxPending bytes, and later progress lines are dropped, so a client that
// stops reading cannot stall the thread reporting. Progress lines come at
// most one per `interval`. reply() sends what waits and then the reply,
// blocking up to the socket's send timeout.
class LineWriter {
 public:
  static constexpr std::size_t kMaxPending = 64 * 1024;
  LineWriter(int fd, std::chrono::milliseconds interval) : fd_(fd), interval_(interval) {}
  void progress(const std::string& line) {
    progress_lazy([&] { return line; });
  }
  // The same, making the line only when it is due (no JSON built for lines
  // the rate limit drops).
  template <class MakeLine>
  void progress_lazy(MakeLine make) {
    std::lock_guard lock(mu_);
    if (!due()) return;
    queue_progress(make());
  }
  bool reply(const std::string& line);
  uint64_t dropped() const {
    std::lock_guard lock(mu_);
    return dropped_;
  }

 private:
  bool send_pending(bool block);  // under mu_; false: the client is gone
  bool due();                     // under mu_: a progress line may go now
  void queue_progress(const std::string& line);  // under mu_

  mutable std::mutex mu_;
  const int fd_;
  const std::chrono::milliseconds interval_;
  std::chrono::steady_clock::time_point last_{};
  std::string pending_;
  std::size_t sent_ = 0;  // bytes of pending_ already sent
  bool broken_ = false;
  uint64_t dropped_ = 0;
};

class Server {
 public:
  explicit Server(Daemon& d) : d_(d) {}
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  Result<> start(const std::string& path);
  void stop();

 private:
  void loop();
  void serve_client(int fd);

  Daemon& d_;
  std::string path_;
  int fd_ = -1;
  int stop_pipe_[2] = {-1, -1};
  std::thread thread_;
};

}  // namespace strata::control
