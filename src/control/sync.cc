#include "control/sync.h"

#include <fcntl.h>
#include <libnbd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <future>

#include <fmt/core.h>

#include "core/buffer.h"
#include "core/log.h"

namespace strata::control {
namespace {

constexpr uint64_t kChunk = 4 << 20;

// The replica: a local file or an NBD export (libnbd, synchronous: this runs
// on the control thread, not a queue).
class Replica {
 public:
  static Result<std::unique_ptr<Replica>> open(const std::string& to, uint64_t size) {
    std::unique_ptr<Replica> r(new Replica());
    r->name_ = to;
    if (to.starts_with("nbd://") || to.starts_with("nbd+unix://") || to.starts_with("nbds://") ||
        to.starts_with("nbds+unix://")) {
      r->nbd_ = nbd_create();
      if (!r->nbd_) return fail(ENOMEM, "nbd_create failed");
      nbd_set_uri_allow_local_file(r->nbd_, true);
      if (nbd_connect_uri(r->nbd_, to.c_str()) == -1)
        return fail(nbd_get_errno() ? nbd_get_errno() : EIO, fmt::format("replica {}: {}", to, nbd_get_error()));
      int64_t s = nbd_get_size(r->nbd_);
      if (s < 0 || static_cast<uint64_t>(s) < size)
        return fail(ENOSPC, fmt::format("replica {} holds {} bytes, the device {}", to, s, size));
      if (nbd_is_read_only(r->nbd_) == 1) return fail(EROFS, fmt::format("replica {} is read-only", to));
      return r;
    }
    r->fd_ = ::open(to.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (r->fd_ < 0) return posix_error(fmt::format("replica {}", to), errno);
    struct stat st;
    if (::fstat(r->fd_, &st) == 0 && S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) < size &&
        ::ftruncate(r->fd_, size) < 0)
      return posix_error(fmt::format("replica {}: resize", to), errno);
    return r;
  }
  ~Replica() {
    if (nbd_) {
      (void)drain();  // nbd_close frees buffers libnbd may still send from
      nbd_close(nbd_);
    }
    if (fd_ >= 0) ::close(fd_);
  }
  // Over NBD the write is only sent: the bytes at p must stay as they are
  // until drain() (every write sent completed) returns.
  Result<> write(const std::byte* p, uint64_t n, uint64_t off) {
    if (nbd_) {
      int64_t c = nbd_aio_pwrite(nbd_, p, n, off, NBD_NULL_COMPLETION, 0);
      if (c == -1) return nbd_failure();
      pending_.push_back(c);
      if (pending_.size() >= kMaxInFlight) return drain(kMaxInFlight / 2);
      return {};
    }
    while (n > 0) {
      ssize_t w = ::pwrite(fd_, p, n, off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return posix_error(fmt::format("replica {}: write at {}", name_, off), w < 0 ? errno : EIO);
      p += w;
      n -= w;
      off += w;
    }
    return {};
  }
  // Waits until at most `left` writes sent are still in flight; the first
  // failure among them is returned.
  Result<> drain(std::size_t left = 0) {
    Result<> res;
    while (pending_.size() > left) {
      if (nbd_poll(nbd_, -1) == -1) return nbd_failure();
      for (auto it = pending_.begin(); it != pending_.end();) {
        int r = nbd_aio_command_completed(nbd_, *it);
        if (r == 0) {
          ++it;
          continue;
        }
        if (r == -1 && res) res = nbd_failure();
        it = pending_.erase(it);
      }
    }
    return res;
  }
  Result<> flush() {
    if (nbd_) {
      TRY(drain());
      if (nbd_can_flush(nbd_) == 1 && nbd_flush(nbd_, 0) == -1)
        return fail(nbd_get_errno() ? nbd_get_errno() : EIO, fmt::format("replica {}: {}", name_, nbd_get_error()));
      return {};
    }
    if (::fdatasync(fd_) < 0) return posix_error(fmt::format("replica {}: fdatasync", name_), errno);
    return {};
  }

 private:
  Replica() = default;
  Failure nbd_failure() const {
    return fail(nbd_get_errno() ? nbd_get_errno() : EIO, fmt::format("replica {}: {}", name_, nbd_get_error()));
  }
  static constexpr std::size_t kMaxInFlight = 64;
  std::string name_;
  std::vector<int64_t> pending_;  // NBD write cookies sent, not yet completed
  nbd_handle* nbd_ = nullptr;
  int fd_ = -1;
};

// Extents copied per hand-off to the queue: one round trip between this
// thread and the queue's costs more than a small read from the page cache,
// so scattered small extents are read together.
constexpr std::size_t kBatch = 1024;
using Extent = std::pair<uint64_t, uint64_t>;  // offset, length

// Reads the extents of `batch` (kChunk bytes at most in all) back to back
// into p, all at once on queue q.
Result<> read_device(Target& t, Queue& q, std::byte* p, const std::vector<Extent>& batch) {
  struct State {  // touched on the queue thread only
    std::size_t left;
    Result<> result;
  };
  std::promise<Result<>> done;
  auto finish = [&done](State& st) {
    if (--st.left == 0) done.set_value(std::move(st.result));
  };
  q.post([&] {
    // One count for each read and one for this loop, so that a read that
    // completes at once cannot end the batch while reads are still spawned.
    auto st = std::make_shared<State>(State{batch.size() + 1, {}});
    std::byte* at = p;
    for (const auto& [off, n] : batch) {
      spawn([](Target& t, Queue& q, std::byte* p, uint64_t n, uint64_t off, std::shared_ptr<State> st,
               const decltype(finish)& finish) -> Task<void> {
        auto r = co_await t.read(q, {p, n}, off);
        if (!r && st->result) st->result = std::move(r);
        finish(*st);
      }(t, q, at, n, off, st, finish));
      at += n;
    }
    finish(*st);
  });
  return done.get_future().get();
}

}  // namespace

Result<nlohmann::json> sync_device(DirtyTarget& t, Queue& q, const SyncOptions& o,
                                   const std::function<void(const nlohmann::json&)>& progress) {
  if (o.map.empty()) return fail(EINVAL, "sync: --map NAME is required");
  if (o.to.empty()) return fail(EINVAL, "sync: --to FILE|URI is required");
  TRY(t.map_bits(o.map));  // the map exists
  auto replica = TRY(Replica::open(o.to, t.size()));
  Buffer buf = Buffer::get(kChunk);
  auto t0 = std::chrono::steady_clock::now();
  uint64_t copied_total = 0;
  int rounds = 0;
  bool converged = false, frozen = false;
  std::chrono::steady_clock::time_point frozen_at;
  double last_rate = 0;  // bytes per second of the last round
  bool throttled = false;
  int throttled_rounds = 0;
  uint64_t last_copied = 0, last_flush_us = 0;  // of the pass with writes held
  uint64_t held_us = 0;
  auto thaw = [&] {
    held_us = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - frozen_at).count());
    t.thaw();
  };
  for (;;) {
    bool last = false;
    if (o.final && !frozen) {
      auto cur = TRY(t.map_bits(o.map));
      // Freeze for the last pass once what is left copies in about 50 ms at
      // the last round's rate (writes wait that long), or rounds run out.
      uint64_t left = cur->dirty_blocks() * cur->granularity();
      bool quick = left <= (1 << 20) || (last_rate > 0 && static_cast<double>(left) / last_rate <= 0.05);
      if (quick || rounds + 1 >= o.max_rounds) {
        frozen_at = std::chrono::steady_clock::now();
        t.freeze();
        frozen = true;
      }
    }
    last = frozen;
    bool consistent = true;
    const auto round_t0 = std::chrono::steady_clock::now();
    auto bits_r = t.checkpoint(o.map, &consistent, /*for_sync=*/true);
    if (!bits_r) {
      if (frozen) thaw();
      if (throttled) t.throttle(0);
      return fail(bits_r.error());
    }
    auto bits = *bits_r;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    if (consistent) {
      ranges = bits->ranges();
    } else {
      ranges.push_back({0, t.size()});  // an inconsistent map: copy everything
    }
    uint64_t total = 0, copied = 0;
    for (const auto& r : ranges) total += r.second;
    Result<> res;
    std::vector<Extent> batch;
    uint64_t batch_bytes = 0;
    auto copy_batch = [&]() -> Result<> {
      if (batch.empty()) return {};
      TRY(read_device(t, q, buf.data(), batch));
      const std::byte* p = buf.data();
      for (const auto& [off, n] : batch) {
        TRY(replica->write(p, n, off));
        p += n;
        copied += n;
      }
      TRY(replica->drain());  // buf is read into again next
      batch.clear();
      batch_bytes = 0;
      if (progress) progress({{"round", rounds + 1}, {"copied_bytes", copied}, {"total_bytes", total}});
      return {};
    };
    for (const auto& [off, len] : ranges) {
      for (uint64_t pos = 0; pos < len && res; pos += kChunk) {
        uint64_t n = std::min(kChunk, len - pos);
        if (batch_bytes + n > kChunk || batch.size() == kBatch) res = copy_batch();
        if (res && o.cancel && o.cancel->load()) res = fail(ECANCELED, "cancelled");
        batch.push_back({off + pos, n});
        batch_bytes += n;
      }
      if (!res) break;
    }
    if (res) res = copy_batch();
    const auto flush_t0 = std::chrono::steady_clock::now();
    if (res) res = replica->flush();
    const uint64_t flush_us = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - flush_t0).count());
    if (!res) {
      // Nothing is forgotten that the replica may not hold.
      auto r2 = t.restore(o.map, *bits);
      if (!r2) LOG_ERROR("sync: restoring map {}: {}", o.map, r2.error().message);
      if (frozen) thaw();
      if (throttled) t.throttle(0);
      return fail(res.error().code, "sync: " + res.error().message + " (the map is unchanged)");
    }
    if (auto fr = t.finish_sync(o.map); !fr) {
      if (frozen) thaw();
      if (throttled) t.throttle(0);  // never leave writes held
      return fail(fr.error());
    }
    copied_total += copied;
    ++rounds;
    if (double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - round_t0).count(); s > 0 && copied > 0)
      last_rate = static_cast<double>(copied) / s;
    if (last) {
      converged = true;
      last_copied = copied;
      last_flush_us = flush_us;
      if (o.move) t.fence();  // before the writes held are let go: they fail
      if (throttled) t.throttle(0);
      thaw();
      break;
    }
    auto cur = t.map_bits(o.map);
    if (!cur) {
      if (throttled) t.throttle(0);
      return fail(cur.error());
    }
    // Nothing left: done, unless this is a final pass (--final, --move), which
    // always ends with a round under held writes (the fence of a move goes
    // up in it), however little that round has to copy.
    if ((*cur)->dirty_blocks() == 0 && !o.final) {
      converged = true;
      break;
    }
    if (rounds >= o.max_rounds && !o.final) break;
    if (o.final && rounds >= 2 && last_rate > 0) {
      // Not converging under the writes: writes slowed to half the rate the
      // copy runs at, so what is left halves each
      // round until the last pass is short (QEMU's auto-converge, for disks).
      t.throttle(static_cast<uint64_t>(std::max(1.0 * (1 << 20), last_rate / 2)));
      throttled = true;
      ++throttled_rounds;
    }
  }
  if (throttled) t.throttle(0);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  auto left = TRY(t.map_bits(o.map));
  return nlohmann::json{{"rounds", rounds},
                        {"copied_bytes", copied_total},
                        {"milliseconds", ms},
                        {"converged", converged},
                        {"final", o.final},
                        {"moved", o.move && converged},
                        {"held_us", held_us},
                        {"throttled_rounds", throttled_rounds},
                        {"held_copied_bytes", last_copied},
                        {"held_flush_us", last_flush_us},
                        {"dirty_bytes_left", left->dirty_blocks() * left->granularity()}};
}

Result<uint64_t> flatten_device(Target& t, Queue& q, const std::string& to,
                                const std::function<void(const nlohmann::json&)>& progress,
                                const std::atomic<bool>* cancel) {
  int fd = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return posix_error(fmt::format("flatten to {}", to), errno);
  uint64_t size = t.size(), chunk = 4 << 20;
  Buffer buf = Buffer::get(chunk);
  Result<> r;
  for (uint64_t off = 0; off < size && r; off += chunk) {
    if (cancel && cancel->load()) {
      r = fail(ECANCELED, "cancelled");
      break;
    }
    uint64_t n = std::min(chunk, size - off);
    r = q.call([&] { return t.read(q, {buf.data(), n}, off); });
    if (!r) break;
    // Zero runs stay holes: the raw file is as sparse as the data allows.
    bool all_zero = std::all_of(buf.data(), buf.data() + n, [](std::byte b) { return b == std::byte{0}; });
    if (!all_zero && ::pwrite(fd, buf.data(), n, static_cast<off_t>(off)) != static_cast<ssize_t>(n))
      r = posix_error(fmt::format("flatten to {}", to), errno ? errno : EIO);
    if (r && progress) progress({{"round", 1}, {"copied_bytes", off + n}, {"total_bytes", size}});
  }
  if (r && (::ftruncate(fd, static_cast<off_t>(size)) < 0 || ::fdatasync(fd) < 0))
    r = posix_error(fmt::format("flatten to {}", to), errno);
  ::close(fd);
  if (!r) return fail(with_context(r.error(), fmt::format("flatten to {}", to)));
  return size;
}

namespace {
// Now, UTC, ISO 8601 with milliseconds (as the log's timestamps).
std::string iso_now() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  ::gmtime_r(&ts.tv_sec, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                     tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}
}  // namespace

Result<uint64_t> flatten_live(DirtyTarget& t, Queue& q, const std::string& to,
                              const std::function<void(const nlohmann::json&)>& progress, uint64_t* by_writes,
                              const std::atomic<bool>* cancel, uint64_t rate) {
  int fd = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return posix_error(fmt::format("flatten to {}", to), errno);
  const uint64_t size = t.size();
  auto copy = std::make_shared<CopyBeforeWrite>(t, fd, to);  // owns fd
  if (::ftruncate(fd, static_cast<off_t>(size)) < 0) return posix_error(fmt::format("flatten to {}", to), errno);
  // The copier's writes go O_DIRECT where the filesystem allows it (not on
  // tmpfs): with buffered writes the whole device sat in the page cache until
  // the final fdatasync wrote it (bench/RESULTS.md, section 5).
  int dfd = ::open(to.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  if (dfd >= 0) copy->set_direct_fd(dfd);
  TRY(t.start_copy(copy));
  // The moment of the copy is taken: say so (a client that wants its writes
  // after that moment, as the tests do, waits for this).
  const std::string moment = iso_now();
  if (progress) progress({{"round", 1}, {"copied_bytes", 0}, {"total_bytes", size}, {"point_in_time", moment}});
  // Runs of 1 MiB (a write waiting for a block the copier holds waits for one
  // run at most), kCopiers of them at once: one at a time, each run's read
  // and its write waited for each other.
  constexpr int kCopiers = 4;
  const uint64_t per_run = std::max<uint64_t>(1, (1 << 20) / copy->block());
  struct Shared {
    uint64_t next = 0, done = 0;
    uint64_t rate = 0;
    std::chrono::steady_clock::time_point due{};  // when the next run may start (with a rate)
    std::string moment;
    Result<> res;
    Join join;
  } sh;
  sh.rate = rate;
  sh.moment = moment;
  auto copier = [](CopyBeforeWrite& copy, Queue& q, uint64_t per_run, uint64_t size, Shared& sh,
                   const std::function<void(const nlohmann::json&)>& progress,
                   const std::atomic<bool>* cancel) -> Task<void> {
    // All copiers run on the queue's thread: the cursor needs no lock.
    while (sh.res && sh.next < copy.blocks()) {
      if (cancel && cancel->load()) {
        sh.res = fail(ECANCELED, "cancelled");
        break;
      }
      const uint64_t b = sh.next;
      sh.next += per_run;
      if (sh.rate) {
        // Each run takes its slot of time: the runs start no faster than the rate allows.
        const auto now = std::chrono::steady_clock::now();
        const auto start = std::max(now, sh.due);
        sh.due = start + std::chrono::nanoseconds(static_cast<int64_t>(
                             static_cast<double>(per_run * copy.block()) * 1e9 / static_cast<double>(sh.rate)));
        if (start > now) co_await q.ring().sleep(start - now);
      }
      auto r = co_await copy.copy(q, b, b + per_run);
      if (!r) {
        if (sh.res) sh.res = std::move(r);
        break;
      }
      sh.done += std::min(size, (b + per_run) * copy.block()) - std::min(size, b * copy.block());
      if (progress)
        progress({{"round", 1}, {"copied_bytes", sh.done}, {"total_bytes", size}, {"point_in_time", sh.moment}});
    }
    sh.join.done();
  };
  Result<> r = q.call([&]() -> Task<Result<>> {
    sh.join.add(kCopiers);
    for (int i = 0; i < kCopiers; ++i) spawn(copier(*copy, q, per_run, size, sh, progress, cancel));
    co_await sh.join.wait();
    co_return sh.res;
  });
  t.stop_copy();  // every block is copied: no write copies any more
  if (r) r = copy->status();
  if (r && ::fdatasync(copy->fd()) < 0) r = posix_error(fmt::format("flatten to {}", to), errno);
  if (!r) return fail(with_context(r.error(), fmt::format("flatten to {}", to)));
  if (by_writes) *by_writes = copy->copied_by_writes();
  return size;
}

}  // namespace strata::control
