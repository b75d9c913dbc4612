// Connection: one NBD client, from handshake to close, on one queue thread.
//
// The reader coroutine parses requests from a receive buffer (one recv can
// carry many 28-byte headers) and starts one request coroutine per command;
// commands run concurrently and complete in any order. Replies go through one
// send queue per connection: whichever request finds the socket idle sends
// every reply queued so far in one sendmsg, so a burst of completions costs one
// syscall. The object frees itself when the reader has stopped, no request is
// in flight and the send queue is empty.
//
// Its member functions are defined by job: connection.cc (life cycle, memory
// budget), handshake.cc (newstyle negotiation and options), transmission.cc
// (request parsing, checks, dispatch to the target) and reply_queue.cc (reply
// encoding, the send queue, splice). The socket, its receive buffer, TLS and
// the handshake deadline are the Stream's (stream.h). The small functions the
// request path calls from several of those files are inline, below the class.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <coroutine>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/buffer.h"
#include "core/queue.h"
#include "exports/nbd/protocol.h"
#include "exports/nbd/reply_queue.h"
#include "exports/nbd/server.h"
#include "exports/nbd/stream.h"

namespace strata::nbd {

class Connection {
 public:
  Connection(Server& server, Queue& q, int fd, uint64_t id, std::string peer);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Starts the connection's coroutine; it deletes the object at the end.
  void start();
  // Thread-safe: makes the reader stop after the requests it has read.
  void stop_reading();
  uint64_t id() const { return id_; }
  // Thread-safe: the client has sent at least one byte.
  bool heard() const { return stream_.heard(); }
  std::chrono::steady_clock::time_point accepted() const { return accepted_; }
  // Thread-safe: ends the handshake (its reads and writes fail at once).
  void evict();
  // Under the server's lock: in a connection slot (after the handshake).
  bool transmitting() const { return transmitting_; }
  void set_transmitting() { transmitting_ = true; }
  // Thread-safe: the target of the export this connection transmits on
  // (null during the handshake); compared, never dereferenced, by others.
  const Target* serving() const { return serving_.load(std::memory_order_acquire); }

 private:
  // The transmission limits: requests in flight plus replies queued, and
  // bytes held from the memory budget (at most the fair share too).
  static constexpr uint32_t kMaxInFlight = 256;
  static constexpr uint64_t kMaxInFlightBytes = 128ull << 20;
  static constexpr std::string_view kBaseAllocation = "base:allocation";

  // Suspends the connection's reader (or closer) until maybe_wake() resumes it.
  struct Park {
    std::coroutine_handle<>& slot;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) noexcept { slot = h; }
    void await_resume() const noexcept {}
  };

  Detached run();

  // Handshake (handshake.cc): true when the client chose an export; false to close.
  Task<bool> handshake();
  enum class OptionResult { kContinue, kTransmission, kClose };
  Task<Result<OptionResult>> handle_option(uint32_t opt, std::vector<std::byte>& data);
  Task<Result<>> send_option_reply(uint32_t opt, uint32_t type, std::span<const std::byte> data = {});
  Task<Result<>> send_info_replies(uint32_t opt, const Device& e, std::span<const uint16_t> requests);
  Task<Result<>> handle_meta_context(uint32_t opt, std::span<const std::byte> data);
  uint16_t transmission_flags() const;

  // Transmission (transmission.cc).
  Task<void> transmission();
  uint32_t check_request(const Request& r) const;
  Detached serve(Request r, Buffer payload);
  // A write the budget had no room for: received and written a chunk at a
  // time by the reader. False when the connection failed.
  Task<bool> write_in_chunks(const Request& r);

  // Replies (reply_queue.cc).
  void queue_reply(Reply r);
  Task<void> drain_send_queue();
  void reply_ok(const Request& r);
  void reply_error(const Request& r, uint32_t nbd_err, std::string_view msg);
  Reply error_reply(const Request& r, uint32_t nbd_err, std::string_view msg) const;
  void reply_block_status(const Request& r, uint32_t context_id, const Extents& e, bool done);
  // Sends a deferred read's reply, reading it from the target chunk by chunk.
  Task<Result<>> send_deferred_read(const Request& r);
  // Drops a reply, giving back its budget; `queued`: it is in out_ (its
  // payload counted in queued_bytes_).
  void drop(Reply& r, bool queued = true);

  // Memory budget: takes n bytes for this connection (false: over its fair
  // share or the pool is full), or gives them back.
  bool take(uint64_t n);
  void give(uint64_t n);
  // The reader must not read more requests: too many requests in flight or
  // replies queued, or too many bytes held for them.
  bool reader_must_wait() const;
  // Resumes the parked reader (or closer) if it may go on. Callers must not
  // touch the object afterwards: the closer may delete it.
  void maybe_wake();

  Server& server_;
  Queue& q_;
  uint64_t id_;
  std::string peer_;
  std::chrono::steady_clock::time_point accepted_;
  std::atomic<bool> evicted_{false};
  bool transmitting_ = false;  // guarded by the server's lock

  std::shared_ptr<const Device> export_;  // the device of the registry it serves
  std::atomic<const Target*> serving_{nullptr};
  bool structured_ = false;
  bool no_zeroes_ = false;
  std::string meta_export_;       // export name SET_META_CONTEXT was for
  // Metadata contexts chosen by SET_META_CONTEXT: (id, name); ids from 1.
  std::vector<std::pair<uint32_t, std::string>> contexts_;

  // Transmission state (queue thread only).
  uint32_t in_flight_ = 0;
  uint64_t held_ = 0;  // bytes taken from the server's memory budget
  bool member_ = false;  // counted in the budget's fair shares
  std::coroutine_handle<> reader_waiting_;
  std::deque<Reply> out_;
  uint64_t queued_bytes_ = 0;  // reply payload bytes in out_
  bool sending_ = false;
  bool dead_ = false;
  bool reader_closing_ = false;

  // Last, so that they go first: the socket is closed, then the pipe,
  // before the rest of the connection is freed.
  Splicer splicer_;
  Stream stream_;
};

inline bool Connection::take(uint64_t n) {
  if (held_ + n > kMaxInFlightBytes || !server_.budget().try_take(held_, n)) return false;
  held_ += n;
  return true;
}

inline void Connection::give(uint64_t n) {
  held_ -= n;
  server_.budget().give(n);
}

inline bool Connection::reader_must_wait() const {
  return in_flight_ + out_.size() >= kMaxInFlight ||
         held_ >= std::min(kMaxInFlightBytes, server_.budget().fair_share());
}

inline void Connection::maybe_wake() {
  if (!reader_waiting_) return;
  // The reader parks while in-flight limits block it; run() parks, once the
  // reader has stopped, until requests and sends are done.
  bool go = reader_closing_ ? !(in_flight_ > 0 || sending_)
                            : !reader_must_wait();
  if (go) std::exchange(reader_waiting_, nullptr).resume();
}

inline void Connection::drop(Reply& r, bool queued) {
  if (queued) queued_bytes_ -= r.data_len;
  r.data_len = 0;
  r.data = Buffer();
  if (r.pooled) give(std::exchange(r.pooled, 0));
}

inline void Connection::queue_reply(Reply r) {
  if (dead_) {
    drop(r, /*queued=*/false);
    return;
  }
  queued_bytes_ += r.data_len;
  out_.push_back(std::move(r));
  if (!sending_) {
    sending_ = true;
    spawn(drain_send_queue());
  }
}

inline void Connection::reply_ok(const Request& r) {
  Reply reply;
  put32(reply.hdr.data(), kSimpleReplyMagic);
  put32(reply.hdr.data() + 4, 0);
  put64(reply.hdr.data() + 8, r.cookie);
  reply.hdr_len = kSimpleReplySize;
  queue_reply(std::move(reply));
}

}  // namespace strata::nbd
