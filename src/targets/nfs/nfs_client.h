// NfsClient: one NFS connection, driven by one queue's io_uring. libnfs
// makes the connection (reserved port, NULL ping); the calls themselves
// (READ, WRITE, COMMIT; nfs_wire.h) are encoded here and go out by io_uring
// sendmsg, a WRITE's data straight from the caller's buffer, and replies
// come in by io_uring recv; strata's loop keeps the time.
//
// Each queue gets its own client (its own TCP connection to the server), so
// the data path takes no locks and the server sees several connections, as
// with nconnect. A call is an awaitable: it carries its own deadline; if the
// connection breaks, calls in flight go back to the waiting list and are sent
// again on the next connection; a call that cannot finish by its deadline
// completes with ETIMEDOUT (the target reports EIO). A connection that stops
// answering (calls outstanding, nothing received for `stall`) is dropped and
// made again. Nothing is cached. A call given up on (deadline passed, or
// its connection dropped) may still be executed by the server if its bytes
// had reached the socket: as with any NFS client, its range is undefined,
// which is what the caller's EIO says.
//
// Threads: everything runs on the queue thread that created the client.
#pragma once

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/result.h"
#include "core/task.h"
#include "targets/nfs/nfs_wire.h"

struct rpc_context;

namespace strata {

class Queue;

using NfsClock = std::chrono::steady_clock;

// Where and as whom to connect: filled once at table load.
struct NfsEndpoint {
  std::string server;  // host name or address
  int port = 2049;     // the NFS port rpcbind gave at load
  int uid = 0, gid = 0;
  int version = 3;          // NFS version: 3, or 4 (4.0, anonymous stateid)
  std::vector<uint8_t> fh;  // the file's handle (NFSv3 or NFSv4)
  std::chrono::milliseconds stall{10000};
};

// Counters a target reports (queue-local; summed by the target).
// Counters (written by the queue thread, read by status from any thread).
struct NfsClientStats {
  std::atomic<uint64_t> connects{0};  // successful connections (the first included)
  std::atomic<uint64_t> connect_failures{0};
  std::atomic<uint64_t> disconnects{0};
  std::atomic<uint64_t> resent{0};    // calls sent again after a connection broke
  std::atomic<uint64_t> read_calls{0}, write_calls{0};  // READ / WRITE calls sent
  std::atomic<uint64_t> partial_sends{0};  // sendmsg that sent less than asked (socket full)
  std::atomic<uint64_t> timeouts{0};  // calls that passed their deadline
  std::atomic<uint64_t> in_flight{0};  // calls sent, no reply yet
  std::atomic<uint64_t> queued{0};     // calls waiting for a connection
};

class NfsClient {
 public:
  NfsClient(Queue& q, const NfsEndpoint& ep);
  ~NfsClient();
  NfsClient(const NfsClient&) = delete;
  NfsClient& operator=(const NfsClient&) = delete;

  using Kind = nfswire::Proc;  // kRead, kWrite, kCommit
  // One call: arguments, then the reply. Lives in the caller's frame.
  struct Call {
    Kind kind = Kind::kRead;
    uint64_t offset = 0;
    uint32_t count = 0;
    int stable = 0;                    // WRITE: UNSTABLE=0, DATA_SYNC=1, FILE_SYNC=2
    const std::byte* wdata = nullptr;  // WRITE data
    std::byte* rdata = nullptr;        // READ destination (count bytes)
    NfsClock::time_point deadline;
    // Reply
    Error error;
    bool failed = false;
    uint32_t done_count = 0;  // READ/WRITE: bytes transferred
    bool eof = false;         // READ
    int committed = 0;        // WRITE: how stable the server made it
    uint64_t verf = 0;        // WRITE/COMMIT: the server's write verifier
    // Bookkeeping
    std::coroutine_handle<> handle;
    uint32_t xid = 0;            // on the current connection, while in flight
    struct OutRecord* out = nullptr;  // its bytes, until all are on the socket
    Call* prev = nullptr;
    Call* next = nullptr;
    bool sent_once = false;
  };

  // co_await client.run(call): sends it (now, or once connected) and
  // resumes when it has a reply, failed for good, or passed its deadline.
  struct Awaiter {
    NfsClient& c;
    Call& call;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
      call.handle = h;
      c.submit(&call);
    }
    void await_resume() const noexcept {}
  };
  Awaiter run(Call& call) { return Awaiter{*this, call}; }

  const NfsClientStats& stats() const { return stats_; }
  bool connected() const { return up_.load(std::memory_order_relaxed); }

  struct Conn;  // one TCP connection (defined in nfs_client_internal.h)

 private:
  struct List {
    Call* head = nullptr;
    Call* tail = nullptr;
    void push_back(Call* c);
    void push_front(Call* c);
    void remove(Call* c);
  };
  static void on_connect(rpc_context* rpc, int status, void* data, void* priv);
  static void on_poll(struct Completion* c);

  void submit(Call* c);
  bool send(Call* c);  // queues the call's bytes; false: no room (it waits)
  void send_waiting();  // sends waiting calls in order until one cannot be sent
  void withdraw(Call* c);  // takes an in-flight call off the connection
  void reply(Call* c, std::span<const std::byte> body);
  void decode_into(Call* c, int nfsstat, const nfswire::Reply& r);
  void connect();
  void teardown(std::string_view why);
  void service(Conn* conn, int revents);
  void on_recv(Conn* conn, int res);
  void on_send(Conn* conn, int res);
  void after_service();
  void schedule_flush();
  Task<void> flush_later();
  void flush_out();
  void arm_polls();
  void finish(Call* c);
  void resume_ready();
  void ensure_ticker();
  void arm_tick();
  void tick();  // every kTick while calls are outstanding or connecting
  void expire(NfsClock::time_point now);

  Queue& q_;
  NfsEndpoint ep_;
  Conn* conn_ = nullptr;        // current connection (connecting or up)
  std::atomic<bool> up_{false};  // connected
  bool broken_ = false;         // set by callbacks: tear down after rpc_service
  std::string broken_why_;
  List waiting_, inflight_;
  List retry_;  // answered JUKEBOX: sent again at the next tick
  size_t n_waiting_ = 0, n_inflight_ = 0, n_retry_ = 0;
  void publish() {
    stats_.in_flight.store(n_inflight_, std::memory_order_relaxed);
    stats_.queued.store(n_waiting_ + n_retry_, std::memory_order_relaxed);
  }
  std::vector<Call*> ready_;
  bool flush_scheduled_ = false;
  bool ticking_ = false;
  struct Tick* tick_ = nullptr;  // the ticker's timer (parked if armed when the client goes)
  NfsClock::time_point next_connect_{};
  std::chrono::milliseconds backoff_{0};
  NfsClock::time_point last_rx_{};
  std::string last_error_;
  NfsClientStats stats_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// Errno for an nfsstat3 value.
int nfs3_errno(int nfsstat);

}  // namespace strata
