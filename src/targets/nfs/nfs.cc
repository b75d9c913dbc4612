// Design notes
//
// Load (blocking, on the thread that loads the table): libnfs's synchronous
// API mounts the export, stats and opens the file, and each failure becomes
// its own message (bad URL, server unreachable, export not found, permission
// denied, not a regular file, offset not a multiple of 4096 or beyond the end,
// file too small). What the data path needs is kept: the file handle, the
// server's address and NFS port, rsize/wsize. The mount is then dropped: the
// data path speaks NFSv3 on its own connections (one per queue, NfsClient).
//
// Writes: see nfs.h. A WRITE is sent from the client's buffer; when its
// reply comes, the data is copied into the RetainedWrites log (one memcpy;
// libnfs encodes from the client's buffer). A FLUSH with nothing retained
// sends nothing. Rewriting after a verifier change waits for writes in
// flight to finish and holds new ones back (it is rare: a server restart),
// and replays the log in order, so a rewrite never lands on top of a newer
// write. Retained data is bounded by max_unstable (default 256 MiB, like
// the kernel client's dirty limits): past half of it a COMMIT starts in the
// background; past all of it, the write that crosses the limit waits for one.
#include "targets/nfs/nfs.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-mount.h>
#include <nfsc/libnfs-raw-nfs.h>
#include <nfsc/libnfs-raw-nfs4.h>
#include <poll.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cstring>

#include <fmt/core.h>

#include "core/log.h"

namespace strata {

using namespace std::chrono_literals;

namespace {

constexpr uint64_t kAlign = 4096;
constexpr uint64_t kDefaultMaxUnstable = 256ull << 20;
constexpr uint32_t kMaxXfer = 1u << 20;

// A classified message for a libnfs load error.
Error load_error(std::string_view what, std::string_view msg) {
  auto has = [&](std::string_view s) { return msg.find(s) != std::string_view::npos; };
  int code = EIO;
  std::string cause;
  if (has("ACCES") || has("ermission denied") || has("PERM")) {
    code = EACCES;
    cause = "permission denied";
  } else if (has("NOENT") || has("No such file") || has("not found")) {
    code = ENOENT;
    cause = "not found";
  } else if (has("onnect") || has("efused") || has("portmap") || has("unreachable") || has("timed out") ||
             has("resolve") || has("Timeout")) {
    code = EHOSTUNREACH;
    cause = "server unreachable";
  } else if (has("nfs_service failed")) {
    // libnfs 4.0's synchronous loop says only this when the socket to
    // rpcbind or the server fails.
    code = EHOSTUNREACH;
    cause = "server unreachable (no answer from its rpcbind, mountd or nfsd)";
  }
  if (cause.empty()) return Error{code, fmt::format("{}: {}", what, msg)};
  return Error{code, fmt::format("{}: {}: {}", what, cause, msg)};
}

// An NFSv4 server's largest READ and WRITE (FATTR4_MAXREAD, FATTR4_MAXWRITE:
// RFC 7530 5.8.2), asked with COMPOUND { PUTFH; GETATTR } on the load-time
// context; libnfs 4.0 does not ask and reports 4 KiB. 0 where unknown.
struct Nfs4Limits {
  uint64_t maxread = 0, maxwrite = 0;
};
Nfs4Limits nfs4_limits(nfs_context* nfs, const std::vector<uint8_t>& fh, std::chrono::milliseconds timeout) {
  struct State {
    bool done = false;
    Nfs4Limits lim;
  } st;
  constexpr uint32_t kMaxRead = 30, kMaxWrite = 31;  // FATTR4_MAXREAD, FATTR4_MAXWRITE
  uint32_t mask[2] = {(1u << kMaxRead) | (1u << kMaxWrite), 0};
  nfs_argop4 ops[2]{};
  ops[0].argop = OP_PUTFH;
  ops[0].nfs_argop4_u.opputfh.object.nfs_fh4_len = static_cast<u_int>(fh.size());
  ops[0].nfs_argop4_u.opputfh.object.nfs_fh4_val = reinterpret_cast<char*>(const_cast<uint8_t*>(fh.data()));
  ops[1].argop = OP_GETATTR;
  ops[1].nfs_argop4_u.opgetattr.attr_request.bitmap4_len = 2;
  ops[1].nfs_argop4_u.opgetattr.attr_request.bitmap4_val = mask;
  COMPOUND4args args{};
  args.argarray.argarray_len = 2;
  args.argarray.argarray_val = ops;
  rpc_context* rpc = nfs_get_rpc_context(nfs);
  auto cb = [](rpc_context*, int status, void* data, void* priv) {
    auto* s = static_cast<State*>(priv);
    s->done = true;
    auto* res = static_cast<COMPOUND4res*>(data);
    if (status != RPC_STATUS_SUCCESS || !res || res->status != NFS4_OK || res->resarray.resarray_len < 2) return;
    // libnfs 4.0 lays the array out 4-byte aligned: copy the entry out.
    nfs_resop4 op;
    std::memcpy(static_cast<void*>(&op), reinterpret_cast<const char*>(res->resarray.resarray_val) + sizeof op,
                sizeof op);
    if (op.resop != OP_GETATTR || op.nfs_resop4_u.opgetattr.status != NFS4_OK) return;
    const fattr4& a = op.nfs_resop4_u.opgetattr.GETATTR4res_u.resok4.obj_attributes;
    uint32_t got = a.attrmask.bitmap4_len > 0 ? a.attrmask.bitmap4_val[0] : 0;
    const auto* v = reinterpret_cast<const unsigned char*>(a.attr_vals.attrlist4_val);
    size_t left = a.attr_vals.attrlist4_len;
    auto u64 = [&](uint64_t* out) {  // attributes come in bit order
      if (left < 8) return;
      uint64_t x = 0;
      for (int i = 0; i < 8; ++i) x = (x << 8) | v[i];
      *out = x;
      v += 8;
      left -= 8;
    };
    if (got & (1u << kMaxRead)) u64(&s->lim.maxread);
    if (got & (1u << kMaxWrite)) u64(&s->lim.maxwrite);
  };
  if (rpc_nfs4_compound_async(rpc, cb, &args, &st) != 0) return {};
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (!st.done && std::chrono::steady_clock::now() < until) {
    pollfd p{rpc_get_fd(rpc), static_cast<short>(rpc_which_events(rpc)), 0};
    if (::poll(&p, 1, 100) < 0 && errno != EINTR) break;
    if (rpc_service(rpc, p.revents) < 0) break;
  }
  return st.lim;
}

struct NfsContext {
  nfs_context* nfs = nfs_init_context();
  ~NfsContext() {
    if (nfs) nfs_destroy_context(nfs);
  }
};

}  // namespace

// ---- RetainedWrites

namespace {

constexpr uint32_t kChunkBytes = 4u << 20;

// Copies a write into the log. A large one with streaming (non-temporal)
// stores: the log is written now and read back only after a server restart,
// so its lines need not be fetched into the cache (as plain stores do, to
// be overwritten) nor evict the lines the data path uses. On 1 MiB writes
// this halves the cost of keeping the copy (bench/relay-floor.c, copy+retain
// against copy+stream; RESULTS.md section 8).
void copy_out(std::byte* dst, std::span<const std::byte> src) {
#if defined(__SSE2__)
  constexpr std::size_t kStreamMin = 64 << 10;
  if (src.size() >= kStreamMin) {
    const std::byte* s = src.data();
    std::size_t n = src.size();
    std::size_t head = (16 - reinterpret_cast<uintptr_t>(dst) % 16) % 16;
    std::memcpy(dst, s, head);
    dst += head;
    s += head;
    n -= head;
    for (; n >= 64; dst += 64, s += 64, n -= 64) {
      __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
      __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16));
      __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 32));
      __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 48), d);
    }
    std::memcpy(dst, s, n);
    _mm_sfence();  // ordered before anything that reads the log
    return;
  }
#endif
  std::memcpy(dst, src.data(), src.size());
}

}  // namespace

RetainedWrites::RetainedWrites(uint64_t keep_bytes) : keep_bytes_(keep_bytes) {}

RetainedWrites::~RetainedWrites() {
  for (auto& c : chunks_) std::free(c.mem);
}

std::byte* RetainedWrites::alloc(uint32_t n, uint32_t* chunk) {
  if (cur_ != UINT32_MAX && chunks_[cur_].size - chunks_[cur_].used < n) {
    uint32_t old = cur_;
    cur_ = UINT32_MAX;
    if (chunks_[old].refs == 0) {
      chunks_[old].used = 0;
      free_.push_back(old);
    }
  }
  if (cur_ == UINT32_MAX) {
    uint32_t want = std::max(n, kChunkBytes);
    if (!free_.empty() && chunks_[free_.back()].size >= want) {
      cur_ = free_.back();
      free_.pop_back();
    } else {
      // A chunk slot with no memory, or a new one.
      uint32_t slot = UINT32_MAX;
      for (uint32_t i = 0; i < chunks_.size(); ++i)
        if (!chunks_[i].mem) {
          slot = i;
          break;
        }
      if (slot == UINT32_MAX) {
        slot = static_cast<uint32_t>(chunks_.size());
        chunks_.push_back({});
      }
      void* m = std::aligned_alloc(4096, (want + 4095) / 4096 * 4096);
      CHECK(m != nullptr);
      chunks_[slot] = Chunk{static_cast<std::byte*>(m), want, 0, 0};
      cur_ = slot;
    }
  }
  Chunk& c = chunks_[cur_];
  std::byte* p = c.mem + c.used;
  c.used += n;
  ++c.refs;
  *chunk = cur_;
  return p;
}

void RetainedWrites::release(uint32_t idx) {
  Chunk& c = chunks_[idx];
  if (--c.refs > 0 || idx == cur_) return;
  c.used = 0;
  if (static_cast<uint64_t>(free_.size()) * kChunkBytes < keep_bytes_ && c.size == kChunkBytes) {
    free_.push_back(idx);
  } else {
    std::free(c.mem);
    c = Chunk{};
  }
}

uint64_t RetainedWrites::append(uint64_t offset, std::span<const std::byte> data, uint64_t verf, bool stable) {
  Entry e;
  e.offset = offset;
  e.length = static_cast<uint32_t>(data.size());
  e.stable = stable;
  std::byte* p = alloc(e.length, &e.chunk);
  copy_out(p, data);
  e.data = p;
  e.seq = next_seq_++;
  e.verf = verf;
  bytes_ += e.length;
  log_.push_back(e);
  return e.seq;
}

bool RetainedWrites::settle(uint64_t upto, uint64_t verf) {
  for (const Entry& e : log_) {
    if (e.seq >= upto) break;
    if (!e.stable && e.verf != verf) return false;
  }
  drop_before(upto);
  return true;
}

std::vector<RetainedWrites::Entry> RetainedWrites::entries_before(uint64_t upto) const {
  std::vector<Entry> v;
  for (const Entry& e : log_) {
    if (e.seq >= upto) break;
    v.push_back(e);
  }
  return v;
}

void RetainedWrites::drop_before(uint64_t upto) {
  while (!log_.empty() && log_.front().seq < upto) {
    bytes_ -= log_.front().length;
    release(log_.front().chunk);
    log_.pop_front();
  }
}

// ---- load

Result<std::shared_ptr<Target>> NfsTarget::create(Params& p, Resolver& r) {
  (void)r;
  std::shared_ptr<NfsTarget> t(new NfsTarget());
  t->url_ = TRY(p.arg(0, "url"));
  t->offset_ = TRY(p.arg_u64(1, "offset"));
  auto number = [](std::string_view key, const std::string& v) -> Result<uint64_t> {
    auto n = parse_u64(v);
    if (!n) return fail(EINVAL, fmt::format("option {}={}: {}", key, v, n.error().message));
    return *n;
  };
  if (auto v = p.option("uid")) t->uid_opt_ = static_cast<int>(TRY(number("uid", *v)));
  if (auto v = p.option("gid")) t->gid_opt_ = static_cast<int>(TRY(number("gid", *v)));
  if (auto v = p.option("timeout")) {
    uint64_t s = TRY(number("timeout", *v));
    if (s == 0 || s > 3600) return fail(EINVAL, fmt::format("option timeout={}: must be 1..3600 seconds", *v));
    t->timeout_ = std::chrono::seconds(s);
  }
  if (auto v = p.option("version")) {
    if (*v != "3" && *v != "4") return fail(EINVAL, fmt::format("option version={}: must be 3 or 4", *v));
    t->ep_.version = *v == "4" ? 4 : 3;
  }
  if (auto v = p.option("max_unstable")) {
    auto n = parse_size(*v);
    if (!n) return fail(EINVAL, fmt::format("option max_unstable={}: {}", *v, n.error().message));
    t->max_unstable_ = *n;
    if (t->max_unstable_ < (1u << 20))
      return fail(EINVAL, fmt::format("option max_unstable={}: must be at least 1M", *v));
  }
  t->retained_.set_keep_bytes(t->max_unstable_);
  t->read_only_ = p.flag("ro") || p.read_only;
  TRY(p.finish(2));
  t->length_ = p.length;

  const std::string& url = t->url_;
  if (url.rfind("nfs://", 0) != 0)
    return fail(EINVAL, fmt::format("url '{}': must be nfs://host/export/path/file", url));
  if (t->offset_ % kAlign)
    return fail(EINVAL, fmt::format("offset {} is not a multiple of {}", t->offset_, kAlign));

  NfsContext ctx;
  if (!ctx.nfs) return fail(ENOMEM, "nfs_init_context failed");
  nfs_context* nfs = ctx.nfs;
  nfs_url* u = nfs_parse_url_full(nfs, url.c_str());
  if (!u)
    return fail(EINVAL, fmt::format("url '{}': {} (expected nfs://host/export/path/file)", url,
                                    nfs_get_error(nfs)));
  t->server_ = u->server ? u->server : "";
  t->export_ = u->path ? u->path : "";
  t->file_ = u->file ? u->file : "";
  nfs_destroy_url(u);
  if (t->server_.empty() || t->file_.empty() || t->file_ == "/")
    return fail(EINVAL, fmt::format("url '{}': needs a server and a file path (nfs://host/export/path/file)", url));
  if (t->export_.empty()) t->export_ = "/";

  t->ep_.uid = t->uid_opt_.value_or(static_cast<int>(::geteuid()));
  t->ep_.gid = t->gid_opt_.value_or(static_cast<int>(::getegid()));
  nfs_set_uid(nfs, t->ep_.uid);
  nfs_set_gid(nfs, t->ep_.gid);
  nfs_set_version(nfs, t->ep_.version == 4 ? 4 : NFS_V3);
  nfs_set_timeout(nfs, static_cast<int>(std::chrono::milliseconds(t->timeout_).count()));
  nfs_set_autoreconnect(nfs, 0);

  if (nfs_mount(nfs, t->server_.c_str(), t->export_.c_str()) != 0) {
    Error e = load_error(fmt::format("mount {}:{}", t->server_, t->export_), nfs_get_error(nfs));
    // Servers (ganesha) refuse an export they do not have with ACCES: the
    // server answered, so ask it for its list and say which it is.
    if (e.code == EACCES || e.code == ENOENT) {
      if (exportnode* list = mount_getexports(t->server_.c_str())) {
        bool found = false;
        std::string names;
        for (exportnode* n = list; n; n = n->ex_next) {
          if (n->ex_dir && t->export_ == n->ex_dir) found = true;
          if (n->ex_dir) names += fmt::format("{}{}", names.empty() ? "" : ", ", n->ex_dir);
        }
        mount_free_export_list(list);
        if (!found)
          return fail(ENOENT, fmt::format("mount {}:{}: export not found (the server exports: {})", t->server_,
                                          t->export_, names.empty() ? "nothing" : names));
      }
    }
    return fail(std::move(e));
  }

  nfs_stat_64 st{};
  if (nfs_stat64(nfs, t->file_.c_str(), &st) != 0)
    return fail(load_error(fmt::format("file {} on {}:{}", t->file_, t->server_, t->export_), nfs_get_error(nfs)));
  t->identity_ = fmt::format("nfs:{}:{}:{}:{}:{}.{}:{}.{}", t->url_, st.nfs_dev, st.nfs_ino, st.nfs_size, st.nfs_mtime,
                             st.nfs_mtime_nsec, st.nfs_ctime, st.nfs_ctime_nsec);
  if (!S_ISREG(st.nfs_mode))
    return fail(EINVAL, fmt::format("file {} on {}:{}: not a regular file", t->file_, t->server_, t->export_));
  if (t->offset_ > st.nfs_size)
    return fail(EINVAL, fmt::format("offset {} is beyond the end of {} ({} bytes)", t->offset_, t->file_,
                                    st.nfs_size));
  if (st.nfs_size - t->offset_ < t->length_)
    return fail(EINVAL, fmt::format("file too small: need {} bytes from offset {}, {} has {}", t->length_,
                                    t->offset_, t->file_, st.nfs_size));

  nfsfh* fh = nullptr;
  if (nfs_open(nfs, t->file_.c_str(), t->read_only_ ? O_RDONLY : O_RDWR, &fh) != 0) {
    Error e = load_error(fmt::format("open {} for {} as uid {} gid {}", t->file_,
                                     t->read_only_ ? "reading" : "writing", t->ep_.uid, t->ep_.gid),
                         nfs_get_error(nfs));
    if (e.code == EACCES)
      e.message += " (a root-squashing server needs uid=/gid= of the file's owner; or add `ro`)";
    return fail(std::move(e));
  }
  // libnfs 4.0 keeps struct nfs_fh private; its layout is {int len; char* val;}.
  struct FhView {
    int len;
    char* val;
  };
  const auto* raw = reinterpret_cast<const FhView*>(nfs_get_fh(fh));
  if (!raw || raw->len <= 0 || raw->len > 128)
    return fail(EIO, fmt::format("open {}: unexpected file handle from libnfs", t->file_));
  t->ep_.fh.assign(reinterpret_cast<const uint8_t*>(raw->val), reinterpret_cast<const uint8_t*>(raw->val) + raw->len);
  t->rsize_ = static_cast<uint32_t>(std::clamp<uint64_t>(nfs_get_readmax(nfs), kAlign, kMaxXfer));
  t->wsize_ = static_cast<uint32_t>(std::clamp<uint64_t>(nfs_get_writemax(nfs), kAlign, kMaxXfer));
  if (t->ep_.version == 4) {
    // libnfs 4.0 does not ask an NFSv4 server for its limits (it reports
    // 4 KiB): ask (GETATTR maxread/maxwrite), up to 1 MiB. A server that
    // does not say gets 64 KiB writes (a record larger than a server takes
    // is dropped with the connection: knfsd's limit is RAM/4096 under 4 GiB)
    // and 1 MiB reads (a larger READ is only answered short).
    Nfs4Limits lim = nfs4_limits(nfs, t->ep_.fh, std::min<std::chrono::milliseconds>(t->timeout_, 10s));
    t->rsize_ = static_cast<uint32_t>(lim.maxread ? std::clamp<uint64_t>(lim.maxread, kAlign, kMaxXfer) : kMaxXfer);
    t->wsize_ = static_cast<uint32_t>(lim.maxwrite ? std::clamp<uint64_t>(lim.maxwrite, kAlign, kMaxXfer)
                                                   : 64 * 1024);
  }

  // The address and NFS port this mount talks to: reconnects go straight there.
  sockaddr_storage ss{};
  socklen_t sl = sizeof ss;
  int fd = rpc_get_fd(nfs_get_rpc_context(nfs));
  if (fd < 0 || ::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &sl) < 0)
    return fail(EIO, fmt::format("{}: cannot find the NFS server's address", t->server_));
  char host[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    t->ep_.port = ntohs(a->sin_port);
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    t->ep_.port = ntohs(a->sin6_port);
  }
  t->ep_.server = host;
  t->ep_.stall = std::clamp<std::chrono::milliseconds>(std::chrono::milliseconds(t->timeout_) / 2, 1000ms, 15000ms);
  nfs_close(nfs, fh);
  nfs_umount(nfs);
  LOG_INFO("nfs {}: {} bytes at offset {}, NFSv{} server {} port {}, rsize {} wsize {}, uid {} gid {}", url,
           t->length_, t->offset_, t->ep_.version, t->ep_.server, t->ep_.port, t->rsize_, t->wsize_, t->ep_.uid,
           t->ep_.gid);
  return t;
}

NfsTarget::~NfsTarget() {
  for (int i = 0; i < kMaxQueues; ++i) delete clients_[i].load();
}

Caps NfsTarget::caps() const {
  Caps c;
  c.can_write = !read_only_;
  c.can_flush = true;
  c.can_fua = true;
  c.can_trim = false;
  c.can_zero = !read_only_;
  c.can_fast_zero = false;
  c.can_extents = false;
  c.can_cache = false;
  c.can_multi_conn = true;  // a COMMIT covers writes from every queue's connection
  return c;
}

BlockSizes NfsTarget::block_sizes() const {
  BlockSizes b;
  b.preferred = 4096;
  return b;
}

// The file as it was at load (its fileid, size, mtime and ctime): a file
// replaced or changed by another client between loads gets another identity.
// Read-only use only: a change by another host while served is not seen
// (shared layers are never written; docs/targets/cache.md).
std::string NfsTarget::identity() const {
  return read_only_ ? fmt::format("{}@{}+{}", identity_, offset_, length_) : std::string();
}

std::string NfsTarget::table_line() const {
  std::string s = fmt::format("nfs {} {}", url_, offset_);
  if (uid_opt_) s += fmt::format(" uid={}", *uid_opt_);
  if (gid_opt_) s += fmt::format(" gid={}", *gid_opt_);
  if (timeout_ != 30s) s += fmt::format(" timeout={}", timeout_.count());
  if (max_unstable_ != kDefaultMaxUnstable) s += fmt::format(" max_unstable={}", max_unstable_);
  if (ep_.version == 4) s += " version=4";
  if (read_only_) s += " ro";
  return s;
}

std::string NfsTarget::where() const { return fmt::format("nfs {}", url_); }

void NfsTarget::info(InfoSink& out) const {
  out.add("url", url_);
  out.add("server", fmt::format("{}:{}", ep_.server, ep_.port));
  uint64_t in_flight = 0, queued = 0, connected = 0, connects = 0, failures = 0, disconnects = 0, resent = 0,
           timeouts = 0, read_calls = 0, write_calls = 0, partial = 0;
  for (int i = 0; i < kMaxQueues; ++i) {
    NfsClient* c = clients_[i].load(std::memory_order_acquire);
    if (!c) continue;
    const auto& s = c->stats();
    in_flight += s.in_flight.load(std::memory_order_relaxed);
    queued += s.queued.load(std::memory_order_relaxed);
    connected += c->connected();
    uint64_t n = s.connects.load(std::memory_order_relaxed);
    connects += n;
    failures += s.connect_failures.load(std::memory_order_relaxed);
    disconnects += s.disconnects.load(std::memory_order_relaxed);
    resent += s.resent.load(std::memory_order_relaxed);
    timeouts += s.timeouts.load(std::memory_order_relaxed);
    read_calls += s.read_calls.load(std::memory_order_relaxed);
    write_calls += s.write_calls.load(std::memory_order_relaxed);
    partial += s.partial_sends.load(std::memory_order_relaxed);
  }
  out.add("nfs_in_flight", in_flight);
  out.add("nfs_queued", queued);
  out.add("connections", connected);
  out.add("connects", connects);
  out.add("reconnects", disconnects);
  out.add("connect_failures", failures);
  out.add("calls_resent", resent);
  out.add("calls_timed_out", timeouts);
  out.add("read_calls", read_calls);
  out.add("write_calls", write_calls);
  out.add("partial_sends", partial);
  out.add("commits", commits_.load(std::memory_order_relaxed));
  out.add("verifier_changes", verifier_changes_.load(std::memory_order_relaxed));
  out.add("rewritten_bytes", rewritten_bytes_.load(std::memory_order_relaxed));
  out.add("unstable_bytes", retained_bytes_.load(std::memory_order_relaxed));
  stats_.report(out);
}

NfsClient& NfsTarget::client(Queue& q) {
  auto& slot = clients_[q.id()];
  NfsClient* c = slot.load(std::memory_order_relaxed);
  if (!c) {
    c = new NfsClient(q, ep_);
    slot.store(c, std::memory_order_release);
  }
  return *c;
}

void NfsTarget::note_verf(uint64_t v) {
  uint64_t old = last_verf_.exchange(v, std::memory_order_relaxed);
  if (old != 0 && old != v) {
    verifier_changes_.fetch_add(1, std::memory_order_relaxed);
    LOG_WARN("{}: the server's write verifier changed (it restarted); unstable writes will be sent again",
             where());
  }
}

// ---- data path

Task<Result<>> NfsTarget::read(Queue& q, std::span<std::byte> buf, uint64_t offset) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.reads);
  IoStats::bump(stats_.read_bytes, buf.size());
  NfsClient& c = client(q);
  const auto dl = deadline();
  uint64_t at = offset_ + offset;
  while (!buf.empty()) {
    NfsClient::Call call;
    call.kind = NfsClient::Kind::kRead;
    call.offset = at;
    call.count = static_cast<uint32_t>(std::min<uint64_t>(buf.size(), rsize_));
    call.rdata = buf.data();
    call.deadline = dl;
    co_await c.run(call);
    if (call.failed) {
      IoStats::bump(stats_.errors);
      co_return fail(with_context(std::move(call.error), where()));
    }
    if (call.done_count == 0) {
      if (!call.eof) {
        IoStats::bump(stats_.errors);
        co_return fail(EIO, fmt::format("{}: READ at {} returned nothing", where(), at));
      }
      // The file was truncated under us: what lies past its end reads as zeros.
      std::memset(buf.data(), 0, buf.size());
      break;
    }
    buf = buf.subspan(call.done_count);
    at += call.done_count;
  }
  co_return Result<>{};
}

template <typename Done>
Task<Result<>> NfsTarget::write_range(Queue& q, const std::byte* data, uint64_t length, uint64_t at, int stable,
                                      NfsClock::time_point dl, Done done) {
  NfsClient& c = client(q);
  while (length > 0) {
    NfsClient::Call call;
    call.kind = NfsClient::Kind::kWrite;
    call.offset = at;
    call.count = static_cast<uint32_t>(std::min<uint64_t>(length, wsize_));
    call.stable = stable;
    call.wdata = data;
    call.deadline = dl;
    co_await c.run(call);
    if (call.failed) co_return fail(with_context(std::move(call.error), where()));
    if (call.done_count == 0 || call.done_count > call.count)
      co_return fail(EIO, fmt::format("{}: WRITE at {} wrote {} of {} bytes", where(), at, call.done_count,
                                      call.count));
    note_verf(call.verf);
    done(at, data, call.done_count, call.committed, call.verf);
    data += call.done_count;
    at += call.done_count;
    length -= call.done_count;
  }
  co_return Result<>{};
}

Task<Result<>> NfsTarget::wait_rewrite(Queue& q, NfsClock::time_point dl) {
  while (rewriting_.load(std::memory_order_acquire)) {
    if (NfsClock::now() >= dl) co_return fail(EIO, fmt::format("{}: timed out waiting for a rewrite", where()));
    co_await q.ring().sleep(1ms);
  }
  co_return Result<>{};
}

Task<Result<>> NfsTarget::write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.writes);
  IoStats::bump(stats_.write_bytes, buf.size());
  const auto dl = deadline();
  // Wait while data lost by a server restart is being written again.
  for (;;) {
    CO_TRY(co_await wait_rewrite(q, dl));
    writes_in_flight_.fetch_add(1, std::memory_order_acq_rel);
    if (!rewriting_.load(std::memory_order_acquire)) break;
    writes_in_flight_.fetch_sub(1, std::memory_order_acq_rel);
  }
  struct InFlight {
    explicit InFlight(std::atomic<int>& c) : n(c) {}
    std::atomic<int>& n;
    ~InFlight() { n.fetch_sub(1, std::memory_order_acq_rel); }
  };
  std::optional<InFlight> guard{std::in_place, writes_in_flight_};

  // UNSTABLE, or FILE_SYNC for FUA. Each chunk is logged when its reply
  // comes (FUA ones too, marked stable: see RetainedWrites). A server that
  // answers a FILE_SYNC write less stable than asked gets a COMMIT below.
  bool weak = false, over_limit = false, start_background = false;
  const int stable = f.fua ? FILE_SYNC : UNSTABLE;
  auto r = co_await write_range(q, buf.data(), buf.size(), offset_ + offset, stable, dl,
                                [&](uint64_t o, const std::byte* d, uint32_t n, int committed, uint64_t verf) {
                                  bool is_stable = committed == FILE_SYNC;
                                  if (f.fua && !is_stable) weak = true;
                                  std::lock_guard lk(mu_);
                                  retained_.append(o, {d, n}, verf, is_stable);
                                  retained_bytes_.store(retained_.bytes(), std::memory_order_relaxed);
                                  over_limit = retained_.bytes() > max_unstable_;
                                  start_background = start_background || retained_.bytes() > max_unstable_ / 2;
                                });
  if (!r) {
    IoStats::bump(stats_.errors);
    co_return r;
  }
  guard.reset();
  if (weak || over_limit) {
    // FUA answered unstable: make it stable now. Past max_unstable: bound
    // the memory (the write itself is done either way).
    auto s = co_await settle(q, weak ? dl : deadline());
    if (!s) {
      if (weak) {
        IoStats::bump(stats_.errors);
        co_return s;
      }
      LOG_WARN("{}: COMMIT to bound unstable data failed: {}", where(), s.error().message);
    }
  } else if (start_background && !background_commit_.exchange(true)) {
    spawn(background_settle(q));
  }
  co_return Result<>{};
}

Task<void> NfsTarget::background_settle(Queue& q) {
  auto r = co_await settle(q, deadline());
  if (!r) LOG_WARN("{}: background COMMIT failed: {}", where(), r.error().message);
  background_commit_.store(false, std::memory_order_release);
}

Task<Result<>> NfsTarget::flush(Queue& q) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.flushes);
  auto r = co_await settle(q, deadline());
  if (!r) IoStats::bump(stats_.errors);
  co_return r;
}

Task<Result<>> NfsTarget::settle(Queue& q, NfsClock::time_point dl) {
  for (;;) {
    // A rewrite in progress holds pointers into the log: let it finish.
    CO_TRY(co_await wait_rewrite(q, dl));
    uint64_t upto;
    {
      std::lock_guard lk(mu_);
      if (retained_.count() == 0) co_return Result<>{};
      upto = retained_.next_seq();
    }
    NfsClient::Call call;
    call.kind = NfsClient::Kind::kCommit;
    call.deadline = dl;
    co_await client(q).run(call);
    if (call.failed) co_return fail(with_context(std::move(call.error), where()));
    commits_.fetch_add(1, std::memory_order_relaxed);
    note_verf(call.verf);
    if (rewriting_.load(std::memory_order_acquire)) continue;
    bool settled;
    {
      std::lock_guard lk(mu_);
      settled = rewriting_.load(std::memory_order_acquire) ? false : retained_.settle(upto, call.verf);
      retained_bytes_.store(retained_.bytes(), std::memory_order_relaxed);
    }
    if (settled) co_return Result<>{};
    if (rewriting_.load(std::memory_order_acquire)) continue;
    LOG_WARN("{}: COMMIT returned another write verifier than the writes: writing {} bytes again", where(),
             retained_bytes_.load(std::memory_order_relaxed));
    co_return co_await rewrite_all(q, dl);
  }
}

Task<Result<>> NfsTarget::rewrite_all(Queue& q, NfsClock::time_point dl) {
  // One rewrite at a time, and no write in flight while it runs.
  for (;;) {
    bool expected = false;
    if (rewriting_.compare_exchange_weak(expected, true, std::memory_order_acq_rel)) break;
    if (NfsClock::now() >= dl) co_return fail(EIO, fmt::format("{}: timed out waiting for a rewrite", where()));
    co_await q.ring().sleep(1ms);
  }
  struct Clear {
    std::atomic<bool>& b;
    ~Clear() { b.store(false, std::memory_order_release); }
  } clear{rewriting_};
  while (writes_in_flight_.load(std::memory_order_acquire) > 0) {
    if (NfsClock::now() >= dl) co_return fail(EIO, fmt::format("{}: timed out waiting for writes", where()));
    co_await q.ring().sleep(1ms);
  }
  // The whole log, in order, FILE_SYNC: stable when answered whatever the
  // verifier, and the newest data of each byte lands last.
  std::vector<RetainedWrites::Entry> entries;
  uint64_t upto;
  {
    std::lock_guard lk(mu_);
    upto = retained_.next_seq();
    entries = retained_.entries_before(upto);
  }
  for (const auto& e : entries) {
    bool weak = false;
    auto r = co_await write_range(q, e.data, e.length, e.offset, FILE_SYNC, dl,
                                  [&](uint64_t, const std::byte*, uint32_t, int committed, uint64_t) {
                                    if (committed != FILE_SYNC) weak = true;
                                  });
    if (!r) co_return r;
    if (weak) co_return fail(EIO, fmt::format("{}: the server answered a FILE_SYNC write as unstable", where()));
    rewritten_bytes_.fetch_add(e.length, std::memory_order_relaxed);
  }
  {
    std::lock_guard lk(mu_);
    retained_.drop_before(upto);
    retained_bytes_.store(retained_.bytes(), std::memory_order_relaxed);
  }
  co_return Result<>{};
}

}  // namespace strata
