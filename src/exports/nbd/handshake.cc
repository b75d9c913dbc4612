// Design notes
//
// Handshake (fixed newstyle only). Every read and write of the handshake runs
// against one deadline (ServerOptions::handshake_timeout) through io_uring
// linked timeouts, so a client that connects and stalls is closed on time and
// never holds a slot. Option payloads larger than kMaxOptionLength are
// consumed in fixed-size pieces and refused with ERR_TOO_BIG: no allocation
// is ever sized by the client beyond kMaxRequest (32 MiB).
#include "exports/nbd/connection.h"

#include <algorithm>
#include <cstring>

#include "core/log.h"

namespace strata::nbd {

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
    auto rr = co_await stream_.send_now(greet);
    if (!rr) co_return fail_log(rr.error());
  }
  std::byte cf[4];
  {
    auto rr = co_await stream_.read_exact(cf, 4);
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
      auto rr = co_await stream_.read_exact(h, 16);
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
        auto rr = co_await stream_.discard(len);
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
      auto rr = co_await stream_.read_exact(data.data(), len);
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
  if (mode == TlsMode::kRequire && !stream_.tls() && opt != kOptStartTls && opt != kOptAbort) {
    // No export is looked up, let alone opened, before TLS.
    if (opt == kOptExportName) {
      LOG_INFO("conn {} ({}): EXPORT_NAME before STARTTLS with --tls=require; closing", id_, peer_);
      co_return OptionResult::kClose;
    }
    CO_TRY(co_await send_option_reply(opt, kRepErrTlsReqd));
    co_return OptionResult::kContinue;
  }
  if (opt == kOptStartTls && mode != TlsMode::kOff) {
    if (stream_.tls() || len != 0) {
      CO_TRY(co_await send_option_reply(opt, kRepErrInvalid));
      co_return OptionResult::kContinue;
    }
    // Anything the client sent after STARTTLS must be TLS: plaintext already
    // buffered here would otherwise be parsed as options after the upgrade
    // (the CVE-2021-3716 class). Refuse it.
    if (stream_.buffered() != 0) {
      LOG_WARN("conn {} ({}): {} plaintext bytes arrived after STARTTLS; closing", id_, peer_, stream_.buffered());
      co_return OptionResult::kClose;
    }
    CO_TRY(co_await send_option_reply(opt, kRepAck));
    CO_TRY(co_await stream_.start_tls(*server_.options().tls));
    // The spec: everything negotiated before STARTTLS is forgotten.
    structured_ = false;
    meta_export_.clear();
    contexts_.clear();
    export_.reset();
    LOG_INFO("conn {} ({}): TLS established: {}", id_, peer_, stream_.tls()->describe());
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
    CO_TRY(co_await stream_.send_now({r, no_zeroes_ ? 10u : sizeof r}));
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

Task<Result<>> Connection::send_option_reply(uint32_t opt, uint32_t type, std::span<const std::byte> data) {
  std::byte h[20];
  put64(h, kRepMagic);
  put32(h + 8, opt);
  put32(h + 12, type);
  // An error's message is at most kMaxErrorMessage bytes (the spec's MUST).
  if ((type & kRepErrBit) && data.size() > kMaxErrorMessage) data = data.first(kMaxErrorMessage);
  put32(h + 16, static_cast<uint32_t>(data.size()));
  co_return co_await stream_.send_now(h, data);
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

Task<Result<>> Connection::send_info_replies(uint32_t opt, const Device& e, std::span<const uint16_t> requests) {
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

}  // namespace strata::nbd
