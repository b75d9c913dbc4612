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

FuseExport::FuseExport(std::vector<Queue*> queues, std::vector<Device> devices)
    : queues_(std::move(queues)), devices_(std::move(devices)) {
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

void FuseExport::stop() {
  if (fd_ < 0 || stopping_.exchange(true)) return;
  // Unmounting ends the connection: every posted read fails with ENODEV.
  if (::umount2(mountpoint_.c_str(), 0) < 0 && ::umount2(mountpoint_.c_str(), MNT_DETACH) < 0)
    LOG_ERROR("unmount {}: {}", mountpoint_, std::strerror(errno));
  // A loop device may still hold a file: MNT_DETACH above lets the unmount
  // finish, and closing /dev/fuse below aborts the connection, so its I/O
  // then fails with ENOTCONN instead of hanging.
  for (int i = 0; i < 500 && slots_.load() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (slots_.load() == 0) {
    ::close(fd_);
  } else {
    LOG_WARN("FUSE {}: {} requests still outstanding at exit", mountpoint_, slots_.load());
  }
  fd_ = -1;
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
  a->mode = S_IFREG | (d->read_only ? 0444 : 0644);
  a->nlink = 1;
  a->size = d->target->size();
  a->blocks = (a->size + 511) / 512;
}

void FuseExport::reply(uint64_t unique, int error, const void* data, std::size_t n, const void* data2,
                       std::size_t n2) {
  fuse_out_header h{};
  h.unique = unique;
  h.error = error;
  iovec iov[3] = {{&h, sizeof h}, {const_cast<void*>(data), n}, {const_cast<void*>(data2), n2}};
  int cnt = 1 + (n ? 1 : 0);
  if (n2) {
    iov[cnt] = iov[2];
    ++cnt;
  }
  h.len = static_cast<uint32_t>(sizeof h + (error ? 0 : n + n2));
  if (error) cnt = 1;
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
    co_await handle(q, in.data(), static_cast<std::size_t>(n));
  }
  slots_.fetch_sub(1);
}

Task<void> FuseExport::handle(Queue& q, std::byte* req, std::size_t len) {
  if (len < sizeof(fuse_in_header)) co_return;
  auto* in = reinterpret_cast<fuse_in_header*>(req);
  std::byte* arg = req + sizeof(fuse_in_header);
  const uint32_t op = in->opcode;
  const uint64_t u = in->unique;
  const Device* dev = device_of(in->nodeid);

  // if/else, not switch: g++ 12 miscompiles co_await inside switch cases.
  if (op == FUSE_INIT) {
    auto* i = reinterpret_cast<fuse_init_in*>(arg);
    fuse_init_out o{};
    o.major = FUSE_KERNEL_VERSION;
    o.minor = std::min<uint32_t>(i->minor, kOurMinor);
    o.max_readahead = i->max_readahead;
    uint32_t want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ASYNC_DIO | FUSE_MAX_PAGES | FUSE_PARALLEL_DIROPS;
    o.flags = i->flags & want;
    o.max_background = 256;
    o.congestion_threshold = 192;
    o.max_write = max_write_;
    o.time_gran = 1;
    o.max_pages = kMaxPages;
    if (i->major != FUSE_KERNEL_VERSION) {
      reply(u, -EPROTO);
      co_return;
    }
    reply(u, 0, &o, sizeof o);
  } else if (op == FUSE_LOOKUP) {
    std::string name(reinterpret_cast<const char*>(arg));
    if (in->nodeid != kRootId) {
      reply(u, -ENOENT);
      co_return;
    }
    for (std::size_t i = 0; i < devices_.size(); ++i) {
      if (devices_[i].name != name) continue;
      fuse_entry_out e{};
      e.nodeid = 2 + i;
      e.attr_valid = e.entry_valid = 1;
      fill_attr(&e.attr, e.nodeid);
      reply(u, 0, &e, sizeof e);
      co_return;
    }
    reply(u, -ENOENT);
  } else if (op == FUSE_FORGET || op == FUSE_BATCH_FORGET || op == FUSE_INTERRUPT) {
    // No reply.
  } else if (op == FUSE_GETATTR || op == FUSE_SETATTR) {
    if (in->nodeid != kRootId && !dev) {
      reply(u, -ENOENT);
      co_return;
    }
    if (op == FUSE_SETATTR) {
      auto* s = reinterpret_cast<fuse_setattr_in*>(arg);
      if ((s->valid & FATTR_SIZE) && dev && s->size != dev->target->size()) {
        reply(u, -EPERM);  // a block device does not change size
        co_return;
      }
    }
    fuse_attr_out o{};
    o.attr_valid = 1;
    fill_attr(&o.attr, in->nodeid);
    reply(u, 0, &o, sizeof o);
  } else if (op == FUSE_OPEN) {
    auto* i = reinterpret_cast<fuse_open_in*>(arg);
    if (!dev) {
      reply(u, -ENOENT);
      co_return;
    }
    if ((i->flags & O_ACCMODE) != O_RDONLY && dev->read_only) {
      reply(u, -EROFS);
      co_return;
    }
    fuse_open_out o{};
    o.fh = in->nodeid;
    o.open_flags = FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES;
    reply(u, 0, &o, sizeof o);
  } else if (op == FUSE_READ) {
    auto* i = reinterpret_cast<fuse_read_in*>(arg);
    if (!dev) {
      reply(u, -EBADF);
      co_return;
    }
    uint64_t size = dev->target->size();
    uint64_t n = i->offset >= size ? 0 : std::min<uint64_t>(i->size, size - i->offset);
    Buffer data = Buffer::get(n);
    Result<> r;
    if (n > 0) r = co_await dev->target->read(q, data.span(), i->offset);
    if (!r) {
      LOG_WARN("FUSE read {}@{}+{}: {}", dev->name, i->offset, n, r.error().message);
      reply(u, -r.error().code);
    } else {
      reply(u, 0, data.data(), n);
    }
  } else if (op == FUSE_WRITE) {
    auto* i = reinterpret_cast<fuse_write_in*>(arg);
    const std::byte* payload = arg + sizeof(fuse_write_in);
    if (!dev || dev->read_only) {
      reply(u, dev ? -EROFS : -EBADF);
      co_return;
    }
    uint64_t size = dev->target->size();
    if (i->offset >= size || i->size > size - i->offset) {
      reply(u, -ENOSPC);
      co_return;
    }
    IoFlags f;
    f.fua = (i->flags & (O_DSYNC | O_SYNC)) != 0;
    Buffer copy;  // only if the data is not where kReadPad puts it
    if (reinterpret_cast<uintptr_t>(payload) % kBufferAlign != 0) {
      copy = Buffer::get(i->size);
      std::memcpy(copy.data(), payload, i->size);
      payload = copy.data();
    }
    auto r = co_await dev->target->write(q, {payload, i->size}, i->offset, f);
    if (!r) {
      LOG_WARN("FUSE write {}@{}+{}: {}", dev->name, i->offset, i->size, r.error().message);
      reply(u, -r.error().code);
    } else {
      fuse_write_out o{};
      o.size = i->size;
      reply(u, 0, &o, sizeof o);
    }
  } else if (op == FUSE_FSYNC || op == FUSE_FLUSH) {
    Result<> r;
    if (dev && !dev->read_only) r = co_await dev->target->flush(q);
    reply(u, r ? 0 : -r.error().code);
  } else if (op == FUSE_FALLOCATE) {
    auto* i = reinterpret_cast<fuse_fallocate_in*>(arg);
    if (!dev || dev->read_only) {
      reply(u, dev ? -EROFS : -EBADF);
      co_return;
    }
    if (!in_range(dev->target->size(), i->offset, i->length)) {
      reply(u, -EINVAL);
      co_return;
    }
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
    reply(u, r ? 0 : -r.error().code);
  } else if (op == FUSE_RELEASE || op == FUSE_RELEASEDIR || op == FUSE_ACCESS) {
    reply(u, 0);
  } else if (op == FUSE_OPENDIR) {
    fuse_open_out o{};
    reply(u, in->nodeid == kRootId ? 0 : -ENOTDIR, &o, sizeof o);
  } else if (op == FUSE_READDIR) {
    auto* i = reinterpret_cast<fuse_read_in*>(arg);
    std::vector<std::byte> out;
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
    reply(u, 0, out.data(), out.size());
  } else if (op == FUSE_STATFS) {
    fuse_statfs_out o{};
    o.st.bsize = o.st.frsize = 4096;
    o.st.namelen = 255;
    for (const auto& d : devices_) o.st.blocks += d.target->size() / 4096;
    o.st.files = devices_.size();
    reply(u, 0, &o, sizeof o);
  } else if (op == FUSE_DESTROY) {
    reply(u, 0);
  } else {
    reply(u, -ENOSYS);
  }
}

}  // namespace strata::fuse
