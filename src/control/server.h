// Control server: a Unix socket (mode 0600) speaking JSON lines. A peer whose
// uid is neither root nor the server's owner is refused (SO_PEERCRED).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>

#include "control/commands.h"
#include "core/result.h"
#include "core/thread_annotations.h"

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
    MutexLock lock(mu_);
    if (!due()) return;
    queue_progress(make());
  }
  bool reply(const std::string& line) EXCLUDES(mu_);
  uint64_t dropped() const EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return dropped_;
  }

 private:
  bool send_pending(bool block) REQUIRES(mu_);  // false: the client is gone
  bool due() REQUIRES(mu_);                     // a progress line may go now
  void queue_progress(const std::string& line) REQUIRES(mu_);

  mutable Mutex mu_;
  const int fd_;
  const std::chrono::milliseconds interval_;
  std::chrono::steady_clock::time_point last_ GUARDED_BY(mu_) = {};
  std::string pending_ GUARDED_BY(mu_);
  std::size_t sent_ GUARDED_BY(mu_) = 0;  // bytes of pending_ already sent
  bool broken_ GUARDED_BY(mu_) = false;
  uint64_t dropped_ GUARDED_BY(mu_) = 0;
};

// The control server. One thread (the loop) polls the listening socket and
// every client, all non-blocking: it reads request lines, answers the
// requests that only read state at once, and writes replies from per-client
// buffers, so that no client delays another (one idle, one that sends half a
// line, one that never reads its replies). Requests that change devices or
// may wait (a suspend, a checkpoint, opening the files of a table) go to one
// worker thread, in order; long operations (merge, flatten, sync) are jobs
// (jobs.h) on threads of their own, which a client may follow: the loop sends
// it their progress and, at the end, the reply. A client that goes away while
// following a job it started cancels it (Ctrl-C of the CLI).
//
// Limits: a request line of kMaxLine bytes at most (longer: an error, then
// the connection is closed); kMaxClients clients at once (more: an error
// line, then closed); a client whose unsent replies pass kMaxOutput bytes is
// dropped. Each client has one request served at a time; lines it sends
// meanwhile wait.
class Server {
 public:
  static constexpr std::size_t kMaxLine = 1 << 20;
  static constexpr int kRequestsPerTurn = 4;
  static constexpr std::size_t kMaxClients = 128;
  static constexpr std::size_t kMaxOutput = 8 << 20;
  explicit Server(Daemon& d);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  Result<> start(const std::string& path);
  // The same on a socket already listening (socket activation); takes the
  // fd and never unlinks its file.
  Result<> start_fd(int fd);
  void stop();
  // Runs fn on the worker, after the requests queued before it (SIGHUP).
  void run_on_worker(std::function<void()> fn) EXCLUDES(mu_);

 private:
  struct Client;
  struct Work {
    uint64_t client = 0;  // 0: not a client's (run_on_worker)
    nlohmann::json request;
    std::function<void()> fn;
  };
  void loop();
  void worker();
  void accept_clients();
  void read_client(Client& c);
  // Serves up to kRequestsPerTurn of c's complete request lines; true if
  // more are left for the next turn of the loop.
  bool next_request(Client& c);
  void handle(Client& c, const std::string& line);
  void send_out(Client& c);
  void queue_line(Client& c, const std::string& line);
  void tick_followers();
  void wake();

  Daemon& d_;
  std::string path_;
  int fd_ = -1;
  int wake_fd_ = -1;  // eventfd: the worker finished something, or stop
  std::atomic<bool> stopping_{false};
  std::thread thread_, worker_;
  std::map<uint64_t, std::unique_ptr<Client>> clients_;  // loop thread only
  uint64_t next_client_ = 1;                             // loop thread only

  Mutex mu_;
  std::condition_variable_any cv_;
  std::deque<Work> work_ GUARDED_BY(mu_);
  std::vector<std::pair<uint64_t, nlohmann::json>> done_ GUARDED_BY(mu_);  // client, reply
};

}  // namespace strata::control
