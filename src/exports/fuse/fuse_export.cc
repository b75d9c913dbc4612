#include "exports/fuse/fuse_export.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fuse.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstring>
#include <ctime>
#include <fstream>
#include <thread>

#include <fmt/core.h>

#include "core/buffer.h"
#include "core/log.h"

namespace strata::fuse {

std::vector<Device> devices_of(const DeviceRegistry& registry) {
  std::vector<Device> out;
  for (const auto& d : registry.list()) out.push_back({d->name, d->target, d->read_only || !d->target->caps().can_write});
  return out;
}

namespace {

constexpr uint64_t kRootId = FUSE_ROOT_ID;  // 1; device i is nodeid 2 + i
constexpr int kSlotsPerQueue = 32;
constexpr uint32_t kMaxPages = 256;  // 1 MiB requests
constexpr uint32_t kOurMinor = 38;
// A FUSE_WRITE's data follows its two headers. Each request is read this far
// into a 4096-aligned buffer so that the data lands on a 4096-byte boundary,
// as O_DIRECT targets (--direct, direct=on) need: a misaligned buffer makes
// their every write fail with EINVAL.
constexpr std::size_t kWriteHeaders = sizeof(fuse_in_header) + sizeof(fuse_write_in);
constexpr std::size_t kReadPad = kBufferAlign - kWriteHeaders;

// FUSE over io_uring (linux/fuse.h of Linux 6.14, protocol 7.42); Debian 12's
// kernel headers predate it.
constexpr uint64_t kFuseOverIoUring = 1ULL << 41;  // in flags2 as bit 9
constexpr uint32_t kUringCmdRegister = 1;
constexpr uint32_t kUringCmdCommitAndFetch = 2;
constexpr int kEntriesPerQid = 32;
struct UringEntInOut {
  uint64_t flags;
  uint64_t commit_id;
  uint32_t payload_sz;
  uint32_t padding;
  uint64_t reserved;
};
struct UringReqHeader {
  std::byte in_out[128];  // fuse_in_header in, fuse_out_header out
  std::byte op_in[128];   // the opcode's own argument (fuse_write_in, ...)
  UringEntInOut ent;
};
struct UringCmdReq {  // the command area of a 128-byte SQE
  uint64_t flags;
  uint64_t commit_id;
  uint16_t qid;
  uint8_t padding[6];
};
static_assert(sizeof(UringReqHeader) == 288);
static_assert(sizeof(UringCmdReq) <= 80);

const char kEnableUring[] = "/sys/module/fuse/parameters/enable_uring";

// Is FUSE over io_uring on in this kernel? Turns the module parameter on if it
// is off and we may (root): it only lets servers that ask for it use it.
bool enable_fuse_uring() {
  char c = 0;
  {
    std::ifstream in(kEnableUring);
    if (!(in >> c)) return false;  // no CONFIG_FUSE_IO_URING
  }
  if (c == 'Y' || c == '1') return true;
  std::ofstream out(kEnableUring);
  if (!(out << "Y" << std::flush)) return false;
  LOG_INFO("FUSE: turned on FUSE over io_uring ({} = Y)", kEnableUring);
  return true;
}

// The kernel keeps one request queue per possible CPU and serves a request on
// the queue of the CPU that made it: every one needs entries.
uint32_t possible_cpus() {
  std::ifstream in("/sys/devices/system/cpu/possible");
  std::string s;
  if (!(in >> s)) return static_cast<uint32_t>(std::max(1L, ::sysconf(_SC_NPROCESSORS_CONF)));
  // "0-1", "0-3,8-11", "0": the highest CPU number is the last one.
  std::size_t at = s.find_last_of("-,");
  return static_cast<uint32_t>(std::stoul(at == std::string::npos ? s : s.substr(at + 1)) + 1);
}

// Is `path` a FUSE mount of ours (fuse.strata)?
bool is_strata_mount(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    // ... mountpoint ... - fstype source opts
    std::size_t a = line.find(' ');
    for (int i = 0; i < 3 && a != std::string::npos; ++i) a = line.find(' ', a + 1);
    if (a == std::string::npos) continue;
    std::size_t b = line.find(' ', a + 1);
    std::string mp = line.substr(a + 1, b - a - 1);
    std::size_t dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    std::string fstype = line.substr(dash + 3, line.find(' ', dash + 3) - dash - 3);
    if (mp == path && fstype.starts_with("fuse")) return true;
  }
  return false;
}

}  // namespace

// What handle() works on, wherever the request came from: the opcode's
// argument and its payload (a LOOKUP's name, a WRITE's data) are apart in a
// ring entry and back to back in a /dev/fuse read.
struct FuseExport::Request {
  const fuse_in_header* in;
  const std::byte* arg;
  std::span<std::byte> payload;
  // Where a READ puts its data if it fits (a ring entry's payload buffer,
  // which the kernel copies from); empty: a buffer of its own.
  std::span<std::byte> out;
};

struct FuseExport::Reply {
  bool none = false;  // FORGET, INTERRUPT: no reply at all
  int error = 0;
  const std::byte* data = nullptr;
  std::size_t n = 0;
  alignas(8) std::byte small[160];  // the fixed-size answers
  Buffer buf;                       // a READ's data
  std::vector<std::byte> vec;       // a READDIR's entries

  static Reply err(int e) {
    Reply r;
    r.error = e;
    return r;
  }
  template <typename T>
  static Reply of(const T& v) {
    static_assert(sizeof(T) <= sizeof small);
    Reply r;
    std::memcpy(r.small, &v, sizeof v);
    r.n = sizeof v;
    return r;
  }
  // data points into this object or its buffers: fixed up after a move.
  const std::byte* bytes() const { return data ? data : small; }
};

FuseExport::FuseExport(std::vector<Queue*> queues, std::vector<Device> devices, Options opts)
    : queues_(std::move(queues)), devices_(std::move(devices)), opts_(opts) {
  for (auto& d : devices_)
    if (d.name.empty()) d.name = "default";
  start_time_ = std::time(nullptr);
}

FuseExport::~FuseExport() { stop(); }

Result<> FuseExport::start(const std::string& mountpoint) {
  char real[PATH_MAX];
  if (!::realpath(mountpoint.c_str(), real)) {
    // A stale FUSE mount answers ENOTCONN even to realpath.
    if (errno != ENOTCONN) return posix_error(fmt::format("--fuse {}", mountpoint), errno);
    std::strncpy(real, mountpoint.c_str(), sizeof real - 1);
    real[sizeof real - 1] = 0;
  }
  mountpoint_ = real;
  if (is_strata_mount(mountpoint_)) {
    // statfs, not stat: the kernel answers stat of the root from its attribute
    // cache for a while after the server died, while statfs always asks the
    // server (ENOTCONN once the connection is gone).
    struct statfs sfs;
    if (::statfs(mountpoint_.c_str(), &sfs) == 0)
      return fail(EBUSY, fmt::format("--fuse {}: a live FUSE file system is mounted there", mountpoint_));
    // The server behind it is gone (ENOTCONN): replace the stale mount.
    LOG_WARN("--fuse {}: replacing a stale mount left by a server that died", mountpoint_);
    if (::umount2(mountpoint_.c_str(), MNT_DETACH) < 0)
      return posix_error(fmt::format("--fuse {}: unmount the stale mount", mountpoint_), errno);
  }
  struct stat st;
  if (::stat(mountpoint_.c_str(), &st) < 0) return posix_error(fmt::format("--fuse {}", mountpoint_), errno);
  if (!S_ISDIR(st.st_mode)) return fail(ENOTDIR, fmt::format("--fuse {}: not a directory", mountpoint_));

  // O_NONBLOCK: every slot of every queue reads this one fd. A blocking read
  // that loses the race for a request sleeps in fuse_dev_do_read, and
  // io_uring may issue it inline on the queue thread (after a poll said
  // "readable"): the whole queue then stops, with the requests it holds,
  // until another request arrives (a QD1 reader never sends one).
  // The kernel offers FUSE over io_uring in the INIT it sends at mount time;
  // every queue's ring must take 128-byte SQEs to register entries.
  bool rings_ok = true;
  for (Queue* q : queues_) rings_ok = rings_ok && q->ring().sqe128();
  if (opts_.io_uring && rings_ok) opts_.io_uring = enable_fuse_uring();
  else opts_.io_uring = false;
  nr_qids_ = possible_cpus();
  fd_ = ::open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd_ < 0) return posix_error("open /dev/fuse", errno);
  std::string opts = fmt::format("fd={},rootmode=40755,user_id={},group_id={},allow_other,default_permissions", fd_,
                                 ::getuid(), ::getgid());
  if (::mount("strata", mountpoint_.c_str(), "fuse.strata", MS_NOSUID | MS_NODEV, opts.c_str()) < 0) {
    int e = errno;
    ::close(fd_);
    fd_ = -1;
    return posix_error(fmt::format("mount FUSE at {} (root is needed)", mountpoint_), e);
  }
  for (Queue* q : queues_) {
    for (int i = 0; i < kSlotsPerQueue; ++i) {
      slots_.fetch_add(1);
      q->post([this, q] { spawn(slot(*q)); });
    }
  }
  return {};
}

bool FuseExport::stop() {
  if (fd_ < 0 || stopping_.exchange(true)) return slots_.load() == 0;
  // Unmounting ends the connection: every posted read fails with ENODEV.
  if (::umount2(mountpoint_.c_str(), 0) < 0 && ::umount2(mountpoint_.c_str(), MNT_DETACH) < 0)
    LOG_ERROR("unmount {}: {}", mountpoint_, std::strerror(errno));
  // A loop device may still hold a file: MNT_DETACH above lets the unmount
  // finish, and closing /dev/fuse below aborts the connection, so its I/O
  // then fails with ENOTCONN instead of hanging.
  for (int i = 0; i < 500 && slots_.load() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (slots_.load() > 0) {
    // Still in use: /dev/fuse stays open (the slots read fd_), and the files
    // open on the detached mount go on working until they are closed.
    LOG_WARN("FUSE {}: still in use ({} request slots outstanding): detached; files open on it keep working",
             mountpoint_, slots_.load());
    return false;
  }
  ::close(fd_);
  fd_ = -1;
  return true;
}

std::vector<std::string> FuseExport::shown() const {
  std::vector<std::string> out;
  for (const auto& d : devices_) out.push_back(d.name);
  return out;
}

Export::Users FuseExport::users_of(const Target* t) const {
  for (const auto& d : devices_)
    if (d.target.get() == t) return {1, false, fmt::format("is shown by the FUSE export at {}", mountpoint_)};
  return {};
}

const Device* FuseExport::device_of(uint64_t nodeid) const {
  if (nodeid < 2 || nodeid - 2 >= devices_.size()) return nullptr;
  return &devices_[nodeid - 2];
}

void FuseExport::fill_attr(void* out, uint64_t nodeid) const {
  auto* a = static_cast<fuse_attr*>(out);
  std::memset(a, 0, sizeof *a);
  a->ino = nodeid;
  a->atime = a->mtime = a->ctime = start_time_;
  a->blksize = 4096;
  a->uid = ::getuid();
  a->gid = ::getgid();
  if (nodeid == kRootId) {
    a->mode = S_IFDIR | 0755;
    a->nlink = 2;
    return;
  }
  const Device* d = device_of(nodeid);
  a->mode = S_IFREG | (d->read_only ? 0400 : 0600);
  a->nlink = 1;
  a->size = d->target->size();
  a->blocks = (a->size + 511) / 512;
}

void FuseExport::reply_dev(uint64_t unique, const Reply& r) {
  fuse_out_header h{};
  h.unique = unique;
  h.error = r.error;
  iovec iov[2] = {{&h, sizeof h}, {const_cast<std::byte*>(r.bytes()), r.n}};
  int cnt = r.error || r.n == 0 ? 1 : 2;
  h.len = static_cast<uint32_t>(sizeof h + (cnt == 2 ? r.n : 0));
  // A reply to /dev/fuse is consumed at once by the kernel: it never blocks.
  if (::writev(fd_, iov, cnt) < 0 && errno != ENOENT)  // ENOENT: the request was interrupted
    LOG_DEBUG("FUSE reply {}: {}", unique, std::strerror(errno));
}

Task<void> FuseExport::slot(Queue& q) {
  Buffer buf = Buffer::get(kReadPad + max_write_ + 64 * 1024);
  std::span<std::byte> in = buf.span().subspan(kReadPad);
  for (;;) {
    int n = co_await q.ring().read(fd_, in, static_cast<uint64_t>(-1));
    if (n == -EAGAIN) {
      // No request pending (another slot took it): wait for one, then read.
      int fd = fd_;
      int p = co_await q.ring().op([fd](io_uring_sqe* s) { io_uring_prep_poll_add(s, fd, POLLIN); });
      (void)p;  // POLLERR once unmounted: the next read fails with ENODEV
      continue;
    }
    if (n == -EINTR || n == -ENOENT) continue;
    if (n < 0) break;  // ENODEV: unmounted
    if (static_cast<std::size_t>(n) < sizeof(fuse_in_header)) continue;
    auto* h = reinterpret_cast<const fuse_in_header*>(in.data());
    std::byte* arg = in.data() + sizeof(fuse_in_header);
    // A WRITE's data follows its fuse_write_in; a LOOKUP's name follows the
    // header (its argument is empty).
    std::size_t argsize = h->opcode == FUSE_WRITE ? sizeof(fuse_write_in) : 0;
    std::size_t rest = static_cast<std::size_t>(n) - sizeof(fuse_in_header);
    if (rest < argsize) {
      // A WRITE shorter than its own header (the kernel never sends one):
      // answered, so whatever waits for it fails instead of hanging.
      reply_dev(h->unique, Reply::err(-EINVAL));
      continue;
    }
    Request req{h, arg, {arg + argsize, rest - argsize}, {}};
    dev_requests_.fetch_add(1, std::memory_order_relaxed);
    Reply r = co_await handle(q, req);
    if (!r.none) reply_dev(h->unique, r);
    if (h->opcode == FUSE_INIT && uring_.load() && r.error == 0) start_uring();
  }
  slots_.fetch_sub(1);
}

void FuseExport::start_uring() {
  // The INIT reply has been written: the connection is initialized, so
  // registering entries no longer fails with EAGAIN.
  const std::size_t nq = queues_.size();
  for (uint32_t qid = 0; qid < nr_qids_; ++qid) {
    Queue* q = queues_[qid % nq];
    for (int i = 0; i < kEntriesPerQid; ++i) {
      slots_.fetch_add(1);
      q->post([this, q, qid] { spawn(uring_slot(*q, static_cast<uint16_t>(qid))); });
    }
  }
}

Task<void> FuseExport::uring_slot(Queue& q, uint16_t qid) {
  // The header and the iovecs stay put in this frame while the kernel holds
  // the entry.
  UringReqHeader hdr{};
  Buffer payload = Buffer::get(max_write_);
  iovec iov[2] = {{&hdr, sizeof hdr}, {payload.data(), payload.size()}};
  uint32_t cmd = kUringCmdRegister;
  uint64_t commit_id = 0;
  const int fd = fd_;
  for (;;) {
    int r = co_await q.ring().op([&, fd](io_uring_sqe* sqe) {
      std::memset(sqe, 0, 128);
      sqe->opcode = IORING_OP_URING_CMD;
      sqe->fd = fd;
      sqe->cmd_op = cmd;
      if (cmd == kUringCmdRegister) {
        sqe->addr = reinterpret_cast<uint64_t>(iov);
        sqe->len = 2;
      }
      auto* c = reinterpret_cast<UringCmdReq*>(sqe->cmd);
      c->qid = qid;
      c->commit_id = commit_id;
    });
    if (r == -EAGAIN || r == -EINTR) continue;  // resend the same command
    if (r < 0) {
      // ENOTCONN / ECONNABORTED: unmounted; anything else is logged once.
      if (r != -ENOTCONN && r != -ECONNABORTED && r != -ECANCELED && !stopping_.load())
        LOG_WARN("FUSE io_uring entry (queue {}): {}", qid, std::strerror(-r));
      break;
    }
    auto* h = reinterpret_cast<const fuse_in_header*>(hdr.in_out);
    commit_id = hdr.ent.commit_id;
    cmd = kUringCmdCommitAndFetch;
    std::size_t plen = std::min<std::size_t>(hdr.ent.payload_sz, payload.size());
    Request req{h, hdr.op_in, {payload.data(), plen}, payload.span()};
    const uint64_t unique = h->unique;
    uring_requests_.fetch_add(1, std::memory_order_relaxed);
    Reply rep = co_await handle(q, req);
    // Every request that arrives here expects an answer (FORGET and
    // INTERRUPT keep to /dev/fuse).
    std::size_t n = rep.error ? 0 : rep.n;
    if (n > payload.size()) {
      rep.error = -EIO;
      n = 0;
    }
    if (n && rep.bytes() != payload.data()) std::memmove(payload.data(), rep.bytes(), n);
    fuse_out_header oh{};
    oh.unique = unique;
    oh.error = rep.error;
    oh.len = static_cast<uint32_t>(sizeof oh + n);
    std::memcpy(hdr.in_out, &oh, sizeof oh);
    hdr.ent.payload_sz = static_cast<uint32_t>(n);
  }
  slots_.fetch_sub(1);
}

Task<FuseExport::Reply> FuseExport::handle(Queue& q, const Request& req) {
  const fuse_in_header* in = req.in;
  const std::byte* arg = req.arg;
  const uint32_t op = in->opcode;
  const Device* dev = device_of(in->nodeid);

  // if/else, not switch: g++ 12 miscompiles co_await inside switch cases.
  if (op == FUSE_INIT) {
    auto* i = reinterpret_cast<const fuse_init_in*>(arg);
    if (i->major != FUSE_KERNEL_VERSION) co_return Reply::err(-EPROTO);
    fuse_init_out o{};
    o.major = FUSE_KERNEL_VERSION;
    o.minor = std::min<uint32_t>(i->minor, kOurMinor);
    o.max_readahead = i->max_readahead;
    uint32_t want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ASYNC_DIO | FUSE_MAX_PAGES | FUSE_PARALLEL_DIROPS;
    o.flags = i->flags & want;
    uint64_t offered = i->flags & FUSE_INIT_EXT ? static_cast<uint64_t>(i->flags2) << 32 : 0;
    if (opts_.io_uring && (offered & kFuseOverIoUring)) {
      o.flags |= FUSE_INIT_EXT;
      o.flags2 = static_cast<uint32_t>(kFuseOverIoUring >> 32);
      uring_.store(true);
    } else if (opts_.io_uring) {
      LOG_INFO("FUSE {}: the kernel does not offer FUSE over io_uring; serving through /dev/fuse", mountpoint_);
    }
    o.max_background = 256;
    o.congestion_threshold = 192;
    o.max_write = max_write_;
    o.time_gran = 1;
    o.max_pages = kMaxPages;
    co_return Reply::of(o);
  }
  if (op == FUSE_LOOKUP) {
    // The name, NUL-terminated, is the payload.
    std::string name(reinterpret_cast<const char*>(req.payload.data()),
                     ::strnlen(reinterpret_cast<const char*>(req.payload.data()), req.payload.size()));
    if (in->nodeid != kRootId) co_return Reply::err(-ENOENT);
    for (std::size_t i = 0; i < devices_.size(); ++i) {
      if (devices_[i].name != name) continue;
      fuse_entry_out e{};
      e.nodeid = 2 + i;
      e.attr_valid = e.entry_valid = 1;
      fill_attr(&e.attr, e.nodeid);
      co_return Reply::of(e);
    }
    co_return Reply::err(-ENOENT);
  }
  if (op == FUSE_FORGET || op == FUSE_BATCH_FORGET || op == FUSE_INTERRUPT) {
    Reply r;
    r.none = true;
    co_return r;
  }
  if (op == FUSE_GETATTR || op == FUSE_SETATTR) {
    if (in->nodeid != kRootId && !dev) co_return Reply::err(-ENOENT);
    if (op == FUSE_SETATTR) {
      auto* s = reinterpret_cast<const fuse_setattr_in*>(arg);
      if ((s->valid & FATTR_SIZE) && dev && s->size != dev->target->size())
        co_return Reply::err(-EPERM);  // a block device does not change size
    }
    fuse_attr_out o{};
    o.attr_valid = 1;
    fill_attr(&o.attr, in->nodeid);
    co_return Reply::of(o);
  }
  if (op == FUSE_OPEN) {
    auto* i = reinterpret_cast<const fuse_open_in*>(arg);
    if (!dev) co_return Reply::err(-ENOENT);
    if ((i->flags & O_ACCMODE) != O_RDONLY && dev->read_only) co_return Reply::err(-EROFS);
    fuse_open_out o{};
    o.fh = in->nodeid;
    o.open_flags = FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES;
    co_return Reply::of(o);
  }
  if (op == FUSE_READ) {
    auto* i = reinterpret_cast<const fuse_read_in*>(arg);
    if (!dev) co_return Reply::err(-EBADF);
    uint64_t size = dev->target->size();
    uint64_t n = i->offset >= size ? 0 : std::min<uint64_t>(i->size, size - i->offset);
    Reply rep;
    std::span<std::byte> dst;
    if (n <= req.out.size()) {
      dst = req.out.first(n);
    } else {
      rep.buf = Buffer::get(n);
      dst = rep.buf.span();
    }
    Result<> r;
    if (n > 0) r = co_await dev->target->read(q, dst, i->offset);
    if (!r) {
      LOG_WARN("FUSE read {}@{}+{}: {}", dev->name, i->offset, n, r.error().message);
      co_return Reply::err(-r.error().code);
    }
    rep.n = n;
    rep.data = dst.data();
    co_return rep;
  }
  if (op == FUSE_WRITE) {
    auto* i = reinterpret_cast<const fuse_write_in*>(arg);
    const std::byte* payload = req.payload.data();
    if (!dev || dev->read_only) co_return Reply::err(dev ? -EROFS : -EBADF);
    if (req.payload.size() < i->size) co_return Reply::err(-EINVAL);
    uint64_t size = dev->target->size();
    if (i->offset >= size || i->size > size - i->offset) co_return Reply::err(-ENOSPC);
    IoFlags f;
    f.fua = (i->flags & (O_DSYNC | O_SYNC)) != 0;
    Buffer copy;  // only if the data is not on a 4096-byte boundary
    if (reinterpret_cast<uintptr_t>(payload) % kBufferAlign != 0) {
      copy = Buffer::get(i->size);
      std::memcpy(copy.data(), payload, i->size);
      payload = copy.data();
    }
    auto r = co_await dev->target->write(q, {payload, i->size}, i->offset, f);
    if (!r) {
      LOG_WARN("FUSE write {}@{}+{}: {}", dev->name, i->offset, i->size, r.error().message);
      co_return Reply::err(-r.error().code);
    }
    fuse_write_out o{};
    o.size = i->size;
    co_return Reply::of(o);
  }
  if (op == FUSE_FSYNC || op == FUSE_FLUSH) {
    Result<> r;
    if (dev && !dev->read_only) r = co_await dev->target->flush(q);
    co_return Reply::err(r ? 0 : -r.error().code);
  }
  if (op == FUSE_FALLOCATE) {
    auto* i = reinterpret_cast<const fuse_fallocate_in*>(arg);
    if (!dev || dev->read_only) co_return Reply::err(dev ? -EROFS : -EBADF);
    if (!in_range(dev->target->size(), i->offset, i->length)) co_return Reply::err(-EINVAL);
    Result<> r;
    if (i->mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
      r = co_await dev->target->zero(q, i->offset, i->length, IoFlags{.may_trim = true});
    } else if (i->mode == FALLOC_FL_ZERO_RANGE || i->mode == (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)) {
      r = co_await dev->target->zero(q, i->offset, i->length, {});
    } else if (i->mode == 0 || i->mode == FALLOC_FL_KEEP_SIZE) {
      r = {};  // every block of a device is allocated already
    } else {
      r = fail(EOPNOTSUPP, "fallocate mode");
    }
    co_return Reply::err(r ? 0 : -r.error().code);
  }
  if (op == FUSE_RELEASE || op == FUSE_RELEASEDIR || op == FUSE_ACCESS) co_return Reply::err(0);
  if (op == FUSE_OPENDIR) {
    if (in->nodeid != kRootId) co_return Reply::err(-ENOTDIR);
    co_return Reply::of(fuse_open_out{});
  }
  if (op == FUSE_READDIR) {
    auto* i = reinterpret_cast<const fuse_read_in*>(arg);
    Reply rep;
    std::vector<std::byte>& out = rep.vec;
    // Entries: ".", "..", then the devices; `off` is the index of the next one.
    uint64_t idx = i->offset;
    for (; idx < devices_.size() + 2; ++idx) {
      std::string name = idx == 0 ? "." : idx == 1 ? ".." : devices_[idx - 2].name;
      std::size_t rec = (FUSE_NAME_OFFSET + name.size() + 7) & ~std::size_t{7};
      if (out.size() + rec > i->size) break;
      std::size_t at = out.size();
      out.resize(at + rec);
      auto* de = reinterpret_cast<fuse_dirent*>(out.data() + at);
      de->ino = idx < 2 ? kRootId : 2 + (idx - 2);
      de->off = idx + 1;
      de->namelen = static_cast<uint32_t>(name.size());
      de->type = idx < 2 ? DT_DIR : DT_REG;
      std::memcpy(de->name, name.data(), name.size());
    }
    rep.data = out.data();
    rep.n = out.size();
    co_return rep;
  }
  if (op == FUSE_STATFS) {
    fuse_statfs_out o{};
    o.st.bsize = o.st.frsize = 4096;
    o.st.namelen = 255;
    for (const auto& d : devices_) o.st.blocks += d.target->size() / 4096;
    o.st.files = devices_.size();
    co_return Reply::of(o);
  }
  if (op == FUSE_DESTROY) co_return Reply::err(0);
  co_return Reply::err(-ENOSYS);
}

}  // namespace strata::fuse
