#include "targets/cow/layer.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <thread>

#include <fmt/core.h>

#include "core/bytes.h"
#include "core/log.h"

namespace strata {
namespace {

constexpr char kMagic[8] = {'S', 'T', 'R', 'A', 'T', 'C', 'O', 'W'};
constexpr std::size_t kMaxParentPath = 1024;

Uuid new_uuid() {
  Uuid u;
  std::random_device rd;
  for (auto& b : u) b = static_cast<uint8_t>(rd());
  u[6] = (u[6] & 0x0f) | 0x40;  // version 4
  u[8] = (u[8] & 0x3f) | 0x80;
  return u;
}

uint64_t bitmap_bytes_for(uint64_t size, uint32_t chunk) {
  uint64_t chunks = (size + chunk - 1) / chunk;
  return ((chunks * 2 + 7) / 8 + 4095) / 4096 * 4096;
}

// Opens a layer file, refusing anything but a regular file before it could
// block (a FIFO's open() waits for a writer, ignoring SIGTERM). O_NONBLOCK is
// cleared again: io_uring would fail reads with EAGAIN instead of waiting.
Result<int> open_regular(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return posix_error(fmt::format("layer {}", path), errno);
  struct stat st {};
  if (::fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return fail(EINVAL, fmt::format("layer {}: not a regular file", path));
  }
  (void)::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

// The data region starts after the bitmap, rounded up to 1 MiB.
uint64_t data_offset_for(uint64_t bitmap_bytes) {
  return (LayerFile::kHeaderSize + bitmap_bytes + (1 << 20) - 1) / (1 << 20) * (1 << 20);
}

// `b` holds the header as read (or zeros): bytes this version does not
// know (reserved space, a compatible feature's fields) are kept as they are.
void encode(const LayerFile::Header& h, uint8_t* b) {
  std::memcpy(b, kMagic, 8);
  store_le<uint32_t>(b, 8, h.version);
  store_le<uint32_t>(b, 12, h.incompat);
  store_le<uint32_t>(b, 16, h.compat);
  store_le<uint32_t>(b, 20, h.chunk_size);
  store_le<uint64_t>(b, 24, h.size);
  std::memcpy(b + 32, h.uuid.data(), 16);
  std::memcpy(b + 48, h.parent_uuid.data(), 16);
  store_le<uint32_t>(b, 64, h.flags);
  store_le<uint64_t>(b, 72, h.bitmap_offset);
  store_le<uint64_t>(b, 80, h.bitmap_bytes);
  store_le<uint64_t>(b, 88, h.data_offset);
  if (load_le<uint16_t>(b, 96) != h.parent_path.size() ||
      std::memcmp(b + 98, h.parent_path.data(), h.parent_path.size()) != 0) {
    // A new parent path (relinked): the old one's bytes go with it.
    std::memset(b + 98, 0, kMaxParentPath);
    store_le<uint16_t>(b, 96, static_cast<uint16_t>(h.parent_path.size()));
    std::memcpy(b + 98, h.parent_path.data(), h.parent_path.size());
  }
  seal_header(b, LayerFile::kHeaderSize);
}

// Decodes and validates; `problems` gets every problem found (check wants
// them all), the Result the first fatal one.
Result<LayerFile::Header> decode(const uint8_t* b, const std::string& path, std::vector<std::string>* problems,
                                 bool ignore_checksum = false) {
  std::vector<std::string> local;
  auto& ps = problems ? *problems : local;
  LayerFile::Header h;
  if (std::memcmp(b, kMagic, 8) != 0) {
    ps.push_back(fmt::format("{}: wrong magic: not a strata layer", path));
    return fail(EINVAL, ps.back());
  }
  if (!ignore_checksum && !header_checksum_ok(b, LayerFile::kHeaderSize))
    ps.push_back(fmt::format("{}: bad header checksum", path));
  h.version = load_le<uint32_t>(b, 8);
  h.incompat = load_le<uint32_t>(b, 12);
  h.compat = load_le<uint32_t>(b, 16);
  h.chunk_size = load_le<uint32_t>(b, 20);
  h.size = load_le<uint64_t>(b, 24);
  std::memcpy(h.uuid.data(), b + 32, 16);
  std::memcpy(h.parent_uuid.data(), b + 48, 16);
  h.flags = load_le<uint32_t>(b, 64);
  h.bitmap_offset = load_le<uint64_t>(b, 72);
  h.bitmap_bytes = load_le<uint64_t>(b, 80);
  h.data_offset = load_le<uint64_t>(b, 88);
  uint16_t plen = load_le<uint16_t>(b, 96);
  if (h.version != LayerFile::kVersion) ps.push_back(fmt::format("{}: unsupported format version {}", path, h.version));
  if (h.incompat & ~LayerFile::kKnownIncompat)
    ps.push_back(fmt::format("{}: unknown incompatible feature bits {:#x}: refusing to open", path,
                             h.incompat & ~LayerFile::kKnownIncompat));
  if (h.chunk_size < 512 || h.chunk_size > (1u << 20) || (h.chunk_size & (h.chunk_size - 1)))
    ps.push_back(fmt::format("{}: chunk size {} is not a power of two between 512 and 1 MiB", path, h.chunk_size));
  else if (h.size == 0)
    ps.push_back(fmt::format("{}: virtual size is 0", path));
  else if (h.bitmap_offset != LayerFile::kHeaderSize || h.bitmap_bytes != bitmap_bytes_for(h.size, h.chunk_size))
    ps.push_back(fmt::format("{}: bitmap size mismatch: header says {} bytes at {}, {} chunks need {}", path,
                             h.bitmap_bytes, h.bitmap_offset, (h.size + h.chunk_size - 1) / h.chunk_size,
                             bitmap_bytes_for(h.size, h.chunk_size)));
  else if (h.data_offset < h.bitmap_offset + h.bitmap_bytes || h.data_offset % 4096)
    ps.push_back(fmt::format("{}: data offset {} overlaps the bitmap", path, h.data_offset));
  else if (h.data_offset != data_offset_for(h.bitmap_bytes))
    // Every field the format derives is checked, not only trusted: a data
    // offset elsewhere would serve other bytes than were written.
    ps.push_back(fmt::format("{}: data offset {} is not the {} the format gives", path, h.data_offset,
                             data_offset_for(h.bitmap_bytes)));
  if (plen > kMaxParentPath) {
    ps.push_back(fmt::format("{}: parent path too long", path));
  } else {
    h.parent_path.assign(reinterpret_cast<const char*>(b + 98), plen);
    if (h.parent_path.find('\0') != std::string::npos)
      ps.push_back(fmt::format("{}: the parent path holds a NUL byte", path));
  }
  const bool has_parent_uuid = h.parent_uuid != Uuid{};
  if (has_parent_uuid && plen == 0)
    ps.push_back(fmt::format("{}: a parent UUID ({}) but no parent path: the layers below cannot be found", path,
                             uuid_string(h.parent_uuid)));
  if (!has_parent_uuid && plen != 0)
    ps.push_back(fmt::format("{}: a parent path but no parent UUID", path));
  if (!ps.empty()) return fail(EINVAL, ps.front());
  return h;
}

// Problems of a raw bitmap: slots past the last chunk in use, or state 3.
std::vector<std::string> bitmap_problems(const std::vector<uint8_t>& raw, uint64_t chunks, const std::string& path) {
  std::vector<std::string> ps;
  uint64_t past = 0, bad = 0;
  for (uint64_t c = 0; c < raw.size() * 4; ++c) {
    uint8_t s = (raw[c / 4] >> (2 * (c % 4))) & 3;
    if (c >= chunks && s) ++past;
    if (c < chunks && s == 3) ++bad;
  }
  if (past) ps.push_back(fmt::format("{}: {} bits set past the end of the layer ({} chunks)", path, past, chunks));
  if (bad) ps.push_back(fmt::format("{}: {} chunks have an invalid state (3)", path, bad));
  return ps;
}

}  // namespace

// The writer's side of the shared-layer lease (targets/remote_file.h, docs/cluster.md):
// NAME.writer is written (the filesystem stamps its mtime: "now" in the
// server's clock, the clock the lease files were stamped with), then every
// NAME.lease-* file whose mtime is less than its period older is a live
// reader on some host, and the claim is dropped and the write refused. Held,
// the claim is stamped again every 3 s; removed when the layer closes.
class WriterClaim {
 public:
  static Result<std::unique_ptr<WriterClaim>> take(const std::string& layer_path) {
    std::filesystem::path lp(layer_path);
    const std::string dir = lp.parent_path().empty() ? "." : lp.parent_path().string();
    const std::string name = lp.filename().string();
    std::unique_ptr<WriterClaim> c(new WriterClaim());
    c->path_ = dir + "/" + writer_claim_name(name);
    // The layer's exclusive flock is held: a claim already there is a dead writer's.
    int fd = ::open(c->path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) return posix_error(fmt::format("layer {}: writer's claim {}", layer_path, c->path_), errno);
    char host[256] = "host";
    (void)::gethostname(host, sizeof host - 1);
    c->who_ = fmt::format("writer host={} pid={}", host, ::getpid());
    bool ok = c->stamp(fd) && ::fsync(fd) == 0;
    struct stat cst {};
    ok = ok && ::fstat(fd, &cst) == 0;
    ::close(fd);
    if (!ok) {
      ::unlink(c->path_.c_str());
      return posix_error(fmt::format("layer {}: writer's claim {}", layer_path, c->path_), errno ? errno : EIO);
    }
    const double now = static_cast<double>(cst.st_mtim.tv_sec) + cst.st_mtim.tv_nsec / 1e9;
    std::vector<std::string> live;
    std::error_code ec;
    const std::string prefix = lease_prefix(name);
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      const std::string f = e.path().filename().string();
      if (f.rfind(prefix, 0) != 0) continue;
      struct stat st {};
      if (::stat(e.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      char buf[512] = {};
      std::string text;
      if (int lf = ::open(e.path().c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK); lf >= 0) {
        ssize_t n = ::read(lf, buf, sizeof buf - 1);
        if (n > 0) text.assign(buf, static_cast<std::size_t>(n));
        ::close(lf);
      }
      unsigned period = 30;
      if (auto at = text.find("period="); at != std::string::npos) period = static_cast<unsigned>(std::atoi(text.c_str() + at + 7));
      if (period == 0) period = 30;
      const double age = now - (static_cast<double>(st.st_mtim.tv_sec) + st.st_mtim.tv_nsec / 1e9);
      if (age >= period) continue;  // a reader that stopped renewing: expired
      while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
      if (auto at = text.find(" period="); at != std::string::npos) text.resize(at);
      if (text.rfind("reader ", 0) == 0) text.erase(0, 7);
      live.push_back(fmt::format("{} (renewed {:.1f} s ago)", text.empty() ? f : text, std::max(age, 0.0)));
    }
    if (!live.empty()) {
      ::unlink(c->path_.c_str());
      std::string list;
      for (std::size_t i = 0; i < live.size() && i < 8; ++i) list += (i ? "; " : "") + live[i];
      if (live.size() > 8) list += fmt::format("; and {} more", live.size() - 8);
      return fail(EBUSY, fmt::format("layer {} is shared: {} host(s) read it ({}): a shared layer is never "
                                     "written while hosts may read it; stop them, or wait until their leases "
                                     "expire",
                                     layer_path, live.size(), list));
    }
    c->renewer_ = std::thread([c = c.get()] {
      for (;;) {
        for (int i = 0; i < 30; ++i) {
          if (c->stop_.load()) return;
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        if (int fd = ::open(c->path_.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW); fd >= 0) {
          (void)c->stamp(fd);
          ::close(fd);
        }
      }
    });
    return c;
  }
  ~WriterClaim() {
    stop_ = true;
    if (renewer_.joinable()) renewer_.join();
    ::unlink(path_.c_str());
  }

 private:
  WriterClaim() = default;
  // Writes who holds the claim and when it was last renewed, in the clock of
  // the machine the files live on. Readers judge the claim by this time, not
  // by the file's mtime: an NFS server may answer with cached attributes
  // (ganesha does) but reads the file's bytes from disk.
  bool stamp(int fd) const {
    const std::string text = fmt::format("{} renewed={}\n", who_, static_cast<long long>(::time(nullptr)));
    return ::pwrite(fd, text.data(), text.size(), 0) == static_cast<ssize_t>(text.size()) &&
           ::ftruncate(fd, static_cast<off_t>(text.size())) == 0;
  }
  std::string path_, who_;
  std::atomic<bool> stop_{false};
  std::thread renewer_;
};

std::string uuid_string(const Uuid& u) {
  return fmt::format("{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
                     u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
                     u[15]);
}

std::optional<std::span<const std::byte>> LayerFile::data_view(uint64_t pos, uint64_t length) const {
  if (fd_ < 0) return std::nullopt;  // a remote layer: read through its device
  std::call_once(map_once_, [this] {
    data_map_.map(fd_, h_.data_offset, chunks() * h_.chunk_size, /*punched=*/true, fmt::format("layer {}", path_));
  });
  return data_map_.view(pos, length);
}

LayerFile::~LayerFile() {
  if (fd_ >= 0) ::close(fd_);
}

void LayerFile::release_claim() { claim_.reset(); }

void LayerFile::rename_to(std::string path) {
  path_ = std::move(path);
  claim_.reset();
}

std::string LayerFile::parent_full_path() const {
  if (h_.parent_path.empty()) return "";
  if (is_remote_url(h_.parent_path)) return h_.parent_path;
  if (remote_) return remote_->sibling_url(h_.parent_path);
  std::filesystem::path p(h_.parent_path);
  if (p.is_absolute()) return p.string();
  return (std::filesystem::path(path_).parent_path() / p).lexically_normal().string();
}

Result<std::unique_ptr<LayerFile>> LayerFile::create(const std::string& path, uint64_t size, uint32_t chunk_size,
                                                     const LayerFile* parent) {
  if (chunk_size < 512 || chunk_size > (1u << 20) || (chunk_size & (chunk_size - 1)))
    return fail(EINVAL, fmt::format("chunk size {} must be a power of two between 512 and 1 MiB", chunk_size));
  if (size == 0) return fail(EINVAL, "layer size must be > 0");
  std::unique_ptr<LayerFile> l(new LayerFile());
  l->path_ = path;
  auto& h = l->h_;
  h.chunk_size = chunk_size;
  h.size = size;
  h.uuid = new_uuid();
  h.bitmap_bytes = bitmap_bytes_for(size, chunk_size);
  h.data_offset = data_offset_for(h.bitmap_bytes);
  if (parent) {
    if (parent->header().size != size || parent->header().chunk_size != chunk_size)
      return fail(EINVAL, fmt::format("parent {} has size {} and chunk size {}: a child must match", parent->path(),
                                      parent->header().size, parent->header().chunk_size));
    h.parent_uuid = parent->header().uuid;
    std::filesystem::path dir = std::filesystem::absolute(path).parent_path();
    // A shared parent on remote storage is linked by its URL.
    h.parent_path = parent->remote() ? parent->path()
                                     : std::filesystem::absolute(parent->path()).lexically_relative(dir).string();
    if (h.parent_path.size() > kMaxParentPath) return fail(ENAMETOOLONG, "parent path too long");
  }
  l->fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (l->fd_ < 0) return posix_error(fmt::format("layer {}", path), errno);
  if (::ftruncate(l->fd_, h.data_offset + size) < 0) return posix_error(fmt::format("layer {}", path), errno);
  TRY(l->write_header());
  TRY(l->sync());
  l->prepare_for_writes();
  return l;
}

void LayerFile::prepare_for_writes() const {
  (void)::posix_fadvise(fd_, static_cast<off_t>(h_.data_offset), 0, POSIX_FADV_DONTNEED);
  (void)::posix_fadvise(fd_, 0, 0, POSIX_FADV_RANDOM);
}

Result<std::unique_ptr<LayerFile>> LayerFile::open(const std::string& path, bool writable, bool lock) {
  std::unique_ptr<LayerFile> l(new LayerFile());
  l->path_ = path;
  l->fd_ = TRY(open_regular(path, writable ? O_RDWR : O_RDONLY));
  if (lock && ::flock(l->fd_, (writable ? LOCK_EX : LOCK_SH) | LOCK_NB) < 0) {
    int e = errno;
    if (e == EWOULDBLOCK)
      return fail(EBUSY, fmt::format("layer {} is in use by another process{}", path,
                                     writable ? " (a writable layer is opened by one process only)"
                                              : " that has it open for writing"));
    return posix_error(fmt::format("layer {}: lock", path), e);
  }
  uint8_t b[kHeaderSize];
  if (::pread(l->fd_, b, kHeaderSize, 0) != static_cast<ssize_t>(kHeaderSize))
    return fail(EINVAL, fmt::format("layer {}: header is truncated", path));
  l->h_ = TRY(decode(b, path, nullptr));
  struct stat st;
  if (::fstat(l->fd_, &st) == 0 && static_cast<uint64_t>(st.st_size) < l->h_.data_offset)
    return fail(EINVAL, fmt::format("layer {}: file is shorter than its header and bitmap", path));
  if (static_cast<uint64_t>(st.st_size) < l->h_.data_offset + l->h_.size)
    return fail(EINVAL, fmt::format("layer {}: the data region is truncated: {} bytes, the header needs {}", path,
                                    st.st_size, l->h_.data_offset + l->h_.size));
  std::memcpy(l->raw_.data(), b, kHeaderSize);
  if (writable && (l->h_.flags & kFlagReadOnly)) l->claim_ = TRY(WriterClaim::take(path));
  if (writable) l->prepare_for_writes();
  return l;
}

Result<std::unique_ptr<LayerFile>> LayerFile::open_remote(std::unique_ptr<RemoteFile> f) {
  std::unique_ptr<LayerFile> l(new LayerFile());
  l->path_ = f->url();
  uint8_t b[kHeaderSize];
  if (f->size() < kHeaderSize) return fail(EINVAL, fmt::format("layer {}: header is truncated", l->path_));
  TRY(f->pread({reinterpret_cast<std::byte*>(b), kHeaderSize}, 0));
  l->h_ = TRY(decode(b, l->path_, nullptr));
  if (f->size() < l->h_.data_offset + l->h_.size)
    return fail(EINVAL, fmt::format("layer {}: the data region is truncated: {} bytes, the header needs {}", l->path_,
                                    f->size(), l->h_.data_offset + l->h_.size));
  if (!(l->h_.flags & kFlagReadOnly))
    return fail(EINVAL, fmt::format("layer {} is not a read-only (snapshot) layer: only those are shared between "
                                    "hosts",
                                    l->path_));
  std::memcpy(l->raw_.data(), b, kHeaderSize);
  l->remote_dev_ = TRY(f->device(f->size() / 512 * 512));
  l->remote_ = std::move(f);
  return l;
}

Result<> LayerFile::read_at(void* buf, std::size_t n, uint64_t off) const {
  if (remote_) return remote_->pread({static_cast<std::byte*>(buf), n}, off);
  if (::pread(fd_, buf, n, static_cast<off_t>(off)) != static_cast<ssize_t>(n))
    return fail(EIO, fmt::format("layer {}: short read at {}", path_, off));
  return {};
}

Result<> LayerFile::write_header() {
  uint8_t b[kHeaderSize];
  std::memcpy(b, raw_.data(), kHeaderSize);
  encode(h_, b);
  if (::pwrite(fd_, b, kHeaderSize, 0) != static_cast<ssize_t>(kHeaderSize))
    return posix_error(fmt::format("layer {}: write header", path_), errno ? errno : EIO);
  std::memcpy(raw_.data(), b, kHeaderSize);
  return {};
}

Result<> LayerFile::sync() {
  if (::fdatasync(fd_) < 0) return posix_error(fmt::format("layer {}: fdatasync", path_), errno);
  return {};
}

Result<std::vector<uint8_t>> LayerFile::read_bitmap() const {
  std::vector<uint8_t> raw(h_.bitmap_bytes);
  if (!read_at(raw.data(), raw.size(), h_.bitmap_offset))
    return fail(EIO, fmt::format("layer {}: cannot read the bitmap", path_));
  // A damaged bitmap is refused, as `strata layer check` reports it: a state
  // 3 or a bit past the last chunk means the layer is not what was written.
  auto problems = bitmap_problems(raw, chunks(), path_);
  if (!problems.empty()) return fail(EINVAL, problems.front());
  std::vector<uint8_t> states(chunks());
  for (uint64_t c = 0; c < chunks(); ++c) states[c] = (raw[c / 4] >> (2 * (c % 4))) & 3;
  return states;
}

Result<> LayerFile::write_bitmap_pages(const std::vector<uint8_t>& states, uint64_t first, uint64_t last) {
  std::vector<uint8_t> page(4096);
  for (uint64_t p = first; p <= last; ++p) {
    std::fill(page.begin(), page.end(), 0);
    uint64_t c0 = p * 4096 * 4;
    for (uint64_t i = 0; i < 4096 * 4 && c0 + i < states.size(); ++i)
      page[i / 4] |= static_cast<uint8_t>((states[c0 + i] & 3) << (2 * (i % 4)));
    if (::pwrite(fd_, page.data(), 4096, h_.bitmap_offset + p * 4096) != 4096)
      return posix_error(fmt::format("layer {}: write bitmap", path_), errno ? errno : EIO);
  }
  return {};
}

std::vector<std::string> LayerFile::check(const std::string& path) {
  std::vector<std::string> ps;
  std::set<std::pair<dev_t, ino_t>> seen;
  check_chain(path, ps, seen, nullptr, {});
  return ps;
}

void LayerFile::check_chain(const std::string& path, std::vector<std::string>& ps,
                            std::set<std::pair<dev_t, ino_t>>& seen, const Header* child,
                            const std::string& child_path) {
  // A shared layer on remote storage is checked where it lives (on the
  // server, by its local path): the chain is checked down to it.
  if (is_remote_url(path)) return;
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    // Never open a FIFO or a device: open() could block forever.
    if (!S_ISREG(st.st_mode)) {
      ps.push_back(fmt::format("{}: not a regular file", path));
      return;
    }
    if (!seen.insert({st.st_dev, st.st_ino}).second) {
      ps.push_back(fmt::format("{}: parent cycle: this layer is already below in the chain", path));
      return;
    }
  }
  auto own = check_one(path);
  const bool ok = own.empty();
  for (auto& p : own) ps.push_back(std::move(p));
  if (!ok) return;
  auto l = open(path, false, false);
  if (!l) return;
  const Header& h = (*l)->header();
  if (child && (h.size != child->size || h.chunk_size != child->chunk_size))
    ps.push_back(fmt::format("{}: size {} and chunk size {} differ from its child's ({} and {} in {})", path, h.size,
                             h.chunk_size, child->size, child->chunk_size, child_path));
  if (!h.parent_path.empty()) check_chain((*l)->parent_full_path(), ps, seen, &h, path);
}

std::vector<std::string> LayerFile::check_one(const std::string& path) {
  std::vector<std::string> ps;
  auto ofd = open_regular(path, O_RDONLY);
  if (!ofd) {
    ps.push_back(ofd.error().message);
    return ps;
  }
  int fd = *ofd;
  uint8_t b[kHeaderSize];
  ssize_t n = ::pread(fd, b, kHeaderSize, 0);
  ::close(fd);
  if (n != static_cast<ssize_t>(kHeaderSize)) {
    ps.push_back(fmt::format("{}: header is truncated", path));
    return ps;
  }
  auto h = decode(b, path, &ps);
  if (!h) return ps;
  auto l = open(path, false, false);
  if (!l) {
    ps.push_back(l.error().message);
    return ps;
  }
  // Bits past the end: states of chunks beyond the last one, or state 3.
  std::vector<uint8_t> raw(h->bitmap_bytes);
  if (::pread((*l)->fd(), raw.data(), raw.size(), h->bitmap_offset) != static_cast<ssize_t>(raw.size())) {
    ps.push_back(fmt::format("layer {}: cannot read the bitmap", path));
    return ps;
  }
  for (auto& p : bitmap_problems(raw, (*l)->chunks(), path)) ps.push_back(std::move(p));
  if (!h->parent_path.empty() && !is_remote_url((*l)->parent_full_path())) {
    std::string pp = (*l)->parent_full_path();
    auto parent = open(pp, false, false);
    if (!parent)
      ps.push_back(fmt::format("{}: broken parent link: {}", path, parent.error().message));
    else if ((*parent)->header().uuid != h->parent_uuid)
      ps.push_back(fmt::format("{}: broken parent link: {} has UUID {}, expected {}", path, pp,
                               uuid_string((*parent)->header().uuid), uuid_string(h->parent_uuid)));
  }
  return ps;
}

Result<std::vector<std::string>> LayerFile::repair(const std::string& path) {
  // What can be repaired without guessing: a header checksum that is wrong
  // while every field it covers is consistent (a torn or bit-flipped
  // checksum), bitmap slots past the last chunk (cleared), and chunks in the
  // invalid state 3 (marked absent: reads fall through to the parent, this
  // layer's data for them is dropped). Everything else (magic, version,
  // unknown incompatible features, sizes, parent links) is left alone and
  // still reported by check().
  std::vector<std::string> fixed;
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return posix_error(fmt::format("layer {}: open for repair", path), errno);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  // The same lock a writable open takes: never repair a layer in use.
  if (::flock(fd, LOCK_EX | LOCK_NB) < 0)
    return posix_error(fmt::format("layer {}: in use by another process (lock)", path), errno);
  // Nor one that other hosts read (the shared-layer lease).
  auto claim = TRY(WriterClaim::take(path));
  uint8_t b[kHeaderSize];
  if (::pread(fd, b, kHeaderSize, 0) != static_cast<ssize_t>(kHeaderSize))
    return fail(EINVAL, fmt::format("{}: header is truncated", path));
  std::vector<std::string> ps;
  auto h = decode(b, path, &ps, /*ignore_checksum=*/true);
  if (!h) return fail(EINVAL, fmt::format("{}: cannot repair: {}", path, h.error().message));
  if (!header_checksum_ok(b, kHeaderSize)) {
    // Only a checksum over fields that agree with everything else: the data
    // offset is what create() computes, the file is as long as create()
    // made it, and the parent (if any) is the layer the link names, of the
    // same geometry. A flipped size, chunk or offset byte fails one of these.
    struct stat st {};
    const uint64_t want_data = (kHeaderSize + h->bitmap_bytes + (1 << 20) - 1) / (1 << 20) * (1 << 20);
    if (::fstat(fd, &st) < 0) return posix_error(fmt::format("layer {}: stat", path), errno);
    std::string why;
    if (h->data_offset != want_data)
      why = fmt::format("data offset {} is not the {} the format gives", h->data_offset, want_data);
    else if (static_cast<uint64_t>(st.st_size) != h->data_offset + h->size)
      why = fmt::format("the header says {} bytes of data at {}, the file has {} bytes", h->size, h->data_offset,
                        st.st_size);
    if (why.empty() && !h->parent_path.empty()) {
      std::filesystem::path pp = std::filesystem::path(path).parent_path() / h->parent_path;
      auto parent = open(pp.string(), false, false);
      if (!parent)
        why = fmt::format("its parent link cannot be checked: {}", parent.error().message);
      else if ((*parent)->header().uuid != h->parent_uuid || (*parent)->header().size != h->size ||
               (*parent)->header().chunk_size != h->chunk_size)
        why = fmt::format("its parent {} does not match (UUID, size or chunk size)", pp.string());
    }
    if (!why.empty())
      return fail(EINVAL, fmt::format("{}: cannot repair: the header checksum is wrong and {}: the header itself "
                                      "is damaged",
                                      path, why));
    uint8_t nb[kHeaderSize];
    std::memcpy(nb, b, kHeaderSize);
    encode(*h, nb);
    if (::pwrite(fd, nb, kHeaderSize, 0) != static_cast<ssize_t>(kHeaderSize) || ::fdatasync(fd) < 0)
      return posix_error(fmt::format("layer {}: write header", path), errno ? errno : EIO);
    fixed.push_back(fmt::format("{}: header checksum rewritten (every field was consistent)", path));
  }
  std::vector<uint8_t> raw(h->bitmap_bytes);
  if (::pread(fd, raw.data(), raw.size(), h->bitmap_offset) != static_cast<ssize_t>(raw.size()))
    return fail(EIO, fmt::format("layer {}: cannot read the bitmap", path));
  const uint64_t chunks = (h->size + h->chunk_size - 1) / h->chunk_size;
  uint64_t past = 0, bad = 0;
  for (uint64_t c = 0; c < raw.size() * 4; ++c) {
    uint8_t st = (raw[c / 4] >> (2 * (c % 4))) & 3;
    if ((c >= chunks && st) || st == 3) {
      (c >= chunks ? past : bad)++;
      raw[c / 4] = static_cast<uint8_t>(raw[c / 4] & ~(3u << (2 * (c % 4))));
    }
  }
  if (past || bad) {
    if (::pwrite(fd, raw.data(), raw.size(), h->bitmap_offset) != static_cast<ssize_t>(raw.size()) ||
        ::fdatasync(fd) < 0)
      return posix_error(fmt::format("layer {}: write bitmap", path), errno ? errno : EIO);
    if (past) fixed.push_back(fmt::format("{}: cleared {} bits past the end of the layer", path, past));
    if (bad)
      fixed.push_back(fmt::format("{}: {} chunks in the invalid state 3 marked absent (they now read from the "
                                  "parent; this layer's data for them is dropped)",
                                  path, bad));
  }
  return fixed;
}

void sync_parent_dir(const std::string& path) {
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || ::fsync(fd) < 0) LOG_WARN("fsync directory {}: {}", dir.string(), std::strerror(errno));
  if (fd >= 0) ::close(fd);
}

}  // namespace strata
