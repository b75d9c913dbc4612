// Design notes
//
// Opening: rados_create (id=), the conf file (conf=, else CEPH_CONF or the
// default places), keyring=, the timeouts, rados_connect, the pool's io
// context (namespace=), then rbd_open (rbd_open_read_only at a snapshot).
// librados' own stderr lines are switched off: each failure is classified
// here into one message (the log stays one line per event, escaped).
//
// The exclusive lock. rbd_lock_acquire() takes librbd's managed lock and
// installs the "standard" policy: the lock is never handed over when another
// client asks for it, so a second writer fails instead of taking turns.
// librbd itself breaks the lock of a holder whose watch on the image header
// is gone, but a holder killed with SIGKILL keeps its watch on the OSD for
// osd_client_watch_timeout (30 s): librbd then waits for a live owner that
// will never answer. So when the lock is held, we ask whether the holder
// lives: rados_notify2 on the header object with a 3 s timeout (an empty
// notify is librbd's legacy "header updated": every live librbd client acks
// it, having re-read the header). The reply lists the watchers that acked and
// those that timed out; a holder among the latter (or absent from both: no
// watch at all) is dead, and rbd_lock_break() blocklists its address (so
// nothing it still had in flight can land later) and breaks the lock; then we
// acquire again. A live holder is named in the error: its client id and
// address from the lock (rados_list_lockers on the header's "rbd_lock"), and
// the host and pid a strata holder records in the image metadata key
// "strata.lock_holder" when it takes the lock.
#include "targets/rbd/rbd_session.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <ctime>
#include <thread>
#include <vector>

#include <fmt/core.h>

#include "core/log.h"

namespace strata {

using namespace std::chrono_literals;

namespace {

constexpr char kLockName[] = "rbd_lock";
constexpr char kHolderKey[] = "strata.lock_holder";
constexpr uint64_t kPingTimeoutMs = 3000;

std::string errstr(int r) { return std::strerror(r < 0 ? -r : r); }

// "v2:127.0.0.1:0/123" and "127.0.0.1:0/123" name the same client.
std::string_view strip_addr_type(std::string_view a) {
  for (std::string_view p : {"v1:", "v2:", "any:"})
    if (a.substr(0, p.size()) == p) return a.substr(p.size());
  return a;
}

std::string conf_get(rados_t c, const char* key) {
  char buf[512] = {};
  if (rados_conf_get(c, key, buf, sizeof buf - 1) < 0) return {};
  return buf;
}

// NUL-separated strings from librados.
std::vector<std::string> split_nul(const char* p, size_t len) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < len) {
    size_t n = strnlen(p + i, len - i);
    if (n == 0 && i + 1 >= len) break;
    out.emplace_back(p + i, n);
    i += n + 1;
  }
  return out;
}

// The reply of a notify: map<pair<gid,cookie>, bufferlist> acks, then
// set<pair<gid,cookie>> timeouts, little-endian, as Ceph encodes them.
struct NotifyReply {
  std::vector<uint64_t> acked, timed_out;
  bool ok = false;
};
NotifyReply decode_notify_reply(const char* p, size_t len) {
  NotifyReply out;
  size_t at = 0;
  auto u32 = [&](uint32_t* v) {
    if (len - at < 4) return false;
    std::memcpy(v, p + at, 4);
    at += 4;
    return true;
  };
  auto u64 = [&](uint64_t* v) {
    if (len - at < 8) return false;
    std::memcpy(v, p + at, 8);
    at += 8;
    return true;
  };
  uint32_t n;
  if (!u32(&n)) return out;
  for (uint32_t i = 0; i < n; ++i) {
    uint64_t gid, cookie;
    uint32_t bl;
    if (!u64(&gid) || !u64(&cookie) || !u32(&bl) || len - at < bl) return out;
    at += bl;
    out.acked.push_back(gid);
  }
  if (!u32(&n)) return out;
  for (uint32_t i = 0; i < n; ++i) {
    uint64_t gid, cookie;
    if (!u64(&gid) || !u64(&cookie)) return out;
    out.timed_out.push_back(gid);
  }
  out.ok = true;
  return out;
}

}  // namespace

std::string RbdSpec::name() const {
  std::string s = pool + "/";
  if (!ns.empty()) s += ns + "/";
  s += image;
  if (!snap.empty()) s += "@" + snap;
  return s;
}

Result<RbdSpec> parse_rbd_spec(std::string_view s) {
  RbdSpec spec;
  auto slash = s.find('/');
  if (slash == std::string_view::npos || slash == 0 || slash + 1 == s.size())
    return fail(EINVAL, fmt::format("'{}': must be POOL/IMAGE or POOL/IMAGE@SNAP", s));
  spec.pool = std::string(s.substr(0, slash));
  std::string_view rest = s.substr(slash + 1);
  if (rest.find('/') != std::string_view::npos)
    return fail(EINVAL, fmt::format("'{}': must be POOL/IMAGE[@SNAP] (a RADOS namespace goes in namespace=NS)", s));
  auto at = rest.find('@');
  spec.image = std::string(rest.substr(0, at));
  if (at != std::string_view::npos) {
    spec.snap = std::string(rest.substr(at + 1));
    if (spec.snap.empty() || spec.snap.find('@') != std::string::npos)
      return fail(EINVAL, fmt::format("'{}': the snapshot name after @ is empty or has another @", s));
  }
  if (spec.image.empty()) return fail(EINVAL, fmt::format("'{}': the image name is empty", s));
  return spec;
}

Error RbdSession::image_error(std::string_view what, int r) const {
  const std::string who = spec_.id.empty() ? "client.admin" : "client." + spec_.id;
  if (r == -EPERM || r == -EACCES)
    return Error{EACCES, fmt::format("{} {}: permission denied for {} (its OSD caps do not allow this pool{})",
                                     what, spec_.name(), who, spec_.ns.empty() ? "" : " or namespace")};
  if (r == -ETIMEDOUT)
    return Error{EIO, fmt::format("{} {}: no answer from the OSDs within {} s (timeout=)", what, spec_.name(),
                                  spec_.timeout.count())};
  return Error{-r, fmt::format("{} {}: {}", what, spec_.name(), errstr(r))};
}

Result<std::unique_ptr<RbdSession>> RbdSession::open(const RbdSpec& spec) {
  std::unique_ptr<RbdSession> s(new RbdSession());
  s->spec_ = spec;
  const std::string who = spec.id.empty() ? "client.admin" : "client." + spec.id;
  int r = rados_create(&s->cluster_, spec.id.empty() ? nullptr : spec.id.c_str());
  if (r < 0) return fail(-r, fmt::format("rados_create {}: {}", who, errstr(r)));

  if (!spec.conf.empty()) {
    struct stat st;
    if (::stat(spec.conf.c_str(), &st) < 0) return posix_error(fmt::format("conf {}", spec.conf), errno);
    r = rados_conf_read_file(s->cluster_, spec.conf.c_str());
    if (r < 0) return fail(EINVAL, fmt::format("conf {}: cannot read it as a ceph.conf: {}", spec.conf, errstr(r)));
  } else {
    r = rados_conf_read_file(s->cluster_, nullptr);
    if (r < 0 && r != -ENOENT)
      return fail(EINVAL, fmt::format("the default ceph.conf (CEPH_CONF, /etc/ceph/ceph.conf): {}", errstr(r)));
  }
  // CEPH_ARGS ("--name value" pairs), as the rbd and ceph tools read it: an operator's override of
  // the conf file for this process (for instance the messenger's thread count).
  r = rados_conf_parse_env(s->cluster_, nullptr);
  if (r < 0) return fail(EINVAL, fmt::format("CEPH_ARGS: cannot parse it: {}", errstr(r)));
  if (!spec.keyring.empty()) {
    if (::access(spec.keyring.c_str(), R_OK) < 0)
      return posix_error(fmt::format("keyring {}", spec.keyring), errno);
    rados_conf_set(s->cluster_, "keyring", spec.keyring.c_str());
  }
  const std::string t = std::to_string(spec.timeout.count());
  for (const char* key : {"client_mount_timeout", "rados_mon_op_timeout", "rados_osd_op_timeout"})
    rados_conf_set(s->cluster_, key, t.c_str());
  // Our own messages say what failed; librados' lines would be unescaped noise.
  rados_conf_set(s->cluster_, "log_to_stderr", "false");
  rados_conf_set(s->cluster_, "err_to_stderr", "false");
  // iovec writes go out without a copy: librbd holds the request's
  // completion until the messenger drops its last reference to the pages.
  rados_conf_set(s->cluster_, "rbd_disable_zero_copy_writes", "false");

  const std::string mons = conf_get(s->cluster_, "mon_host");
  if (mons.empty())
    return fail(EINVAL, fmt::format("no monitors configured: no mon_host in {} (give conf=PATH)",
                                    spec.conf.empty() ? "the default ceph.conf" : spec.conf));
  r = rados_connect(s->cluster_);
  if (r < 0) {
    if (r == -ETIMEDOUT)
      return fail(EHOSTUNREACH, fmt::format("cluster unreachable: no monitor of {} answered within {} s (timeout=)",
                                            mons, spec.timeout.count()));
    if (r == -EPERM || r == -EACCES)
      return fail(EACCES, fmt::format("cluster {}: permission denied: authentication as {} failed (wrong key?)",
                                      mons, who));
    if (r == -ENOENT)
      return fail(ENOENT, fmt::format("cluster {}: no key for {} (keyring={} or the conf's keyring)", mons, who,
                                      spec.keyring.empty() ? "unset" : spec.keyring));
    return fail(-r, fmt::format("cluster {}: connect as {}: {}", mons, who, errstr(r)));
  }
  char* addrs = nullptr;
  std::string addr;
  if (rados_getaddrs(s->cluster_, &addrs) == 0 && addrs) {
    addr = std::string(strip_addr_type(addrs));
    std::free(addrs);
  }
  s->self_ = fmt::format("client.{} {}", rados_get_instance_id(s->cluster_), addr);

  r = rados_ioctx_create(s->cluster_, spec.pool.c_str(), &s->io_);
  if (r == -ENOENT) return fail(ENOENT, fmt::format("no such pool '{}'", spec.pool));
  if (r < 0) return fail(s->image_error("pool", r));
  if (!spec.ns.empty()) rados_ioctx_set_namespace(s->io_, spec.ns.c_str());

  if (spec.snap.empty()) {
    r = spec.read_only ? rbd_open_read_only(s->io_, spec.image.c_str(), &s->image_, nullptr)
                       : rbd_open(s->io_, spec.image.c_str(), &s->image_, nullptr);
  } else {
    r = rbd_open_read_only(s->io_, spec.image.c_str(), &s->image_, spec.snap.c_str());
    if (r == -ENOENT) {
      rbd_image_t probe;
      if (rbd_open_read_only(s->io_, spec.image.c_str(), &probe, nullptr) == 0) {
        rbd_close(probe);
        return fail(ENOENT, fmt::format("image {}/{}{} has no snapshot '{}'", spec.pool,
                                        spec.ns.empty() ? "" : spec.ns + "/", spec.image, spec.snap));
      }
    }
  }
  if (r == -ENOENT)
    return fail(ENOENT, fmt::format("no such image '{}' in pool '{}'{}", spec.image, spec.pool,
                                    spec.ns.empty() ? "" : fmt::format(" namespace '{}'", spec.ns)));
  if (r < 0) {
    s->image_ = nullptr;
    return fail(s->image_error("open image", r));
  }
  r = rbd_get_size(s->image_, &s->size_);
  if (r < 0) return fail(s->image_error("size of", r));
  rbd_get_features(s->image_, &s->features_);
  rbd_image_info_t info{};
  if (rbd_stat(s->image_, &info, sizeof info) == 0) s->object_size_ = info.obj_size;
  char id[128] = {};
  if (rbd_get_id(s->image_, id, sizeof id) == 0) {
    s->image_id_ = id;
    s->header_oid_ = std::string("rbd_header.") + id;
  }
  s->pool_id_ = rados_ioctx_get_id(s->io_);
  if (!spec.snap.empty() && rbd_snap_get_id(s->image_, spec.snap.c_str(), &s->snap_id_) < 0) s->snap_id_ = 0;
  return s;
}

RbdSession::~RbdSession() {
  // rbd_close waits for librbd's own work (and every aio callback) to end.
  if (image_) rbd_close(image_);
  if (io_) rados_ioctx_destroy(io_);
  if (cluster_) rados_shutdown(cluster_);
}

Result<std::optional<RbdSession::Holder>> RbdSession::lock_holder() {
  if (header_oid_.empty()) return fail(EINVAL, fmt::format("image {}: no image id (format 1?)", spec_.name()));
  std::vector<char> tag(256), clients(4096), cookies(4096), addrs(4096);
  size_t tag_len = tag.size(), clients_len = clients.size(), cookies_len = cookies.size(), addrs_len = addrs.size();
  int exclusive = 0;
  ssize_t n = rados_list_lockers(io_, header_oid_.c_str(), kLockName, &exclusive, tag.data(), &tag_len,
                                 clients.data(), &clients_len, cookies.data(), &cookies_len, addrs.data(),
                                 &addrs_len);
  if (n == -ENOENT || n == 0) return std::optional<Holder>{};
  if (n < 0) return fail(image_error("list the lockers of", static_cast<int>(n)));
  auto cl = split_nul(clients.data(), clients_len);
  auto ad = split_nul(addrs.data(), addrs_len);
  if (cl.empty()) return std::optional<Holder>{};
  Holder h;
  h.client = cl[0];
  h.addr = ad.empty() ? std::string() : std::string(strip_addr_type(ad[0]));
  if (h.client.rfind("client.", 0) == 0) h.gid = std::strtoull(h.client.c_str() + 7, nullptr, 10);
  return std::optional<Holder>{h};
}

Result<bool> RbdSession::holder_alive(const Holder& h) {
  char* reply = nullptr;
  size_t reply_len = 0;
  int r = rados_notify2(io_, header_oid_.c_str(), nullptr, 0, kPingTimeoutMs, &reply, &reply_len);
  NotifyReply nr = reply ? decode_notify_reply(reply, reply_len) : NotifyReply{};
  if (reply) rados_buffer_free(reply);
  if (r < 0 && r != -ETIMEDOUT) return fail(image_error("notify the watchers of", r));
  if (!nr.ok) return r == 0;  // no reply to read: a timeout means someone is dead
  for (uint64_t g : nr.acked)
    if (g == h.gid) return true;
  return false;  // timed out, or not watching the image at all
}

std::string RbdSession::describe_holder(const Holder& h) {
  std::string s = h.client;
  if (!h.addr.empty()) s += " at " + h.addr;
  char buf[512] = {};
  size_t len = sizeof buf - 1;
  if (rbd_metadata_get(image_, kHolderKey, buf, &len) == 0) {
    std::string v(buf, strnlen(buf, sizeof buf));
    // "client.N host H pid P since T": only if it is about this holder.
    if (v.rfind(h.client + " ", 0) == 0) s += " (strata, " + log_escape(v.substr(h.client.size() + 1)) + ")";
  }
  return s;
}

Result<> RbdSession::break_lock(const Holder& h) {
  // By the address librbd knows the owner by; it blocklists that address
  // first (rbd_blocklist_on_break_lock), so nothing the dead holder still had
  // in flight can land after we write.
  char* owners[4] = {};
  size_t n_owners = 4;
  rbd_lock_mode_t mode;
  int r = rbd_lock_get_owners(image_, &mode, owners, &n_owners);
  if (r == -ENOENT) return {};
  if (r < 0) return fail(image_error("lock owners of", r));
  std::string owner = n_owners > 0 ? owners[0] : "";
  rbd_lock_get_owners_cleanup(owners, n_owners);
  if (owner.empty()) return {};
  LOG_WARN("rbd {}: the lock holder {} does not answer: blocklisting it and breaking its lock",
           log_escape(spec_.name()), describe_holder(h));
  r = rbd_lock_break(image_, RBD_LOCK_MODE_EXCLUSIVE, owner.c_str());
  if (r < 0 && r != -ENOENT) return fail(image_error(fmt::format("break the lock of {} on", h.client), r));
  return {};
}

Result<> RbdSession::lock_exclusive() {
  if (!(features_ & RBD_FEATURE_EXCLUSIVE_LOCK))
    return fail(EINVAL, fmt::format("image {} has no exclusive-lock feature: enable it (rbd feature enable {} "
                                    "exclusive-lock) or give exclusive=off",
                                    spec_.name(), spec_.name()));
  // librbd's rbd_lock_acquire() waits, without a bound, for a holder whose
  // watch is still registered to answer its lock request: so look first,
  // and break the lock of a holder that does not answer before asking.
  const auto deadline = std::chrono::steady_clock::now() + std::max(spec_.timeout, std::chrono::seconds(10));
  for (;;) {
    auto holder = lock_holder();
    if (!holder) return fail(holder.error());
    if (*holder) {
      const Holder& h = **holder;
      if (std::chrono::steady_clock::now() > deadline)
        return fail(EBUSY, fmt::format("image {} is locked by {}: not acquired within {} s", spec_.name(),
                                       describe_holder(h), spec_.timeout.count()));
      auto alive = holder_alive(h);
      if (!alive) return fail(alive.error());
      if (*alive)
        return fail(EBUSY, fmt::format("image {} is locked by {}: another client writes it (give `ro` to read "
                                       "it, or stop that client)",
                                       spec_.name(), describe_holder(h)));
      TRY(break_lock(h));
      continue;
    }
    int r = rbd_lock_acquire(image_, RBD_LOCK_MODE_EXCLUSIVE);
    if (r == 0) break;
    if (r != -EROFS && r != -EBUSY && r != -EAGAIN) return fail(image_error("exclusive lock on", r));
    // Taken by someone else meanwhile: look again.
    if (std::chrono::steady_clock::now() > deadline)
      return fail(EBUSY, fmt::format("image {}: the exclusive lock was not acquired within {} s", spec_.name(),
                                     spec_.timeout.count()));
    std::this_thread::sleep_for(100ms);
  }
  // Say who we are, for the error of the next client that tries.
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  std::time_t now = std::time(nullptr);
  char when[64] = {};
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  const std::string client = self_.substr(0, self_.find(' '));
  const std::string v = fmt::format("{} host {} pid {} since {}", client, host, ::getpid(), when);
  int r = rbd_metadata_set(image_, kHolderKey, v.c_str());
  if (r < 0) LOG_WARN("rbd {}: cannot record the lock holder in the image metadata: {}", spec_.name(), errstr(r));
  return {};
}

}  // namespace strata
