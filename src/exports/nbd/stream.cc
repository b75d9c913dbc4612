#include "exports/nbd/stream.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace strata::nbd {

namespace {
constexpr std::size_t kRecvBuffer = 64 * 1024;
constexpr std::size_t kTlsRecvBuffer = 64 * 1024;
}  // namespace

Stream::Stream(Queue& q, int fd, Clock::time_point deadline, Clock::time_point first_bytes)
    : q_(q), fd_(fd), deadline_(deadline), first_bytes_deadline_(std::min(deadline, first_bytes)) {
  rbuf_ = Buffer::get(kRecvBuffer);
}

Stream::~Stream() {
  if (fd_ >= 0) ::close(fd_);
}

// ------------------------------------------------------------------ reading

Task<int> Stream::raw_recv(std::span<std::byte> buf) {
  for (;;) {
    int n;
    if (in_handshake_) {
      auto left = (heard() ? deadline_ : first_bytes_deadline_) - std::chrono::steady_clock::now();
      if (left <= std::chrono::nanoseconds(0)) co_return -ETIMEDOUT;
      n = co_await q_.ring().timed(
          [&](io_uring_sqe* s) { io_uring_prep_recv(s, fd_, buf.data(), buf.size(), 0); }, left);
      if (n == -ECANCELED) co_return -ETIMEDOUT;
      if (n > 0) heard_.store(true, std::memory_order_relaxed);
    } else {
      n = co_await q_.ring().recv(fd_, buf);
    }
    if (n == -EINTR || n == -EAGAIN) continue;
    co_return n;
  }
}

Task<Result<>> Stream::fill() {
  if (rstart_ == rend_) rstart_ = rend_ = 0;
  if (rend_ == rbuf_.size()) {
    std::memmove(rbuf_.data(), rbuf_.data() + rstart_, rend_ - rstart_);
    rend_ -= rstart_;
    rstart_ = 0;
  }
  std::span<std::byte> free(rbuf_.data() + rend_, rbuf_.size() - rend_);
  if (tls_) {
    // Decrypt into the receive buffer; receive ciphertext when TLS needs more.
    for (;;) {
      ssize_t r = tls_->recv(free.data(), free.size());
      if (r > 0) {
        rend_ += r;
        co_return Result<>{};
      }
      if (r == 0) co_return fail(ECONNRESET, "client closed the TLS session");
      if (r != -EAGAIN) co_return fail(EPROTO, "TLS: bad record from the client");
      int n = co_await raw_recv(tls_in_.span());
      if (n == -ETIMEDOUT) co_return fail(ETIMEDOUT, "handshake timed out");
      if (n < 0) co_return posix_error("recv", -n);
      if (n == 0) co_return fail(ECONNRESET, "client closed the connection");
      tls_->feed(tls_in_.data(), n);
    }
  }
  int n = co_await raw_recv(free);
  if (n == -ETIMEDOUT) co_return fail(ETIMEDOUT, "handshake timed out");
  if (n < 0) co_return posix_error("recv", -n);
  if (n == 0) co_return fail(ECONNRESET, "client closed the connection");
  rend_ += n;
  co_return Result<>{};
}

Task<Result<>> Stream::read_exact(std::byte* dst, std::size_t n) {
  while (n > 0) {
    if (rstart_ < rend_) {
      std::size_t k = std::min(n, rend_ - rstart_);
      std::memcpy(dst, rbuf_.data() + rstart_, k);
      rstart_ += k;
      dst += k;
      n -= k;
      continue;
    }
    if (!in_handshake_ && !tls_ && n >= rbuf_.size() / 2) {
      // A large payload goes straight into its destination.
      int r = co_await q_.ring().recv(fd_, {dst, n}, MSG_WAITALL);
      if (r == -EINTR || r == -EAGAIN) continue;
      if (r < 0) co_return posix_error("recv", -r);
      if (r == 0) co_return fail(ECONNRESET, "client closed the connection");
      dst += r;
      n -= r;
      continue;
    }
    CO_TRY(co_await fill());
  }
  co_return Result<>{};
}

Task<Result<>> Stream::discard(uint64_t n) {
  while (n > 0) {
    if (rstart_ == rend_) CO_TRY(co_await fill());
    std::size_t k = std::min<uint64_t>(n, rend_ - rstart_);
    rstart_ += k;
    n -= k;
  }
  co_return Result<>{};
}

// ------------------------------------------------------------------ sending

Task<Result<>> Stream::send_all(msghdr& msg) {
  while (msg.msg_iovlen > 0) {
    int n;
    if (in_handshake_) {
      auto left = deadline_ - std::chrono::steady_clock::now();
      if (left <= std::chrono::nanoseconds(0)) co_return fail(ETIMEDOUT, "handshake timed out");
      n = co_await q_.ring().timed(
          [&](io_uring_sqe* s) { io_uring_prep_sendmsg(s, fd_, &msg, MSG_NOSIGNAL); }, left);
      if (n == -ECANCELED) co_return fail(ETIMEDOUT, "handshake timed out");
    } else {
      n = co_await q_.ring().sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_WAITALL);
    }
    if (n == -EINTR || n == -EAGAIN) continue;
    if (n < 0) co_return posix_error("send", -n);
    if (n == 0) co_return fail(EPIPE, "send: connection closed");
    advance(msg, n);
  }
  co_return Result<>{};
}

Task<Result<>> Stream::flush_tls() {
  // Swap the ciphertext out first: decrypting (fill) may append to it while
  // this send is in flight.
  tls_pending_.clear();
  tls_pending_.swap(tls_->out());
  if (tls_pending_.empty()) co_return Result<>{};
  iovec iov{tls_pending_.data(), tls_pending_.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  co_return co_await send_all(msg);
}

Task<Result<>> Stream::send_now(std::span<const std::byte> a, std::span<const std::byte> b) {
  if (tls_) {
    CO_TRY(tls_->send(a.data(), a.size()));
    CO_TRY(tls_->send(b.data(), b.size()));
    co_return co_await flush_tls();
  }
  iovec iov[2] = {{const_cast<std::byte*>(a.data()), a.size()}, {const_cast<std::byte*>(b.data()), b.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = b.empty() ? 1 : 2;
  co_return co_await send_all(msg);
}

Task<Result<>> Stream::start_tls(const TlsConfig& config) {
  CO_TRY_ASSIGN(tls_, TlsSession::create(config));
  tls_in_ = Buffer::get(kTlsRecvBuffer);
  for (;;) {
    auto step = tls_->handshake();
    // Send what GnuTLS produced, even on failure (an alert tells the client why).
    auto sent = co_await flush_tls();
    if (!step) co_return fail(step.error());
    if (!sent) co_return fail(sent.error());
    if (*step) break;
    if (tls_->want_read()) {
      int n = co_await raw_recv(tls_in_.span());
      if (n == -ETIMEDOUT) co_return fail(ETIMEDOUT, "TLS handshake timed out");
      if (n < 0) co_return posix_error("TLS handshake: recv", -n);
      if (n == 0) co_return fail(ECONNRESET, "TLS handshake: client closed the connection");
      tls_->feed(tls_in_.data(), n);
    }
  }
  co_return Result<>{};
}

}  // namespace strata::nbd
