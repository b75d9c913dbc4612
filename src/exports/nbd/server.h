// NbdServer: serves named exports over the NBD protocol on Unix and TCP
// sockets. Listening sockets are accepted on the first queue; each new
// connection is handed to the next queue in turn and lives there for its whole
// life, so its requests and its target I/O share one ring and one thread.
//
// Thread-safety: find_export/exports/connections_to/stats may be called from
// any thread (the control thread). start() and shutdown() are called by the
// thread that owns the server.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/device_registry.h"
#include "core/queue.h"
#include "core/target.h"
#include "core/thread_annotations.h"
#include "exports/export.h"
#include "exports/nbd/budget.h"
#include "exports/nbd/tls.h"

namespace strata::nbd {

// An NBD export is a device of the server's registry (core/device_registry.h),
// found by its name; the Server is one strata::Export (exports/export.h).

struct ServerOptions {
  // Clients in transmission (connection slots).
  std::size_t max_connections = 256;
  // Clients still in the handshake (handshake slots, apart from the
  // connection slots): when all are taken, a new connection evicts the
  // oldest handshake that has sent nothing yet, else the oldest.
  std::size_t max_handshakes = 128;
  std::chrono::milliseconds handshake_timeout{10000};
  // A client must send its first bytes within this (and the whole
  // handshake within handshake_timeout).
  std::chrono::milliseconds first_bytes_timeout{2000};
  // Request and reply buffers of all connections (--max-memory); 0: the
  // default, MemoryBudget::default_total().
  uint64_t max_memory = 0;
  std::shared_ptr<const TlsConfig> tls;  // null: --tls=off
};

class Connection;

class Server final : public strata::Export {
 public:
  // Clients are served the devices of `devices` (which outlives the server).
  Server(std::vector<Queue*> queues, const DeviceRegistry& devices, ServerOptions opts);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Connections transmitting on an export whose target is `t`.
  std::size_t connections_to(const Target* t) const;
  // Makes those connections stop after the requests they have read (their
  // replies are sent), as shutdown() does for all.
  void stop_connections_to(const Target* t);
  // The id the next connection will get, and the lowest id of a connection
  // still open (the next id when none is).
  uint64_t next_connection_id() const { return next_id_.load(); }
  uint64_t oldest_connection_id() const;
  std::shared_ptr<const Device> find_export(std::string_view name) const;
  std::vector<std::shared_ptr<const Device>> exports() const;

  // Binds and listens; call before start().
  Result<> listen_unix(const std::string& path);
  Result<> listen_tcp(const std::string& host, const std::string& port);
  // Serves a socket already listening (socket activation); takes the fd.
  Result<> listen_fd(int fd);
  // Human-readable addresses, e.g. "nbd+unix:///?socket=/x", "nbd://127.0.0.1:10809".
  const std::vector<std::string>& uris() const { return uris_; }

  void start();
  // Stops accepting, lets every connection finish the requests it has read,
  // closes them, and returns when none is left.
  void shutdown();

  // strata::Export
  std::string_view kind() const override { return "nbd"; }
  std::vector<std::string> describe() const override { return uris_; }
  Users users_of(const Target* t) const override;
  void end_users_of(const Target* t) override { stop_connections_to(t); }
  bool stop() override {
    shutdown();
    return true;
  }

  struct Stats {
    uint64_t active = 0;
    uint64_t total = 0;
    uint64_t refused = 0;
    uint64_t evicted = 0;  // handshakes closed to make room for new ones
    uint64_t handshake_timeouts = 0;  // handshakes not finished in time (first bytes or whole)
  };
  Stats stats() const;

  // Used by connections.
  const ServerOptions& options() const { return opts_; }
  MemoryBudget& budget() { return budget_; }
  void connection_closed(Connection* c);
  void connection_opened(Connection* c);
  void handshake_timed_out() { handshake_timeouts_.fetch_add(1, std::memory_order_relaxed); }
  // The handshake of `c` is over: it leaves its handshake slot and takes a
  // connection slot; false when none is free (the caller closes).
  bool handshake_done(Connection* c);

 private:
  struct Listener {
    int fd = -1;
    std::string unlink_path;
    Completion* pending = nullptr;  // the accept in flight (queue 0 only)
  };
  Task<void> accept_loop(Listener* l);
  // When every handshake slot is taken, evicts one old enough; else returns
  // how long to wait before one is. Called on queue 0, before accepting.
  std::chrono::nanoseconds make_handshake_room();
  void take_handshake_slot(Connection* c);

  std::vector<Queue*> queues_;
  const DeviceRegistry& devices_;
  ServerOptions opts_;
  MemoryBudget budget_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<std::string> uris_;
  std::atomic<bool> stopping_{false};
  std::atomic<std::size_t> next_queue_{0};
  std::atomic<uint64_t> next_id_{1};
  std::atomic<uint64_t> total_{0}, refused_{0};

  mutable Mutex mu_;
  std::vector<Connection*> conns_ GUARDED_BY(mu_);
  std::vector<Connection*> handshakes_ GUARDED_BY(mu_);  // in accept order
  std::size_t transmitting_ GUARDED_BY(mu_) = 0;
  std::atomic<uint64_t> evicted_{0};
  std::atomic<uint64_t> handshake_timeouts_{0};
  std::atomic<uint64_t> active_{0};
  std::atomic<int> accept_loops_{0};
};

}  // namespace strata::nbd
