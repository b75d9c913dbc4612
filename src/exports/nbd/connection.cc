// Design notes
//
// Handshake (fixed newstyle only). Every read and write of the handshake runs
// against one deadline (ServerOptions::handshake_timeout) through io_uring
// linked timeouts, so a client that connects and stalls is closed on time and
// never holds a slot. Option payloads larger than kMaxOptionLength are
// consumed in fixed-size pieces and refused with ERR_TOO_BIG: no allocation
// is ever sized by the client beyond kMaxRequest (32 MiB).
//
// Transmission. The reader parses headers straight out of its receive buffer;
// a write's payload is copied from that buffer and the rest received directly
// into the request's own (4 KiB-aligned, pooled) buffer. Each request runs as
// its own coroutine; the reader stops reading when kMaxInFlight requests are
// outstanding or the connection holds its fair share of the memory budget.
//
// Memory budget (budget.h). A read's buffer, a write's payload and a read
// reply waiting to be sent are taken from the server-wide pool, at most the
// connection's fair share (and kMaxInFlightBytes), and given back when the
// write is done or the reply sent. Replies queued but not sent count, since a
// client that does not read its replies would otherwise keep every read's
// data buffered. When the pool has no room for a request, it still runs, on
// the connection's own chunks: a write is received and written a chunk at a
// time by the reader; a read is "deferred": nothing is read until its reply
// is next to be sent, then it is read and sent a chunk at a time (structured
// replies: one data chunk each, so an error midway is still an error chunk;
// simple replies or DF: one header, and an error midway closes the
// connection, as the spec requires). A client that never reads its replies
// therefore holds at most its fair share and one chunk, and a good client
// always gets its requests served, whatever the others do.
//
// Every request is checked before it reaches the target, in the order the
// spec implies: command known, flags valid for it, write on a read-only export
// (EPERM), range inside the export (ENOSPC for writes past the end as qemu-nbd
// does, EINVAL otherwise), size and alignment (EINVAL). A write that is
// refused still has its payload consumed, so the stream stays in sync. A bad
// request magic ends the connection (the stream can no longer be parsed).
#include "exports/nbd/connection.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "core/log.h"

namespace strata::nbd {

namespace {
constexpr std::size_t kRecvBuffer = 64 * 1024;
constexpr std::size_t kTlsRecvBuffer = 64 * 1024;
constexpr uint32_t kMaxInFlight = 256;
constexpr uint64_t kMaxInFlightBytes = 128ull << 20;
// Reads are answered from the target's memory (read_view) only while fewer
// reply bytes than this wait to be sent.
constexpr uint64_t kViewBacklog = 4ull << 20;
// Replies sent by one sendmsg (or one splice) at most.
constexpr std::size_t kMaxBatch = 64;
constexpr std::string_view kBaseAllocation = "base:allocation";

// Suspends the connection's reader (or closer) until maybe_wake() resumes it.
struct Park {
  std::coroutine_handle<>& slot;
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) noexcept { slot = h; }
  void await_resume() const noexcept {}
};
}  // namespace

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

Connection::Connection(Server& server, Queue& q, int fd, uint64_t id, std::string peer)
    : server_(server), q_(q), fd_(fd), id_(id), peer_(std::move(peer)) {
  auto now = std::chrono::steady_clock::now();
  accepted_ = now;
  deadline_ = now + server_.options().handshake_timeout;
  first_bytes_deadline_ = std::min(deadline_, now + server_.options().first_bytes_timeout);
  rbuf_ = Buffer::get(kRecvBuffer);
  // splice(2) into the socket must not block the queue thread on a full
  // socket: it does unless the socket is O_NONBLOCK (io_uring's own socket
  // operations poll either way).
  if (splice_enabled()) {
    int fl = ::fcntl(fd_, F_GETFL);
    if (fl < 0 || ::fcntl(fd_, F_SETFL, fl | O_NONBLOCK) < 0) splice_broken_ = true;
  } else {
    splice_broken_ = true;
  }
}

Connection::~Connection() {
  if (fd_ >= 0) ::close(fd_);
  if (pipe_[0] >= 0) {
    ::close(pipe_[0]);
    ::close(pipe_[1]);
  }
  if (hdr_arena_) ::munmap(hdr_arena_, kHeaderArena);
}

void Connection::start() { run(); }

void Connection::stop_reading() { ::shutdown(fd_, SHUT_RD); }

void Connection::evict() {
  evicted_.store(true, std::memory_order_relaxed);
  ::shutdown(fd_, SHUT_RDWR);
}

Detached Connection::run() {
  server_.connection_opened(this);
  LOG_DEBUG("conn {}: connected from {}", id_, peer_);
  bool go = co_await handshake();
  if (go && !server_.handshake_done(this)) {
    LOG_INFO("conn {} ({}): no connection slot free (--max-connections) or evicted; closing", id_, peer_);
    go = false;
  }
  if (go) {
    in_handshake_ = false;
    server_.budget().joined();
    member_ = true;
    co_await transmission();
  }
  // Wait for every request to reply and the send queue to drain.
  reader_closing_ = true;
  while (in_flight_ > 0 || sending_) co_await Park{reader_waiting_};
  for (auto& r : out_) drop(r);
  out_.clear();
  CHECK(held_ == 0);
  if (member_) server_.budget().left();
  LOG_DEBUG("conn {}: closed", id_);
  server_.connection_closed(this);
  delete this;
}

// ------------------------------------------------------------------ reading

Task<int> Connection::raw_recv(std::span<std::byte> buf) {
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

Task<Result<>> Connection::fill() {
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

Task<Result<>> Connection::read_exact(std::byte* dst, std::size_t n) {
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

Task<Result<>> Connection::discard(uint64_t n) {
  while (n > 0) {
    if (rstart_ == rend_) CO_TRY(co_await fill());
    std::size_t k = std::min<uint64_t>(n, rend_ - rstart_);
    rstart_ += k;
    n -= k;
  }
  co_return Result<>{};
}

// ---------------------------------------------------------------- handshake

// Advances msg's iovecs past n bytes sent.
static void advance(msghdr& msg, std::size_t k) {
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

Task<Result<>> Connection::raw_send_all(msghdr& msg) {
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

Task<Result<>> Connection::flush_tls() {
  // Swap the ciphertext out first: decrypting (fill) may append to it while
  // this send is in flight.
  tls_pending_.clear();
  tls_pending_.swap(tls_->out());
  if (tls_pending_.empty()) co_return Result<>{};
  iovec iov{tls_pending_.data(), tls_pending_.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  co_return co_await raw_send_all(msg);
}

Task<Result<>> Connection::send_now(std::span<const std::byte> a, std::span<const std::byte> b) {
  if (tls_) {
    CO_TRY(tls_->send(a.data(), a.size()));
    CO_TRY(tls_->send(b.data(), b.size()));
    co_return co_await flush_tls();
  }
  iovec iov[2] = {{const_cast<std::byte*>(a.data()), a.size()}, {const_cast<std::byte*>(b.data()), b.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = b.empty() ? 1 : 2;
  co_return co_await raw_send_all(msg);
}

Task<Result<>> Connection::send_option_reply(uint32_t opt, uint32_t type, std::span<const std::byte> data) {
  std::byte h[20];
  put64(h, kRepMagic);
  put32(h + 8, opt);
  put32(h + 12, type);
  // An error's message is at most kMaxErrorMessage bytes (the spec's MUST).
  if ((type & kRepErrBit) && data.size() > kMaxErrorMessage) data = data.first(kMaxErrorMessage);
  put32(h + 16, static_cast<uint32_t>(data.size()));
  co_return co_await send_now(h, data);
}

uint16_t Connection::transmission_flags() const {
  Caps c = export_->target->caps();
  bool ro = export_->read_only || !c.can_write;
  uint16_t f = kTFlagHasFlags | kTFlagSendCache;
  if (ro) f |= kTFlagReadOnly;
  if (c.can_flush) f |= kTFlagSendFlush;
  if (!ro && c.can_fua) f |= kTFlagSendFua;
  if (!ro && c.can_trim) f |= kTFlagSendTrim;
  if (!ro && c.can_zero) f |= kTFlagSendWriteZeroes;
  if (!ro && c.can_zero && c.can_fast_zero) f |= kTFlagSendFastZero;
  if (structured_) f |= kTFlagSendDf;
  if (c.can_multi_conn) f |= kTFlagCanMultiConn;
  return f;
}

Task<Result<>> Connection::send_info_replies(uint32_t opt, const Export& e, std::span<const uint16_t> requests) {
  std::byte info[12];
  put16(info, kInfoExport);
  put64(info + 2, e.target->size());
  put16(info + 10, transmission_flags());
  CO_TRY(co_await send_option_reply(opt, kRepInfo, info));
  for (uint16_t r : requests) {
    if (r == kInfoName || (r == kInfoDescription && !e.description.empty())) {
      const std::string& s = r == kInfoName ? e.name : e.description;
      std::vector<std::byte> d(2 + s.size());
      put16(d.data(), r);
      std::memcpy(d.data() + 2, s.data(), s.size());
      CO_TRY(co_await send_option_reply(opt, kRepInfo, d));
    }
  }
  // Block sizes are always sent: clients that honour them (qemu, libnbd)
  // then never send a request an O_DIRECT target would reject.
  BlockSizes b = e.target->block_sizes();
  std::byte bs[14];
  put16(bs, kInfoBlockSize);
  put32(bs + 2, b.minimum);
  put32(bs + 6, std::max(b.preferred, b.minimum));
  put32(bs + 10, std::min(b.maximum, kMaxRequest));
  CO_TRY(co_await send_option_reply(opt, kRepInfo, bs));
  co_return Result<>{};
}

Task<Result<>> Connection::handle_meta_context(uint32_t opt, std::span<const std::byte> d) {
  // export name length, name, query count, queries (length + string).
  auto invalid = [&]() { return send_option_reply(opt, kRepErrInvalid); };
  // SET replaces the previous selection even when it fails (proto.md).
  if (opt == kOptSetMetaContext) {
    meta_export_.clear();
    contexts_.clear();
  }
  if (opt == kOptSetMetaContext && !structured_) {
    co_return co_await send_option_reply(opt, kRepErrInvalid);
  }
  if (d.size() < 8) co_return co_await invalid();
  uint32_t nlen = get32(d.data());
  if (nlen > kMaxStringLength || d.size() < 8ull + nlen) co_return co_await invalid();
  std::string name(reinterpret_cast<const char*>(d.data() + 4), nlen);
  uint32_t nq = get32(d.data() + 4 + nlen);
  std::size_t pos = 8 + nlen;
  std::vector<std::string> queries;
  for (uint32_t i = 0; i < nq; ++i) {
    if (d.size() - pos < 4) co_return co_await invalid();
    uint32_t ql = get32(d.data() + pos);
    pos += 4;
    if (ql > kMaxStringLength || d.size() - pos < ql) co_return co_await invalid();
    queries.emplace_back(reinterpret_cast<const char*>(d.data() + pos), ql);
    pos += ql;
  }
  if (pos != d.size()) co_return co_await invalid();
  auto e = server_.find_export(name);
  if (!e) co_return co_await send_option_reply(opt, kRepErrUnknown);

  bool list = opt == kOptListMetaContext;
  std::vector<std::string> available{std::string(kBaseAllocation)};
  for (auto& c : e->target->contexts()) available.push_back(std::move(c));
  // LIST answers a namespace ("base:", "strata:") or a prefix ending in ':'
  // ("strata:dirty:") with every context under it; SET takes exact names.
  auto matches = [&](const std::string& ctx, const std::string& q) {
    if (ctx == q) return true;
    return list && !q.empty() && q.back() == ':' && ctx.starts_with(q);
  };
  std::vector<std::string> chosen;
  for (const auto& ctx : available) {
    bool pick = list && queries.empty();
    for (const auto& q : queries) pick = pick || matches(ctx, q);
    if (pick) chosen.push_back(ctx);
  }
  if (!list) meta_export_ = name;
  uint32_t next_id = 1;
  for (const auto& ctx : chosen) {
    uint32_t id = list ? 0 : next_id++;
    if (!list) contexts_.push_back({id, ctx});
    std::vector<std::byte> r(4 + ctx.size());
    put32(r.data(), id);
    std::memcpy(r.data() + 4, ctx.data(), ctx.size());
    CO_TRY(co_await send_option_reply(opt, kRepMetaContext, r));
  }
  co_return co_await send_option_reply(opt, kRepAck);
}

Task<Result<>> Connection::start_tls() {
  CO_TRY_ASSIGN(tls_, TlsSession::create(*server_.options().tls));
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
  // The spec: everything negotiated before STARTTLS is forgotten.
  structured_ = false;
  meta_export_.clear();
  contexts_.clear();
  export_.reset();
  LOG_INFO("conn {} ({}): TLS established: {}", id_, peer_, tls_->describe());
  co_return Result<>{};
}

Task<bool> Connection::handshake() {
  std::byte greet[18];
  put64(greet, kMagic);
  put64(greet + 8, kOptMagic);
  put16(greet + 16, kFlagFixedNewstyle | kFlagNoZeroes);
  auto fail_log = [&](const Error& e) {
    if (evicted_.load(std::memory_order_relaxed)) {
      LOG_DEBUG("conn {} ({}): handshake evicted: {}", id_, peer_, e.message);
    } else {
      if (e.code == ETIMEDOUT) server_.handshake_timed_out();
      LOG_INFO("conn {} ({}): handshake ended: {}", id_, peer_, e.message);
    }
    return false;
  };
  {
    auto rr = co_await send_now(greet);
    if (!rr) co_return fail_log(rr.error());
  }
  std::byte cf[4];
  {
    auto rr = co_await read_exact(cf, 4);
    if (!rr) co_return fail_log(rr.error());
  }
  uint32_t cflags = get32(cf);
  if (!(cflags & kClientFixedNewstyle) || (cflags & ~(kClientFixedNewstyle | kClientNoZeroes))) {
    LOG_INFO("conn {} ({}): unsupported client flags {:#x}", id_, peer_, cflags);
    co_return false;
  }
  no_zeroes_ = cflags & kClientNoZeroes;

  std::vector<std::byte> data;
  for (uint32_t count = 0;; ++count) {
    if (count == kMaxOptions) {
      LOG_INFO("conn {} ({}): more than {} options; closing", id_, peer_, kMaxOptions);
      co_return false;
    }
    std::byte h[16];
    {
      auto rr = co_await read_exact(h, 16);
      if (!rr) co_return fail_log(rr.error());
    }
    if (get64(h) != kOptMagic) {
      LOG_INFO("conn {} ({}): bad option magic", id_, peer_);
      co_return false;
    }
    uint32_t opt = get32(h + 8);
    uint32_t len = get32(h + 12);
    if (len > kMaxOptionLength) {
      if (opt == kOptExportName) co_return fail_log(Error{EINVAL, "export name too long"});
      if (len > kMaxSkippedOption) {
        // Not worth reading to the end: a 4 GiB option would hold the slot
        // until the handshake deadline.
        LOG_INFO("conn {} ({}): option {} of {} bytes; closing", id_, peer_, opt, len);
        co_return false;
      }
      {
        auto rr = co_await discard(len);
        if (!rr) co_return fail_log(rr.error());
      }
      {
        auto rr = co_await send_option_reply(opt, kRepErrTooBig);
        if (!rr) co_return fail_log(rr.error());
      }
      continue;
    }
    data.resize(len);
    {
      auto rr = co_await read_exact(data.data(), len);
      if (!rr) co_return fail_log(rr.error());
    }

    auto next = co_await handle_option(opt, data);
    if (!next) co_return fail_log(next.error());
    if (*next == OptionResult::kClose) co_return false;
    if (*next == OptionResult::kTransmission) co_return true;
  }
}

// g++ 12 miscompiles co_await inside switch cases, so options (and commands
// below) are dispatched with if/else chains.
Task<Result<Connection::OptionResult>> Connection::handle_option(uint32_t opt, std::vector<std::byte>& data) {
  const uint32_t len = static_cast<uint32_t>(data.size());
  const TlsMode mode = server_.options().tls ? server_.options().tls->mode() : TlsMode::kOff;
  if (mode == TlsMode::kRequire && !tls_ && opt != kOptStartTls && opt != kOptAbort) {
    // No export is looked up, let alone opened, before TLS.
    if (opt == kOptExportName) {
      LOG_INFO("conn {} ({}): EXPORT_NAME before STARTTLS with --tls=require; closing", id_, peer_);
      co_return OptionResult::kClose;
    }
    CO_TRY(co_await send_option_reply(opt, kRepErrTlsReqd));
    co_return OptionResult::kContinue;
  }
  if (opt == kOptStartTls && mode != TlsMode::kOff) {
    if (tls_ || len != 0) {
      CO_TRY(co_await send_option_reply(opt, kRepErrInvalid));
      co_return OptionResult::kContinue;
    }
    // Anything the client sent after STARTTLS must be TLS: plaintext already
    // buffered here would otherwise be parsed as options after the upgrade
    // (the CVE-2021-3716 class). Refuse it.
    if (rstart_ != rend_) {
      LOG_WARN("conn {} ({}): {} plaintext bytes arrived after STARTTLS; closing", id_, peer_, rend_ - rstart_);
      co_return OptionResult::kClose;
    }
    CO_TRY(co_await send_option_reply(opt, kRepAck));
    CO_TRY(co_await start_tls());
    co_return OptionResult::kContinue;
  }
  if (opt == kOptExportName) {
    std::string name(reinterpret_cast<const char*>(data.data()), data.size());
    export_ = server_.find_export(name);
    if (!export_) {
      LOG_INFO("conn {} ({}): unknown export '{}'", id_, peer_, name);
      co_return OptionResult::kClose;
    }
    if (meta_export_ != name) contexts_.clear();
    std::byte r[10 + 124] = {};
    put64(r, export_->target->size());
    put16(r + 8, transmission_flags());
    CO_TRY(co_await send_now({r, no_zeroes_ ? 10u : sizeof r}));
    co_return OptionResult::kTransmission;
  }
  if (opt == kOptAbort) {
    if (len == 0) (void)co_await send_option_reply(opt, kRepAck);
    co_return OptionResult::kClose;
  }
  if (opt == kOptList) {
    if (len != 0) {
      CO_TRY(co_await send_option_reply(opt, kRepErrInvalid));
      co_return OptionResult::kContinue;
    }
    for (const auto& e : server_.exports()) {
      std::vector<std::byte> d(4 + e->name.size() + e->description.size());
      put32(d.data(), static_cast<uint32_t>(e->name.size()));
      std::memcpy(d.data() + 4, e->name.data(), e->name.size());
      std::memcpy(d.data() + 4 + e->name.size(), e->description.data(), e->description.size());
      CO_TRY(co_await send_option_reply(opt, kRepServer, d));
    }
    CO_TRY(co_await send_option_reply(opt, kRepAck));
    co_return OptionResult::kContinue;
  }
  if (opt == kOptInfo || opt == kOptGo) {
    uint32_t nlen = len >= 6 ? get32(data.data()) : 0;
    uint16_t nreq = len >= 6 && nlen <= len - 6 ? get16(data.data() + 4 + nlen) : 0;
    if (len < 6 || nlen > len - 6 || len != 6 + nlen + 2u * nreq) {
      CO_TRY(co_await send_option_reply(opt, kRepErrInvalid));
      co_return OptionResult::kContinue;
    }
    std::string name(reinterpret_cast<const char*>(data.data() + 4), nlen);
    std::vector<uint16_t> reqs(nreq);
    for (uint16_t i = 0; i < nreq; ++i) reqs[i] = get16(data.data() + 6 + nlen + 2 * i);
    auto e = server_.find_export(name);
    if (!e) {
      // The name shortened: the message stays well under the spec's limit.
      std::string msg = "unknown export '" + (name.size() > 256 ? name.substr(0, 256) + "..." : name) + "'";
      CO_TRY(co_await send_option_reply(opt, kRepErrUnknown,
                                        {reinterpret_cast<const std::byte*>(msg.data()), msg.size()}));
      co_return OptionResult::kContinue;
    }
    export_ = e;
    CO_TRY(co_await send_info_replies(opt, *e, reqs));
    CO_TRY(co_await send_option_reply(opt, kRepAck));
    if (opt == kOptGo) {
      if (meta_export_ != name) contexts_.clear();
      co_return OptionResult::kTransmission;
    }
    export_.reset();
    co_return OptionResult::kContinue;
  }
  if (opt == kOptStructuredReply) {
    if (len != 0) {
      CO_TRY(co_await send_option_reply(opt, kRepErrInvalid));
    } else {
      structured_ = true;
      CO_TRY(co_await send_option_reply(opt, kRepAck));
    }
    co_return OptionResult::kContinue;
  }
  if (opt == kOptListMetaContext || opt == kOptSetMetaContext) {
    CO_TRY(co_await handle_meta_context(opt, data));
    co_return OptionResult::kContinue;
  }
  // STARTTLS lands here when TLS is off (--tls=off): the spec's answer for a
  // server without TLS is ERR_UNSUP.
  CO_TRY(co_await send_option_reply(opt, kRepErrUnsup));
  co_return OptionResult::kContinue;
}

// ------------------------------------------------------------- transmission

uint32_t Connection::check_request(const Request& r) const {
  const Caps c = export_->target->caps();
  const bool ro = export_->read_only || !c.can_write;
  const uint64_t size = export_->target->size();
  constexpr uint16_t kKnown = kCmdFlagFua | kCmdFlagNoHole | kCmdFlagDf | kCmdFlagReqOne | kCmdFlagFastZero;
  if (r.flags & ~kKnown) return kEINVAL;
  uint16_t allowed = kCmdFlagFua;
  bool is_write = false;
  switch (r.type) {
    case kCmdRead:
      if (structured_) allowed |= kCmdFlagDf;
      break;
    case kCmdWrite:
      is_write = true;
      break;
    case kCmdFlush:
      if (!c.can_flush) return kEINVAL;
      return (r.flags & ~allowed) ? uint32_t{kEINVAL} : 0u;
    case kCmdTrim:
      is_write = true;
      if (!ro && !c.can_trim) return kEINVAL;
      break;
    case kCmdWriteZeroes:
      is_write = true;
      allowed |= kCmdFlagNoHole;
      if (c.can_fast_zero) allowed |= kCmdFlagFastZero;
      break;
    case kCmdCache:
      break;
    case kCmdBlockStatus:
      allowed |= kCmdFlagReqOne;
      if (contexts_.empty()) return kEINVAL;
      if (r.length == 0) return kEINVAL;
      break;
    default:
      return kEINVAL;
  }
  if (r.flags & ~allowed) return kEINVAL;
  if (is_write && ro) return kEPERM;
  if (!in_range(size, r.offset, r.length))
    return (r.type == kCmdWrite || r.type == kCmdWriteZeroes) ? uint32_t{kENOSPC} : uint32_t{kEINVAL};
  if ((r.type == kCmdRead || r.type == kCmdWrite) && r.length > kMaxRequest) return kEINVAL;
  uint32_t align = c.can_write || r.type == kCmdRead ? export_->target->block_sizes().minimum : 1;
  if (align > 1 && r.type != kCmdBlockStatus && r.type != kCmdCache &&
      (r.offset % align || r.length % align))
    return kEINVAL;
  return 0;
}

Task<void> Connection::transmission() {
  LOG_DEBUG("conn {}: transmission on export '{}'", id_, export_->name);
  serving_.store(export_->target.get(), std::memory_order_release);
  for (;;) {
    while (reader_must_wait()) co_await Park{reader_waiting_};
    while (rend_ - rstart_ < kRequestSize) {
      auto r = co_await fill();
      if (!r) {
        LOG_DEBUG("conn {}: {}", id_, r.error().message);
        co_return;
      }
    }
    const std::byte* h = rbuf_.data() + rstart_;
    if (get32(h) != kRequestMagic) {
      LOG_WARN("conn {} ({}): bad request magic {:#x}; closing", id_, peer_, get32(h));
      co_return;
    }
    Request req{get16(h + 4), get16(h + 6), get64(h + 8), get64(h + 16), get32(h + 24)};
    rstart_ += kRequestSize;
    if (req.type == kCmdDisc) co_return;

    uint32_t err = check_request(req);
    Buffer payload;
    if (req.type == kCmdWrite) {
      if (err || req.length > kMaxRequest) {
        auto dr = co_await discard(req.length);
        if (!dr) co_return;
        reply_error(req, err ? err : kEINVAL, "write refused");
        continue;
      }
      if (!take(req.length)) {
        ++in_flight_;
        bool ok = co_await write_in_chunks(req);
        --in_flight_;
        if (!ok || dead_) co_return;
        continue;
      }
      payload = Buffer::get(req.length);
      auto rr = co_await read_exact(payload.data(), req.length);
      if (!rr) {
        give(req.length);
        LOG_DEBUG("conn {}: {}", id_, rr.error().message);
        co_return;
      }
    } else if (err) {
      reply_error(req, err, "request refused");
      continue;
    }
    ++in_flight_;
    serve(req, std::move(payload));
    if (dead_) co_return;
  }
}

Detached Connection::serve(Request r, Buffer payload) {
  const auto& t = export_->target;
  Result<> res;
  Reply reply;
  IoFlags f;
  f.fua = r.flags & kCmdFlagFua;
  if (r.type == kCmdRead) {
    // Straight from the target's memory when it has the bytes at hand (a
    // mapped page cache): no buffer, no copy into it, no suspension. Not
    // under TLS: there strata's own code would read the mapping, and a file
    // truncated under it would be SIGBUS, where the kernel's copy in sendmsg
    // fails the send with EFAULT (the connection is closed). Not behind a
    // backlog of replies (a client that reads slowly): the target checked
    // that the bytes are in memory now, and they are copied when sent, so
    // the send must follow soon.
    std::optional<std::span<const std::byte>> view;
    if (!tls_ && queued_bytes_ < kViewBacklog) view = t->read_view(q_, r.offset, r.length);
    Buffer data;
    if (!view && r.length > 0 && !take(r.length)) {
      reply.deferred = true;
      reply.req = r;
      --in_flight_;
      queue_reply(std::move(reply));
      maybe_wake();
      co_return;
    }
    if (!view) {
      data = Buffer::get(r.length);
      reply.pooled = r.length;
      res = co_await t->read(q_, data.span(), r.offset);
    }
    if (res && r.length > 0) {
      if (structured_) {
        put32(reply.hdr.data(), kStructuredReplyMagic);
        put16(reply.hdr.data() + 4, kReplyFlagDone);
        put16(reply.hdr.data() + 6, kReplyOffsetData);
        put64(reply.hdr.data() + 8, r.cookie);
        put32(reply.hdr.data() + 16, r.length + 8);
        put64(reply.hdr.data() + 20, r.offset);
        reply.hdr_len = 28;
      } else {
        put32(reply.hdr.data(), kSimpleReplyMagic);
        put32(reply.hdr.data() + 4, 0);
        put64(reply.hdr.data() + 8, r.cookie);
        reply.hdr_len = kSimpleReplySize;
      }
      reply.data = std::move(data);
      reply.view = view ? view->data() : nullptr;
      reply.data_len = r.length;
    } else if (res && structured_) {
      // A zero-length read: no data chunk, but a read must never get a
      // simple reply once structured replies are negotiated (proto.md).
      put32(reply.hdr.data(), kStructuredReplyMagic);
      put16(reply.hdr.data() + 4, kReplyFlagDone);
      put16(reply.hdr.data() + 6, kReplyNone);
      put64(reply.hdr.data() + 8, r.cookie);
      put32(reply.hdr.data() + 16, 0);
      reply.hdr_len = kStructuredHeaderSize;
    }
  } else if (r.type == kCmdWrite) {
    res = co_await t->write(q_, payload.span(), r.offset, f);
    payload = Buffer();
    give(r.length);
  } else if (r.type == kCmdFlush) {
    res = co_await t->flush(q_);
  } else if (r.type == kCmdTrim) {
    res = co_await t->trim(q_, r.offset, r.length, f);
  } else if (r.type == kCmdWriteZeroes) {
    f.may_trim = !(r.flags & kCmdFlagNoHole);
    f.fast_zero = r.flags & kCmdFlagFastZero;
    res = co_await t->zero(q_, r.offset, r.length, f);
  } else if (r.type == kCmdCache) {
    res = co_await t->cache(q_, r.offset, r.length);
  } else if (r.type == kCmdBlockStatus) {
    // One chunk per chosen context; all are computed first, so an error
    // is the only reply when any context fails.
    std::vector<Extents> all;
    for (const auto& [id, name] : contexts_) {
      Result<Extents> e;
      if (name == kBaseAllocation)
        e = co_await t->extents(q_, r.offset, r.length);
      else
        e = co_await t->context_extents(q_, name, r.offset, r.length);
      if (!e) {
        res = fail(std::move(e.error()));
        break;
      }
      all.push_back(std::move(*e));
    }
    if (res)
      for (std::size_t i = 0; i < all.size(); ++i)
        reply_block_status(r, contexts_[i].first, all[i], i + 1 == all.size());
  }
  --in_flight_;
  if (!res) {
    drop(reply, /*queued=*/false);
    bool expected = r.type == kCmdWriteZeroes && f.fast_zero && res.error().code == ENOTSUP;
    if (!expected) LOG_WARN("conn {}: cmd {} {}+{}: {}", id_, r.type, r.offset, r.length, res.error().message);
    reply_error(r, errno_to_nbd(res.error().code), res.error().message);
  } else if (reply.hdr_len > 0) {
    queue_reply(std::move(reply));
  } else if (r.type != kCmdBlockStatus) {
    reply_ok(r);
  }
  // Last: may resume the reader or the closer, which may free this object.
  maybe_wake();
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

void Connection::reply_ok(const Request& r) {
  Reply reply;
  put32(reply.hdr.data(), kSimpleReplyMagic);
  put32(reply.hdr.data() + 4, 0);
  put64(reply.hdr.data() + 8, r.cookie);
  reply.hdr_len = kSimpleReplySize;
  queue_reply(std::move(reply));
}

void Connection::reply_error(const Request& r, uint32_t err, std::string_view msg) {
  queue_reply(error_reply(r, err, msg));
}

Connection::Reply Connection::error_reply(const Request& r, uint32_t err, std::string_view msg) const {
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

void Connection::queue_reply(Reply r) {
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
        ::shutdown(fd_, SHUT_RDWR);
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
    if (tls_) {
      // One TLS record stream for the whole batch (corked), one send.
      tls_->cork();
      for (std::size_t i = 0; i < niov && sent; ++i)
        sent = tls_->send(static_cast<const std::byte*>(iov[i].iov_base), iov[i].iov_len);
      if (sent) sent = tls_->uncork();
      if (sent) sent = co_await flush_tls();
    } else {
      bool spliced = false;
      if (splice_ok(batch)) {
        auto r = co_await splice_batch(batch);
        if (!r) sent = fail(std::move(r.error()));
        spliced = !r || *r;
      }
      if (!spliced) {
        msghdr msg{};
        msg.msg_iov = iov;
        msg.msg_iovlen = niov;
        sent = co_await raw_send_all(msg);
      }
    }
    if (!sent) {
      if (sent.error().code == EFAULT)  // a mapped file shrank under a reply
        LOG_WARN("conn {} ({}): {}; closing", id_, peer_, sent.error().message);
      else
        LOG_DEBUG("conn {}: {}", id_, sent.error().message);
      dead_ = true;
      ::shutdown(fd_, SHUT_RDWR);
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

bool Connection::splice_enabled() {
  static const bool on = [] {
    const char* e = getenv("STRATA_SPLICE");
    return !(e && std::string_view(e) == "off");
  }();
  return on;
}

bool Connection::splice_ok(std::size_t batch) {
  if (splice_broken_) return false;
  // Only a batch that carries a view and nothing but views: data in
  // buffers is sent by sendmsg (those buffers are reused at once; a pipe
  // would still reference them), and header-only batches (write
  // acknowledgements) cost fewer system calls there.
  bool any = false;
  for (std::size_t i = 0; i < batch; ++i) {
    if (!out_[i].data_len) continue;
    if (!out_[i].view) return false;
    any = true;
  }
  if (!any) return false;
  if (pipe_[0] < 0) {
    if (::pipe2(pipe_, O_CLOEXEC | O_NONBLOCK) < 0) {
      splice_broken_ = true;
      return false;
    }
    // 1 MiB if allowed; less than 64 KiB (a user over its pipe page quota
    // gets 2 slots) would cost a system call per page: sendmsg then.
    (void)::fcntl(pipe_[1], F_SETPIPE_SZ, 1 << 20);
    if (::fcntl(pipe_[1], F_GETPIPE_SZ) < (64 << 10)) {
      stop_splicing();
      return false;
    }
  }
  return true;
}

void Connection::stop_splicing() {
  splice_broken_ = true;
  if (pipe_[0] >= 0) {
    ::close(pipe_[0]);
    ::close(pipe_[1]);
    pipe_[0] = pipe_[1] = -1;
  }
}

Task<Result<bool>> Connection::splice_batch(std::size_t batch) {
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
      stop_splicing();
      co_return false;
    }
  }
  iovec iov[2 * kMaxBatch];
  std::size_t niov = 0, total = 0;
  for (std::size_t i = 0; i < batch; ++i) {
    const Reply& r = out_[i];
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
    if (fall_back) stop_splicing();
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
    (void)co_await q_.ring().op([fd](io_uring_sqe* sqe) { io_uring_prep_poll_add(sqe, fd, POLLOUT); });
  }
  co_return true;
}

bool Connection::reader_must_wait() const {
  return in_flight_ + out_.size() >= kMaxInFlight ||
         held_ >= std::min(kMaxInFlightBytes, server_.budget().fair_share());
}

bool Connection::take(uint64_t n) {
  if (held_ + n > kMaxInFlightBytes || !server_.budget().try_take(held_, n)) return false;
  held_ += n;
  return true;
}

void Connection::give(uint64_t n) {
  held_ -= n;
  server_.budget().give(n);
}

void Connection::drop(Reply& r, bool queued) {
  if (queued) queued_bytes_ -= r.data_len;
  r.data_len = 0;
  r.data = Buffer();
  if (r.pooled) give(std::exchange(r.pooled, 0));
}

Task<bool> Connection::write_in_chunks(const Request& r) {
  const auto& t = export_->target;
  const uint32_t chunk = server_.budget().chunk();
  Buffer buf = Buffer::get(std::min<uint64_t>(chunk, r.length));
  IoFlags f;
  f.fua = r.flags & kCmdFlagFua;
  Result<> res;
  for (uint64_t done = 0; done < r.length;) {
    uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(chunk, r.length - done));
    auto rr = co_await read_exact(buf.data(), n);
    if (!rr) {
      LOG_DEBUG("conn {}: {}", id_, rr.error().message);
      co_return false;
    }
    // After a failed piece the rest is still received (the stream stays in sync).
    if (res) res = co_await t->write(q_, buf.span().first(n), r.offset + done, f);
    done += n;
  }
  if (!res) {
    LOG_WARN("conn {}: cmd {} {}+{}: {}", id_, r.type, r.offset, r.length, res.error().message);
    reply_error(r, errno_to_nbd(res.error().code), res.error().message);
  } else {
    reply_ok(r);
  }
  co_return true;
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
      co_return co_await send_now({e.hdr.data(), e.hdr_len}, {e.data.data(), e.data_len});
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
      CO_TRY(co_await send_now({h.data(), hl}, buf.span().first(n)));
    else
      CO_TRY(co_await send_now(buf.span().first(n)));
    done += n;
  }
  co_return Result<>{};
}

void Connection::maybe_wake() {
  if (!reader_waiting_) return;
  // The reader parks while in-flight limits block it; run() parks, once the
  // reader has stopped, until requests and sends are done.
  bool go = reader_closing_ ? !(in_flight_ > 0 || sending_)
                            : !reader_must_wait();
  if (go) std::exchange(reader_waiting_, nullptr).resume();
}

}  // namespace strata::nbd
