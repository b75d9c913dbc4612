// Stream: the byte stream of one NBD connection: its socket, a receive
// buffer and, after STARTTLS, the TLS session over the socket.
//
// Reads come out of the receive buffer (one recv can carry many 28-byte
// request headers; the reader parses them in place with peek() and
// consume()); a large plaintext payload is received straight into its
// destination. Until end_handshake(), every recv and send runs against the
// handshake deadline (first against the shorter first-bytes deadline, until
// the client has sent a byte) through io_uring linked timeouts.
//
// A Stream belongs to its Connection and is used on the connection's queue
// thread only, except heard() and fd() (for shutdown(2)), which any thread
// may call. It owns the socket and closes it when destroyed.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/buffer.h"
#include "core/queue.h"
#include "core/result.h"
#include "core/task.h"
#include "exports/nbd/tls.h"

namespace strata::nbd {

// Advances msg's iovecs past k bytes sent.
inline void advance(msghdr& msg, std::size_t k) {
  while (k > 0 && msg.msg_iovlen > 0) {
    if (k >= msg.msg_iov[0].iov_len) {
      k -= msg.msg_iov[0].iov_len;
      ++msg.msg_iov;
      --msg.msg_iovlen;
    } else {
      msg.msg_iov[0].iov_base = static_cast<std::byte*>(msg.msg_iov[0].iov_base) + k;
      msg.msg_iov[0].iov_len -= k;
      k = 0;
    }
  }
}

class Stream {
 public:
  using Clock = std::chrono::steady_clock;
  // `deadline`: the whole handshake's; `first_bytes`: the client's first
  // byte's (the earlier of the two applies until then).
  Stream(Queue& q, int fd, Clock::time_point deadline, Clock::time_point first_bytes);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Thread-safe (shutdown(2) on it is).
  int fd() const { return fd_; }
  // Thread-safe: the client has sent at least one byte.
  bool heard() const { return heard_.load(std::memory_order_relaxed); }
  // Transmission: no more deadlines, large payloads received in place.
  void end_handshake() { in_handshake_ = false; }
  // The TLS session once STARTTLS succeeded, else null.
  TlsSession* tls() const { return tls_.get(); }

  // The receive buffer: bytes received and not consumed yet.
  std::size_t buffered() const { return rend_ - rstart_; }
  const std::byte* peek() const { return rbuf_.data() + rstart_; }
  void consume(std::size_t n) { rstart_ += n; }
  // Receives more into the buffer (at least one byte).
  Task<Result<>> fill();
  Task<Result<>> read_exact(std::byte* dst, std::size_t n);
  Task<Result<>> discard(uint64_t n);

  // Sends every byte msg describes (plaintext; advances its iovecs).
  Task<Result<>> send_all(msghdr& msg);
  // Sends a, then b, under TLS or not: one message of the handshake, or a
  // reply sent on its own.
  Task<Result<>> send_now(std::span<const std::byte> a, std::span<const std::byte> b = {});
  // Sends the ciphertext TLS has produced so far.
  Task<Result<>> flush_tls();
  // The TLS handshake, right after the STARTTLS reply was sent.
  Task<Result<>> start_tls(const TlsConfig& config);

 private:
  Task<int> raw_recv(std::span<std::byte> buf);

  Queue& q_;
  const int fd_;
  const Clock::time_point deadline_;
  const Clock::time_point first_bytes_deadline_;
  bool in_handshake_ = true;
  std::atomic<bool> heard_{false};

  Buffer rbuf_;
  std::size_t rstart_ = 0, rend_ = 0;

  std::unique_ptr<TlsSession> tls_;     // set once STARTTLS succeeded
  Buffer tls_in_;                       // ciphertext received
  std::vector<std::byte> tls_pending_;  // ciphertext being sent
};

}  // namespace strata::nbd
