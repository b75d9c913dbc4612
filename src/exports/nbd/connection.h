// Connection: one NBD client, from handshake to close, on one queue thread.
//
// The reader coroutine parses requests from a receive buffer (one recv can
// carry many 28-byte headers) and starts one request coroutine per command;
// commands run concurrently and complete in any order. Replies go through one
// send queue per connection: whichever request finds the socket idle sends
// every reply queued so far in one sendmsg, so a burst of completions costs one
// syscall. The object frees itself when the reader has stopped, no request is
// in flight and the send queue is empty.
#pragma once

#include <sys/uio.h>

#include <array>
#include <coroutine>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include <atomic>

#include "core/buffer.h"
#include "core/queue.h"
#include "exports/nbd/protocol.h"
#include "exports/nbd/server.h"
#include "exports/nbd/tls.h"

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
  bool heard() const { return heard_.load(std::memory_order_relaxed); }
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
  struct Request {
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint32_t length;
  };
  struct Reply {
    std::array<std::byte, 40> hdr;
    uint32_t hdr_len = 0;
    Buffer data;
    // Or the payload lives in the export's target (Target::read_view),
    // which outlives this connection.
    const std::byte* view = nullptr;
    uint32_t data_len = 0;
    // Bytes of `data` taken from the server's memory budget.
    uint32_t pooled = 0;
    // A read whose data is read from the target only when its turn to be
    // sent comes, a chunk at a time (the budget had no room for it).
    bool deferred = false;
    Request req{};
    const std::byte* payload() const { return view ? view : data.data(); }
  };

  Detached run();
  // Handshake: true when the client chose an export; false to close.
  Task<bool> handshake();
  enum class OptionResult { kContinue, kTransmission, kClose };
  Task<Result<OptionResult>> handle_option(uint32_t opt, std::vector<std::byte>& data);
  Task<void> transmission();
  Detached serve(Request r, Buffer payload);
  // A write the budget had no room for: received and written a chunk at a
  // time by the reader. False when the connection failed.
  Task<bool> write_in_chunks(const Request& r);
  // Sends a deferred read's reply, reading it from the target chunk by chunk.
  Task<Result<>> send_deferred_read(const Request& r);
  // Memory budget: takes n bytes for this connection (false: over its fair
  // share or the pool is full), or gives them back.
  bool take(uint64_t n);
  void give(uint64_t n);

  // Socket I/O under TLS or not; in the handshake, against the deadline.
  Task<int> raw_recv(std::span<std::byte> buf);
  Task<Result<>> raw_send_all(msghdr& msg);
  Task<Result<>> flush_tls();
  Task<Result<>> start_tls();
  // Reading.
  Task<Result<>> read_exact(std::byte* dst, std::size_t n);
  Task<Result<>> discard(uint64_t n);
  Task<Result<>> fill();
  // Writing (handshake: one message at a time).
  Task<Result<>> send_now(std::span<const std::byte> a, std::span<const std::byte> b = {});
  Task<Result<>> send_option_reply(uint32_t opt, uint32_t type, std::span<const std::byte> data = {});
  Task<Result<>> send_info_replies(uint32_t opt, const Export& e, std::span<const uint16_t> requests);
  Task<Result<>> handle_meta_context(uint32_t opt, std::span<const std::byte> data);
  // Transmission replies.
  void queue_reply(Reply r);
  Task<void> drain_send_queue();
  void reply_error(const Request& r, uint32_t nbd_err, std::string_view msg);
  Reply error_reply(const Request& r, uint32_t nbd_err, std::string_view msg) const;
  // Drops a reply, giving back its budget; `queued`: it is in out_ (its
  // payload counted in queued_bytes_).
  void drop(Reply& r, bool queued = true);
  void reply_ok(const Request& r);
  void reply_block_status(const Request& r, uint32_t context_id, const Extents& e, bool done);

  uint16_t transmission_flags() const;
  uint32_t check_request(const Request& r) const;
  // The reader must not read more requests: too many requests in flight or
  // replies queued, or too many bytes held for them.
  bool reader_must_wait() const;
  // Zero-copy replies: a batch of read replies whose payloads are views goes
  // out by vmsplice (headers and views into a pipe, as page references) and
  // splice (pipe to socket), so strata copies no payload byte. STRATA_SPLICE=off
  // turns it off (sendmsg for everything).
  static bool splice_enabled();
  bool splice_ok(std::size_t batch);
  // Sends the first `batch` replies; false: splicing does not work here
  // (nothing was sent; the caller uses sendmsg, and so will later batches).
  Task<Result<bool>> splice_batch(std::size_t batch);
  void stop_splicing();
  static constexpr std::size_t kHeaderArena = 1 << 20;
  int pipe_[2] = {-1, -1};
  bool splice_broken_ = false;
  std::byte* hdr_arena_ = nullptr;  // reply headers, each byte written once
  std::size_t hdr_pos_ = 0;
  // Resumes the parked reader (or closer) if it may go on. Callers must not
  // touch the object afterwards: the closer may delete it.
  void maybe_wake();

  Server& server_;
  Queue& q_;
  int fd_;
  uint64_t id_;
  std::string peer_;
  std::chrono::steady_clock::time_point deadline_;
  std::chrono::steady_clock::time_point first_bytes_deadline_;
  std::chrono::steady_clock::time_point accepted_;
  bool in_handshake_ = true;
  std::atomic<bool> heard_{false};
  std::atomic<bool> evicted_{false};
  bool transmitting_ = false;  // guarded by the server's lock

  Buffer rbuf_;
  std::size_t rstart_ = 0, rend_ = 0;

  std::unique_ptr<TlsSession> tls_;        // set once STARTTLS succeeded
  Buffer tls_in_;                          // ciphertext received
  std::vector<std::byte> tls_pending_;     // ciphertext being sent

  std::shared_ptr<const Export> export_;
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
};

}  // namespace strata::nbd
