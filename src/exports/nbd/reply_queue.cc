// Design notes
//
// Replies are encoded into a Reply (header bytes, then the payload: a pooled
// buffer or a view of the target's memory) and queued on the connection's
// send queue, out_. The first reply queued onto an idle socket spawns
// drain_send_queue(), which first lets every request completed in this
// batch queue its reply, then sends up to kMaxBatch replies at a time: under
// TLS as one corked record stream, else by splice when every payload is a
// view (Splicer, below), else by one sendmsg. A deferred read (no room in
// the memory budget) is read from the target and sent a chunk at a time
// when its turn comes. A failed send kills the connection: the socket is
// shut down and every queued reply dropped, its budget given back.
#include "exports/nbd/reply_queue.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/log.h"
#include "exports/nbd/connection.h"

namespace strata::nbd {

uint32_t errno_to_nbd(int err) {
  switch (err) {
    case EPERM:
    case EROFS:
    case EACCES:
      return kEPERM;
    case EIO:
      return kEIO;
    case ENOMEM:
      return kENOMEM;
    case EINVAL:
      return kEINVAL;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return kENOSPC;
    case EOVERFLOW:
      return kEOVERFLOW;
    case ENOTSUP:
      return kENOTSUP;
    case ESHUTDOWN:
      return kESHUTDOWN;
    default:
      return kEIO;
  }
}

void Connection::reply_block_status(const Request& r, uint32_t context_id, const Extents& e, bool done) {
  // Clip to the request (REQ_ONE: the first extent only).
  Extents out;
  uint64_t left = r.length;
  for (const auto& x : e) {
    if (left == 0) break;
    uint64_t n = std::min(x.length, left);
    out.push_back({n, x.flags});
    left -= n;
    if (r.flags & kCmdFlagReqOne) break;
  }
  if (out.empty()) out.push_back({r.length, 0});
  Reply reply;
  uint32_t len = 4 + 8 * static_cast<uint32_t>(out.size());
  put32(reply.hdr.data(), kStructuredReplyMagic);
  put16(reply.hdr.data() + 4, done ? kReplyFlagDone : 0);
  put16(reply.hdr.data() + 6, kReplyBlockStatus);
  put64(reply.hdr.data() + 8, r.cookie);
  put32(reply.hdr.data() + 16, len);
  put32(reply.hdr.data() + 20, context_id);
  reply.hdr_len = 24;
  reply.data = Buffer::get(8 * out.size());
  for (std::size_t i = 0; i < out.size(); ++i) {
    put32(reply.data.data() + 8 * i, static_cast<uint32_t>(out[i].length));
    put32(reply.data.data() + 8 * i + 4, out[i].flags);
  }
  reply.data_len = static_cast<uint32_t>(reply.data.size());
  queue_reply(std::move(reply));
}

void Connection::reply_error(const Request& r, uint32_t err, std::string_view msg) {
  queue_reply(error_reply(r, err, msg));
}

Reply Connection::error_reply(const Request& r, uint32_t err, std::string_view msg) const {
  Reply reply;
  if (structured_) {
    msg = msg.substr(0, std::min<std::size_t>(msg.size(), 256));
    put32(reply.hdr.data(), kStructuredReplyMagic);
    put16(reply.hdr.data() + 4, kReplyFlagDone);
    put16(reply.hdr.data() + 6, kReplyError);
    put64(reply.hdr.data() + 8, r.cookie);
    put32(reply.hdr.data() + 16, 6 + static_cast<uint32_t>(msg.size()));
    put32(reply.hdr.data() + 20, err);
    put16(reply.hdr.data() + 24, static_cast<uint16_t>(msg.size()));
    reply.hdr_len = 26;
    if (!msg.empty()) {
      reply.data = Buffer::get(msg.size());
      std::memcpy(reply.data.data(), msg.data(), msg.size());
      reply.data_len = static_cast<uint32_t>(msg.size());
    }
  } else {
    put32(reply.hdr.data(), kSimpleReplyMagic);
    put32(reply.hdr.data() + 4, err);
    put64(reply.hdr.data() + 8, r.cookie);
    reply.hdr_len = kSimpleReplySize;
  }
  return reply;
}

// ------------------------------------------------------------------ sending

Task<void> Connection::drain_send_queue() {
  iovec iov[2 * kMaxBatch];
  // Let every request completed in this batch queue its reply first.
  co_await q_.ring().defer();
  while (!out_.empty() && !dead_) {
    if (out_.front().deferred) {
      Request req = out_.front().req;
      auto sent = co_await send_deferred_read(req);
      if (!sent) {
        LOG_DEBUG("conn {}: {}", id_, sent.error().message);
        dead_ = true;
        ::shutdown(stream_.fd(), SHUT_RDWR);
        break;
      }
      out_.pop_front();
      continue;
    }
    std::size_t batch = 0;
    while (batch < std::min(out_.size(), kMaxBatch) && !out_[batch].deferred) ++batch;
    std::size_t niov = 0;
    for (std::size_t i = 0; i < batch; ++i) {
      Reply& r = out_[i];
      iov[niov++] = {r.hdr.data(), r.hdr_len};
      if (r.data_len) iov[niov++] = {const_cast<std::byte*>(r.payload()), r.data_len};
    }
    Result<> sent;
    if (TlsSession* tls = stream_.tls()) {
      // One TLS record stream for the whole batch (corked), one send.
      tls->cork();
      for (std::size_t i = 0; i < niov && sent; ++i)
        sent = tls->send(static_cast<const std::byte*>(iov[i].iov_base), iov[i].iov_len);
      if (sent) sent = tls->uncork();
      if (sent) sent = co_await stream_.flush_tls();
    } else {
      bool spliced = false;
      if (splicer_.ok(out_, batch)) {
        auto r = co_await splicer_.send(q_, out_, batch);
        if (!r) sent = fail(std::move(r.error()));
        spliced = !r || *r;
      }
      if (!spliced) {
        msghdr msg{};
        msg.msg_iov = iov;
        msg.msg_iovlen = niov;
        sent = co_await stream_.send_all(msg);
      }
    }
    if (!sent) {
      if (sent.error().code == EFAULT)  // a mapped file shrank under a reply
        LOG_WARN("conn {} ({}): {}; closing", id_, peer_, sent.error().message);
      else
        LOG_DEBUG("conn {}: {}", id_, sent.error().message);
      dead_ = true;
      ::shutdown(stream_.fd(), SHUT_RDWR);
    }
    if (dead_) break;
    for (std::size_t i = 0; i < batch; ++i) {
      drop(out_.front());
      out_.pop_front();
    }
  }
  if (dead_) {
    for (auto& r : out_) drop(r);
    out_.clear();
  }
  sending_ = false;
  maybe_wake();
}

Task<Result<>> Connection::send_deferred_read(const Request& r) {
  const auto& t = export_->target;
  const uint32_t chunk = server_.budget().chunk();
  Buffer buf = Buffer::get(std::min<uint64_t>(chunk, r.length));
  // One data chunk per piece, unless the client asked for one (DF) or
  // structured replies are off: then one header for the whole read.
  const bool pieces = structured_ && !(r.flags & kCmdFlagDf);
  bool started = false;
  for (uint64_t done = 0; done < r.length;) {
    uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(chunk, r.length - done));
    auto rr = co_await t->read(q_, buf.span().first(n), r.offset + done);
    if (!rr) {
      LOG_WARN("conn {}: cmd {} {}+{}: {}", id_, r.type, r.offset, r.length, rr.error().message);
      if (started && !pieces)
        co_return fail(EIO, "read failed after its reply began; closing: " + rr.error().message);
      Reply e = error_reply(r, errno_to_nbd(rr.error().code), rr.error().message);
      co_return co_await stream_.send_now({e.hdr.data(), e.hdr_len}, {e.data.data(), e.data_len});
    }
    std::array<std::byte, 28> h;
    std::size_t hl = 0;
    bool last = done + n == r.length;
    if (pieces || !started) {
      if (structured_) {
        put32(h.data(), kStructuredReplyMagic);
        put16(h.data() + 4, last || !pieces ? kReplyFlagDone : 0);
        put16(h.data() + 6, kReplyOffsetData);
        put64(h.data() + 8, r.cookie);
        put32(h.data() + 16, (pieces ? n : r.length) + 8);
        put64(h.data() + 20, r.offset + done);
        hl = 28;
      } else {
        put32(h.data(), kSimpleReplyMagic);
        put32(h.data() + 4, 0);
        put64(h.data() + 8, r.cookie);
        hl = kSimpleReplySize;
      }
    }
    started = true;
    if (hl)
      CO_TRY(co_await stream_.send_now({h.data(), hl}, buf.span().first(n)));
    else
      CO_TRY(co_await stream_.send_now(buf.span().first(n)));
    done += n;
  }
  co_return Result<>{};
}

// ------------------------------------------------------------------- splice

Splicer::Splicer(int fd) : fd_(fd) {
  // splice(2) into the socket must not block the queue thread on a full
  // socket: it does unless the socket is O_NONBLOCK (io_uring's own socket
  // operations poll either way).
  if (enabled()) {
    int fl = ::fcntl(fd_, F_GETFL);
    if (fl < 0 || ::fcntl(fd_, F_SETFL, fl | O_NONBLOCK) < 0) broken_ = true;
  } else {
    broken_ = true;
  }
}

Splicer::~Splicer() {
  if (pipe_[0] >= 0) {
    ::close(pipe_[0]);
    ::close(pipe_[1]);
  }
  if (hdr_arena_) ::munmap(hdr_arena_, kHeaderArena);
}

bool Splicer::enabled() {
  static const bool on = [] {
    const char* e = getenv("STRATA_SPLICE");
    return !(e && std::string_view(e) == "off");
  }();
  return on;
}

bool Splicer::ok(const std::deque<Reply>& out, std::size_t batch) {
  if (broken_) return false;
  // Only a batch that carries a view and nothing but views: data in
  // buffers is sent by sendmsg (those buffers are reused at once; a pipe
  // would still reference them), and header-only batches (write
  // acknowledgements) cost fewer system calls there.
  bool any = false;
  for (std::size_t i = 0; i < batch; ++i) {
    if (!out[i].data_len) continue;
    if (!out[i].view) return false;
    any = true;
  }
  if (!any) return false;
  if (pipe_[0] < 0) {
    if (::pipe2(pipe_, O_CLOEXEC | O_NONBLOCK) < 0) {
      broken_ = true;
      return false;
    }
    // 1 MiB if allowed; less than 64 KiB (a user over its pipe page quota
    // gets 2 slots) would cost a system call per page: sendmsg then.
    (void)::fcntl(pipe_[1], F_SETPIPE_SZ, 1 << 20);
    if (::fcntl(pipe_[1], F_GETPIPE_SZ) < (64 << 10)) {
      stop();
      return false;
    }
  }
  return true;
}

void Splicer::stop() {
  broken_ = true;
  if (pipe_[0] >= 0) {
    ::close(pipe_[0]);
    ::close(pipe_[1]);
    pipe_[0] = pipe_[1] = -1;
  }
}

Task<Result<bool>> Splicer::send(Queue& q, const std::deque<Reply>& out, std::size_t batch) {
  // The headers go into an arena that is never written twice: vmsplice
  // hands the pipe references to these pages, not copies, and the client
  // may read them long after this batch. A used-up arena is unmapped (the
  // kernel keeps the pages it still references) and a new one mapped.
  constexpr std::size_t kBatchHeaders = kMaxBatch * sizeof(Reply::hdr);
  if (!hdr_arena_ || hdr_pos_ + kBatchHeaders > kHeaderArena) {
    if (hdr_arena_) ::munmap(hdr_arena_, kHeaderArena);
    hdr_pos_ = 0;
    void* m = ::mmap(nullptr, kHeaderArena, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    hdr_arena_ = m == MAP_FAILED ? nullptr : static_cast<std::byte*>(m);
    if (!hdr_arena_) {
      stop();
      co_return false;
    }
  }
  iovec iov[2 * kMaxBatch];
  std::size_t niov = 0, total = 0;
  for (std::size_t i = 0; i < batch; ++i) {
    const Reply& r = out[i];
    std::byte* h = hdr_arena_ + hdr_pos_;
    std::memcpy(h, r.hdr.data(), r.hdr_len);
    hdr_pos_ += r.hdr_len;
    iov[niov++] = {h, r.hdr_len};
    total += r.hdr_len;
    if (r.data_len) {
      iov[niov++] = {const_cast<std::byte*>(r.view), r.data_len};
      total += r.data_len;
    }
  }
  msghdr cursor{};
  cursor.msg_iov = iov;
  cursor.msg_iovlen = niov;
  std::size_t in_pipe = 0;
  bool any_out = false;
  // Not supported here after all (seccomp, a sandbox, a socket type without
  // splice): before a byte reached the socket, sendmsg can still send the
  // batch, and every later one.
  auto unsupported = [&](int e) {
    bool fall_back = !any_out && (e == EINVAL || e == ENOSYS || e == EPERM || e == EOPNOTSUPP);
    if (fall_back) stop();
    return fall_back;
  };
  while (total > 0) {
    // Into the pipe as much as it takes (references to the pages)...
    if (cursor.msg_iovlen > 0) {
      ssize_t n = ::vmsplice(pipe_[1], cursor.msg_iov, cursor.msg_iovlen, SPLICE_F_NONBLOCK);
      if (n < 0 && errno != EAGAIN) {
        if (unsupported(errno)) co_return false;
        co_return posix_error("vmsplice", errno);
      }
      if (n > 0) {
        advance(cursor, static_cast<std::size_t>(n));
        in_pipe += static_cast<std::size_t>(n);
      }
    }
    // ...and from the pipe into the socket, which takes the pages as they
    // are (AF_UNIX and TCP: no copy); the client's read is the one copy.
    ssize_t n = ::splice(pipe_[0], nullptr, fd_, nullptr, in_pipe, SPLICE_F_NONBLOCK);
    if (n > 0) {
      in_pipe -= static_cast<std::size_t>(n);
      total -= static_cast<std::size_t>(n);
      any_out = true;
      continue;
    }
    if (n == 0) co_return fail(EPIPE, "splice: connection closed");
    if (errno != EAGAIN) {
      if (unsupported(errno)) co_return false;
      co_return posix_error("splice", errno);
    }
    const int fd = fd_;
    (void)co_await q.ring().op([fd](io_uring_sqe* sqe) { io_uring_prep_poll_add(sqe, fd, POLLOUT); });
  }
  co_return true;
}

}  // namespace strata::nbd
