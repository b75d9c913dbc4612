// NfsTarget's setup and status: create() parses the table line's options,
// mounts the export with libnfs's synchronous API to find the file, its
// handle, the server's address and NFS port and rsize/wsize (for NFSv4
// asking the server's limits itself), and drops the mount; then what the
// target reports about itself (caps, block sizes, identity, table line,
// info with the summed counters of every queue's client). The data path and
// the retained writes are in nfs.cc.
//
// Design notes
//
// Load (blocking, on the thread that loads the table): libnfs's synchronous
// API mounts the export, stats and opens the file, and each failure becomes
// its own message (bad URL, server unreachable, export not found, permission
// denied, not a regular file, offset not a multiple of 4096 or beyond the end,
// file too small). What the data path needs is kept: the file handle, the
// server's address and NFS port, rsize/wsize. The mount is then dropped: the
// data path speaks NFSv3 on its own connections (one per queue, NfsClient).
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

}  // namespace

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

namespace {

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
  {
    MutexLock l(t->mu_);  // not shared yet: for the analysis only
    t->retained_.set_keep_bytes(t->max_unstable_);
  }
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

}  // namespace strata
