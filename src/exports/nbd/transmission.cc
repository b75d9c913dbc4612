// Design notes
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

#include <algorithm>
#include <optional>

#include "core/log.h"

namespace strata::nbd {

namespace {
// Reads are answered from the target's memory (read_view) only while fewer
// reply bytes than this wait to be sent.
constexpr uint64_t kViewBacklog = 4ull << 20;
}  // namespace

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
    while (stream_.buffered() < kRequestSize) {
      auto r = co_await stream_.fill();
      if (!r) {
        LOG_DEBUG("conn {}: {}", id_, r.error().message);
        co_return;
      }
    }
    const std::byte* h = stream_.peek();
    if (get32(h) != kRequestMagic) {
      LOG_WARN("conn {} ({}): bad request magic {:#x}; closing", id_, peer_, get32(h));
      co_return;
    }
    Request req{get16(h + 4), get16(h + 6), get64(h + 8), get64(h + 16), get32(h + 24)};
    stream_.consume(kRequestSize);
    if (req.type == kCmdDisc) co_return;

    uint32_t err = check_request(req);
    Buffer payload;
    if (req.type == kCmdWrite) {
      if (err || req.length > kMaxRequest) {
        auto dr = co_await stream_.discard(req.length);
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
      auto rr = co_await stream_.read_exact(payload.data(), req.length);
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
    if (!stream_.tls() && queued_bytes_ < kViewBacklog) view = t->read_view(q_, r.offset, r.length);
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

Task<bool> Connection::write_in_chunks(const Request& r) {
  const auto& t = export_->target;
  const uint32_t chunk = server_.budget().chunk();
  Buffer buf = Buffer::get(std::min<uint64_t>(chunk, r.length));
  IoFlags f;
  f.fua = r.flags & kCmdFlagFua;
  Result<> res;
  for (uint64_t done = 0; done < r.length;) {
    uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(chunk, r.length - done));
    auto rr = co_await stream_.read_exact(buf.data(), n);
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

}  // namespace strata::nbd
