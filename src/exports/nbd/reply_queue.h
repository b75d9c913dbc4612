// Replies of the transmission phase, as queued for sending: a request as
// parsed, a reply (its encoded header and its payload, in a buffer or a view
// of the target's memory), and the Splicer that sends a batch of replies
// without copying their payloads.
//
// The send queue itself (Connection::out_) and its draining are the
// Connection's (reply_queue.cc): replies go through one queue per
// connection, and whichever request finds the socket idle sends every reply
// queued so far in one sendmsg, so a burst of completions costs one syscall.
// Everything here is used on the connection's queue thread only.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>

#include "core/buffer.h"
#include "core/queue.h"
#include "core/result.h"
#include "core/task.h"

namespace strata::nbd {

// Replies sent by one sendmsg (or one splice) at most.
constexpr std::size_t kMaxBatch = 64;

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

// Zero-copy replies: a batch of read replies whose payloads are views goes
// out by vmsplice (headers and views into a pipe, as page references) and
// splice (pipe to socket), so strata copies no payload byte. STRATA_SPLICE=off
// turns it off (sendmsg for everything). Owns its pipe and header arena.
class Splicer {
 public:
  // Makes the socket fd non-blocking, which splice(2) into it needs.
  explicit Splicer(int fd);
  ~Splicer();
  Splicer(const Splicer&) = delete;
  Splicer& operator=(const Splicer&) = delete;

  static bool enabled();
  // Whether the first `batch` replies of `out` should go by splice (creates
  // the pipe the first time).
  bool ok(const std::deque<Reply>& out, std::size_t batch);
  // Sends the first `batch` replies of `out`; false: splicing does not work
  // here (nothing was sent; the caller uses sendmsg, and so will later
  // batches).
  Task<Result<bool>> send(Queue& q, const std::deque<Reply>& out, std::size_t batch);

 private:
  void stop();

  static constexpr std::size_t kHeaderArena = 1 << 20;
  const int fd_;
  int pipe_[2] = {-1, -1};
  bool broken_ = false;
  std::byte* hdr_arena_ = nullptr;  // reply headers, each byte written once
  std::size_t hdr_pos_ = 0;
};

}  // namespace strata::nbd
