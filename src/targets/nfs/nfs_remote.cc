// NfsRemoteFile: see nfs_remote.h and the lease in targets/remote_file.h.
//
// Threads: the control thread opens the file and reads it (pread) while
// the table loads; afterwards only the lease thread uses the libnfs context.
// ctx_mu_ keeps the two apart all the same. I/O threads only call
// lease_ok(), which reads two atomics.
#include "targets/nfs/nfs_remote.h"

#include <fcntl.h>
#include <unistd.h>

#include <nfsc/libnfs.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include <fmt/core.h>

#include "core/log.h"
#include "core/params.h"
#include "core/thread_annotations.h"
#include "targets/nfs/nfs.h"

namespace strata {
namespace {

using Clock = std::chrono::steady_clock;

int64_t now_ns() { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count(); }

class NoDevices final : public Resolver {
 public:
  Result<std::shared_ptr<Target>> device(std::string_view name) override {
    return fail(ENOENT, fmt::format("no device {} here", name));
  }
};

struct FileId {
  uint64_t ino = 0, size = 0, mtime = 0, mtime_ns = 0, ctime = 0, ctime_ns = 0;
  bool operator==(const FileId&) const = default;
};

class NfsRemoteFile final : public RemoteFile {
 public:
  ~NfsRemoteFile() override {
    stop_ = true;
    if (renewer_.joinable()) renewer_.join();
    MutexLock l(ctx_mu_);
    if (nfs_) {
      if (lease_fh_) nfs_close(nfs_, lease_fh_);
      if (!lease_path_.empty()) (void)nfs_unlink(nfs_, lease_path_.c_str());
      if (fh_) nfs_close(nfs_, fh_);
      nfs_destroy_context(nfs_);
    }
  }

  static Result<std::unique_ptr<NfsRemoteFile>> open(std::string_view url) {
    std::unique_ptr<NfsRemoteFile> f(new NfsRemoteFile());
    f->url_ = std::string(url);
    if (f->url_.rfind("nfs://", 0) != 0)
      return fail(EINVAL, fmt::format("'{}': a remote file is nfs://host/export/path/file", url));
    MutexLock l(f->ctx_mu_);
    TRY(f->connect());
    nfs_stat_64 st{};
    if (nfs_stat64(f->nfs_, f->file_.c_str(), &st) != 0)
      return fail(load_error(f->url_, nfs_get_error(f->nfs_)));
    if (!S_ISREG(st.nfs_mode)) return fail(EINVAL, fmt::format("{}: not a regular file", f->url_));
    f->size_ = st.nfs_size;
    f->id_ = id_of(st);
    if (nfs_open(f->nfs_, f->file_.c_str(), O_RDONLY, &f->fh_) != 0)
      return fail(load_error(fmt::format("open {}", f->url_), nfs_get_error(f->nfs_)));
    return f;
  }

  const std::string& url() const override { return url_; }
  uint64_t size() const override { return size_; }

  Result<> pread(std::span<std::byte> buf, uint64_t offset) override {
    MutexLock l(ctx_mu_);
    std::size_t done = 0;
    while (done < buf.size()) {
      uint64_t n = std::min<uint64_t>(buf.size() - done, 1 << 20);
      int r = nfs_pread(nfs_, fh_, offset + done, n, buf.data() + done);
      if (r < 0) return fail(load_error(fmt::format("read {} at {}", url_, offset + done), nfs_get_error(nfs_)));
      if (r == 0) return fail(EIO, fmt::format("read {} at {}: end of file", url_, offset + done));
      done += static_cast<std::size_t>(r);
    }
    return {};
  }

  Result<std::shared_ptr<Target>> device(uint64_t length) override {
    Params p(std::vector<std::string>{url_, "0", "ro", "timeout=10"});
    p.length = length;
    p.read_only = true;
    NoDevices none;
    return NfsTarget::create(p, none);
  }

  Result<> hold_lease(unsigned period_s) override {
    MutexLock l(ctx_mu_);
    period_ns_ = static_cast<int64_t>(period_s) * 1'000'000'000;
    char host[256] = "host";
    (void)::gethostname(host, sizeof host - 1);
    std::random_device rd;
    holder_ = fmt::format("{}-{}-{:08x}", host, ::getpid(), rd());
    lease_path_ = dir_ + "/" + lease_prefix(name_) + holder_;
    content_ = fmt::format("reader host={} pid={} period={}\n", host, ::getpid(), period_s);
    const int64_t sent = now_ns();
    if (nfs_open2(nfs_, lease_path_.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644, &lease_fh_) != 0) {
      Error e = load_error(fmt::format("{}: lease file {}", url_, lease_path_), nfs_get_error(nfs_));
      lease_path_.clear();
      return fail(std::move(e));
    }
    if (auto r = write_lease(); !r) {
      release_lease_locked();
      return r;
    }
    if (auto r = check_writer(); !r) {
      release_lease_locked();
      return r;
    }
    ok_until_ns_ = sent + period_ns_;
    leased_ = true;
    renewer_ = std::thread([this] { renew_loop(); });
    return {};
  }

  bool lease_ok() const override {
    if (!leased_.load()) return true;
    if (!lapsed_.load() && now_ns() < ok_until_ns_.load()) return true;
    // Said once per lapse, by whichever side sees it first (the renewal may
    // be stuck in a call to a server that does not answer).
    if (!lapse_said_.exchange(true))
      LOG_ERROR("shared file {}: lease not renewed for {} s: reads of it fail until it is back", url_,
                period_ns_ / 1'000'000'000);
    return false;
  }

  std::string sibling_url(std::string_view relative) const override {
    // nfs://server + export + the file's directory + relative, normalised; a
    // link may not climb out of the export.
    std::filesystem::path p = (std::filesystem::path(export_ + dir_) / std::string(relative)).lexically_normal();
    return fmt::format("nfs://{}{}", server_, p.string());
  }

 private:
  NfsRemoteFile() = default;

  static FileId id_of(const nfs_stat_64& st) {
    return {st.nfs_ino, st.nfs_size, st.nfs_mtime, st.nfs_mtime_nsec, st.nfs_ctime, st.nfs_ctime_nsec};
  }

  Result<> connect() REQUIRES(ctx_mu_) {
    nfs_ = nfs_init_context();
    if (!nfs_) return fail(ENOMEM, "nfs_init_context failed");
    nfs_url* u = nfs_parse_url_full(nfs_, url_.c_str());
    if (!u) return fail(EINVAL, fmt::format("url '{}': {}", url_, nfs_get_error(nfs_)));
    server_ = u->server ? u->server : "";
    export_ = u->path ? u->path : "";
    file_ = u->file ? u->file : "";
    nfs_destroy_url(u);
    if (server_.empty() || file_.empty() || file_ == "/")
      return fail(EINVAL, fmt::format("url '{}': needs a server and a file path (nfs://host/export/path/file)", url_));
    if (export_.empty()) export_ = "/";
    std::filesystem::path fp(file_);
    dir_ = fp.parent_path().string();
    if (dir_ == "/") dir_.clear();
    name_ = fp.filename().string();
    nfs_set_timeout(nfs_, 10000);
    nfs_set_autoreconnect(nfs_, 0);
    if (nfs_mount(nfs_, server_.c_str(), export_.c_str()) != 0)
      return fail(load_error(fmt::format("mount {}:{}", server_, export_), nfs_get_error(nfs_)));
    return {};
  }

  Result<> write_lease() REQUIRES(ctx_mu_) {
    if (nfs_pwrite(nfs_, lease_fh_, 0, content_.size(), content_.data()) != static_cast<int>(content_.size()))
      return fail(load_error(fmt::format("{}: write lease {}", url_, lease_path_), nfs_get_error(nfs_)));
    return {};
  }

  // After our lease was written: a live writer's claim refuses the file. The
  // server's clock is read from our own lease's mtime, so no clocks compare.
  Result<> check_writer() REQUIRES(ctx_mu_) {
    nfs_stat_64 mine{}, w{};
    if (nfs_stat64(nfs_, lease_path_.c_str(), &mine) != 0)
      return fail(load_error(fmt::format("{}: stat lease {}", url_, lease_path_), nfs_get_error(nfs_)));
    const std::string claim = dir_ + "/" + writer_claim_name(name_);
    if (nfs_stat64(nfs_, claim.c_str(), &w) != 0) return {};  // no claim
    std::string who(256, '\0');
    nfsfh* wf = nullptr;
    if (nfs_open(nfs_, claim.c_str(), O_RDONLY, &wf) == 0) {
      int n = nfs_pread(nfs_, wf, 0, who.size(), who.data());
      who.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
      nfs_close(nfs_, wf);
    } else {
      who.clear();
    }
    while (!who.empty() && (who.back() == '\n' || who.back() == '\0')) who.pop_back();
    // When the writer last renewed its claim: the time written in it (the
    // server may serve a cached mtime), else the file's mtime.
    int64_t renewed = static_cast<int64_t>(w.nfs_mtime);
    if (auto at = who.find(" renewed="); at != std::string::npos) {
      renewed = std::atoll(who.c_str() + at + 9);
      who.resize(at);
    }
    const int64_t age = static_cast<int64_t>(mine.nfs_mtime) - renewed;
    if (age > static_cast<int64_t>(kWriterClaimPeriod)) {
      LOG_WARN("shared file {}: ignoring a stale writer's claim {} ({} s old)", url_, claim, age);
      return {};
    }
    return fail(EBUSY, fmt::format("shared file {} is being written ({}; claim renewed {} s ago): a host reads it "
                                   "only when no one writes it",
                                   url_, who.empty() ? "writer unknown" : who, std::max<int64_t>(age, 0)));
  }

  void release_lease_locked() REQUIRES(ctx_mu_) {
    if (lease_fh_) nfs_close(nfs_, lease_fh_);
    lease_fh_ = nullptr;
    if (!lease_path_.empty()) (void)nfs_unlink(nfs_, lease_path_.c_str());
    lease_path_.clear();
  }

  // Drops a connection that failed; the next renewal makes a new one.
  bool reset_connection() REQUIRES(ctx_mu_) {
    nfs_destroy_context(nfs_);
    nfs_ = nullptr;
    fh_ = lease_fh_ = nullptr;
    return false;
  }

  // One renewal: rewrite the lease (the server stamps its mtime). After a
  // lapse, the file must also be unchanged and have no live writer before
  // reads trust it again. A connection that failed is made again.
  bool renew_once() REQUIRES(ctx_mu_) {
    const int64_t sent = now_ns();
    const bool lapsed = sent >= ok_until_ns_.load();
    if (lapsed && !lapsed_.load()) {
      lapsed_ = true;
      if (!lapse_said_.exchange(true))
        LOG_ERROR("shared file {}: lease not renewed for {} s: reads of it fail until it is back", url_,
                  period_ns_ / 1'000'000'000);
    }
    if (!nfs_) {
      if (auto r = connect(); !r) {
        if (nfs_) nfs_destroy_context(nfs_);
        nfs_ = nullptr;
        return false;
      }
      fh_ = nullptr;
      lease_fh_ = nullptr;
    }
    if (!lease_fh_ && nfs_open2(nfs_, lease_path_.c_str(), O_CREAT | O_WRONLY, 0644, &lease_fh_) != 0) return reset_connection();
    if (!write_lease()) return reset_connection();
    if (lapsed_.load()) {
      nfs_stat_64 st{};
      if (nfs_stat64(nfs_, file_.c_str(), &st) != 0) return reset_connection();
      if (!(id_of(st) == id_)) {
        LOG_ERROR("shared file {} changed while this host's lease had lapsed: reads of it keep failing (reload "
                  "the device)",
                  url_);
        return false;
      }
      if (auto r = check_writer(); !r) {
        LOG_ERROR("{}", r.error().message);
        return false;
      }
      lapsed_ = false;
      lapse_said_ = false;
      LOG_INFO("shared file {}: lease renewed, the file is unchanged: reads go on", url_);
    }
    ok_until_ns_ = sent + period_ns_;
    return true;
  }

  // Sleeps up to `d` in short steps; false once the object is going.
  bool nap(std::chrono::nanoseconds d) const {
    const auto until = Clock::now() + d;
    while (Clock::now() < until) {
      if (stop_.load()) return false;
      std::this_thread::sleep_for(std::min<std::chrono::nanoseconds>(until - Clock::now(), std::chrono::milliseconds(50)));
    }
    return !stop_.load();
  }

  void renew_loop() {
    const auto every = std::chrono::nanoseconds(std::max<int64_t>(period_ns_ / 3, 200'000'000));
    bool ok = true;
    // After a failed renewal, try again soon rather than after a whole interval.
    while (nap(ok ? every : std::chrono::nanoseconds(500'000'000))) {
      MutexLock l(ctx_mu_);
      ok = renew_once();
    }
  }

  std::string url_, server_, export_, file_, dir_, name_;
  uint64_t size_ = 0;
  FileId id_;
  Mutex ctx_mu_;
  nfs_context* nfs_ GUARDED_BY(ctx_mu_) = nullptr;
  nfsfh* fh_ GUARDED_BY(ctx_mu_) = nullptr;
  nfsfh* lease_fh_ GUARDED_BY(ctx_mu_) = nullptr;
  std::string holder_, lease_path_, content_;
  int64_t period_ns_ = 0;
  std::atomic<bool> leased_{false}, lapsed_{false};
  mutable std::atomic<bool> lapse_said_{false};
  std::atomic<int64_t> ok_until_ns_{0};
  std::atomic<bool> stop_{false};
  std::thread renewer_;
};

}  // namespace

Result<std::unique_ptr<RemoteFile>> open_nfs_remote_file(std::string_view url) {
  auto f = NfsRemoteFile::open(url);
  if (!f) return fail(f.error());
  return std::unique_ptr<RemoteFile>(std::move(*f));
}

}  // namespace strata
