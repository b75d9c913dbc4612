// Design notes: see cbw.h.
#include "targets/dirty/cbw.h"

#include <unistd.h>

#include <algorithm>

#include <fmt/core.h>

#include "core/buffer.h"
#include "core/log.h"

namespace strata {

CopyBeforeWrite::CopyBeforeWrite(Target& source, int fd, std::string path, uint64_t block)
    : source_(source),
      fd_(fd),
      path_(std::move(path)),
      block_(block),
      size_(source.size()),
      nblocks_((source.size() + block - 1) / block),
      done_(nblocks_, false) {}

CopyBeforeWrite::~CopyBeforeWrite() {
  if (fd_ >= 0) ::close(fd_);
  if (direct_fd_ >= 0) ::close(direct_fd_);
}

Result<> CopyBeforeWrite::status() const {
  MutexLock l(mu_);
  return status_;
}

uint64_t CopyBeforeWrite::copied_by_writes() const {
  MutexLock l(mu_);
  return by_writes_;
}

void CopyBeforeWrite::fail_job(const Error& e) {
  MutexLock l(mu_);
  if (status_) {
    status_ = fail(e);
    LOG_ERROR("copy to {}: {}", path_, e.message);
  }
}

Task<void> CopyBeforeWrite::lock(Queue& q, uint64_t b0, uint64_t b1) {
  // Takes every block of [b0, b1) or none; waits on the first busy one and
  // tries again when it is released (the cow target's chunk locks).
  struct Take {
    CopyBeforeWrite* t;
    Queue* q;
    uint64_t b0, b1;
    bool taken = false;
    bool try_take() REQUIRES(t->mu_) {
      for (uint64_t b = b0; b < b1; ++b)
        if (t->busy_.count(b)) return false;
      for (uint64_t b = b0; b < b1; ++b) t->busy_[b];
      return true;
    }
    bool await_ready() {
      MutexLock l(t->mu_);
      return taken = try_take();
    }
    bool await_suspend(std::coroutine_handle<> h) {
      MutexLock l(t->mu_);
      if ((taken = try_take())) return false;
      for (uint64_t b = b0; b < b1; ++b) {
        auto it = t->busy_.find(b);
        if (it != t->busy_.end()) {
          it->second.push_back({q, h});
          break;
        }
      }
      return true;
    }
    bool await_resume() const noexcept { return taken; }
  };
  for (;;) {
    bool taken = co_await Take{this, &q, b0, b1};
    if (taken) break;
  }
}

void CopyBeforeWrite::unlock(uint64_t b0, uint64_t b1) {
  std::vector<std::pair<Queue*, std::coroutine_handle<>>> wake;
  {
    MutexLock l(mu_);
    for (uint64_t b = b0; b < b1; ++b) {
      auto it = busy_.find(b);
      if (it == busy_.end()) continue;
      for (auto& w : it->second) wake.push_back(w);
      busy_.erase(it);
    }
  }
  for (auto& [q, h] : wake) q->post([h = h] { h.resume(); });
}

Task<Result<>> CopyBeforeWrite::copy_locked(Queue& q, uint64_t b0, uint64_t b1, bool direct) {
  std::vector<bool> todo(b1 - b0);
  {
    MutexLock l(mu_);
    for (uint64_t b = b0; b < b1; ++b) todo[b - b0] = !done_[b];
  }
  Buffer buf;
  for (uint64_t b = b0; b < b1;) {
    if (!todo[b - b0]) {
      ++b;
      continue;
    }
    uint64_t e = b + 1;
    while (e < b1 && todo[e - b0]) ++e;
    const uint64_t off = b * block_, len = std::min(e * block_, size_) - off;
    if (buf.size() < len) buf = Buffer::get(len);
    CO_TRY(co_await source_.read(q, {buf.data(), len}, off));
    // Zero runs stay holes: the file is as sparse as the data allows.
    const bool zeros = std::all_of(buf.data(), buf.data() + len, [](std::byte x) { return x == std::byte{0}; });
    // Buffers are 4 KiB-aligned: whole pages at page offsets may go O_DIRECT.
    const int wfd = direct && direct_fd_ >= 0 && off % 4096 == 0 && len % 4096 == 0 ? direct_fd_ : fd_;
    for (uint64_t put = 0; !zeros && put < len;) {
      int n = co_await q.ring().write(wfd, {buf.data() + put, len - put}, off + put);
      if (n == -EINTR || n == -EAGAIN) continue;
      if (n < 0) co_return posix_error(fmt::format("write {}@{}", path_, off + put), -n);
      if (n == 0) co_return fail(EIO, fmt::format("write {}@{}: wrote nothing", path_, off + put));
      put += static_cast<uint64_t>(n);
    }
    {
      MutexLock l(mu_);
      for (uint64_t k = b; k < e; ++k) done_[k] = true;
    }
    b = e;
  }
  co_return Result<>{};
}

Task<void> CopyBeforeWrite::before_write(Queue& q, uint64_t offset, uint64_t length) {
  if (length == 0 || offset >= size_) co_return;
  const uint64_t b0 = offset / block_, b1 = (std::min(offset + length, size_) - 1) / block_ + 1;
  {
    MutexLock l(mu_);
    bool all_done = true;
    for (uint64_t b = b0; b < b1 && all_done; ++b) all_done = done_[b];
    if (all_done || !status_) co_return;  // copied already, or the job failed
  }
  co_await lock(q, b0, b1);
  uint64_t before = 0;
  {
    MutexLock l(mu_);
    for (uint64_t b = b0; b < b1; ++b) before += !done_[b];
  }
  auto r = co_await copy_locked(q, b0, b1);
  if (!r) {
    fail_job(r.error());
    // The job is over: mark the blocks done so that nobody waits on them.
    MutexLock l(mu_);
    for (uint64_t b = b0; b < b1; ++b) done_[b] = true;
  } else {
    MutexLock l(mu_);
    by_writes_ += before;
  }
  unlock(b0, b1);
}

Task<Result<>> CopyBeforeWrite::copy(Queue& q, uint64_t b0, uint64_t b1) {
  b1 = std::min(b1, nblocks_);
  if (b0 >= b1) co_return Result<>{};
  CO_TRY(status());
  co_await lock(q, b0, b1);
  auto r = co_await copy_locked(q, b0, b1, true);
  unlock(b0, b1);
  if (!r) fail_job(r.error());
  co_return status();
}

}  // namespace strata
