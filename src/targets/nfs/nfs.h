// NfsTarget: a range of a file on an NFS server (as dm-nfs), NFSv3
// (or NFSv4.0: PUTFH + READ/WRITE/COMMIT with the anonymous stateid) through
// libnfs's raw RPC calls, no mount and no client-side cache.
//
// Integrity: a WRITE goes out UNSTABLE and is acknowledged with its data kept
// here (RetainedWrites) together with the server's write verifier. FLUSH
// sends COMMIT; data whose verifier matches the COMMIT's is on stable storage
// and is dropped; data whose verifier differs (the server restarted and may
// have lost it) is written again FILE_SYNC before the FLUSH completes. FUA
// writes go out FILE_SYNC. So nothing acknowledged before a completed FLUSH,
// or with FUA, is lost when the server crashes.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <span>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/queue.h"
#include "core/target.h"
#include "core/thread_annotations.h"
#include "targets/nfs/nfs_client.h"
#include "targets/resolver.h"

namespace strata {

// Acknowledged data not yet known to be on the server's stable storage, as a
// log in acknowledgement order. Replaying the log in order restores the
// newest data of every byte, so after a server restart the whole log is
// written again in order (FUA writes are logged too, so an older unstable
// write is never replayed over a newer FUA one). Appending is O(1): no
// search, no split; data lives in 4 MiB arena chunks that are reused, so a
// steady stream of writes neither calls malloc nor faults in fresh pages.
// Not thread-safe: the target guards it with a mutex.
class RetainedWrites {
 public:
  struct Entry {
    uint64_t offset = 0;
    uint32_t length = 0;
    bool stable = false;  // FUA: already stable; kept only for ordering
    const std::byte* data = nullptr;
    uint32_t chunk = 0;  // arena chunk holding data
    uint64_t seq = 0;    // position in the log
    uint64_t verf = 0;   // the server's write verifier from the WRITE reply
  };
  explicit RetainedWrites(uint64_t keep_bytes = 64ull << 20);
  ~RetainedWrites();
  RetainedWrites(const RetainedWrites&) = delete;
  RetainedWrites& operator=(const RetainedWrites&) = delete;

  // Copies data into the log. Returns the entry's sequence number.
  uint64_t append(uint64_t offset, std::span<const std::byte> data, uint64_t verf, bool stable);
  // The sequence number the next append gets.
  uint64_t next_seq() const { return next_seq_; }
  // After a COMMIT that returned `verf`, sent when next_seq() was `upto`:
  // if every entry before `upto` was written under `verf` (or is stable),
  // drops them and returns true; else returns false and drops nothing (a
  // server restart lost some: the log must be written again, in order).
  bool settle(uint64_t upto, uint64_t verf);
  // Entries with seq < upto, in order (pointers valid until drop_before).
  std::vector<Entry> entries_before(uint64_t upto) const;
  void drop_before(uint64_t upto);

  uint64_t bytes() const { return bytes_; }
  size_t count() const { return log_.size(); }
  void set_keep_bytes(uint64_t n) { keep_bytes_ = n; }

 private:
  struct Chunk {
    std::byte* mem = nullptr;
    uint32_t size = 0, used = 0, refs = 0;
  };
  std::byte* alloc(uint32_t n, uint32_t* chunk);
  void release(uint32_t chunk);

  std::deque<Entry> log_;
  uint64_t next_seq_ = 0;
  uint64_t bytes_ = 0;
  std::vector<Chunk> chunks_;
  std::vector<uint32_t> free_;  // empty chunks ready for reuse
  uint32_t cur_ = UINT32_MAX;   // chunk being filled
  uint64_t keep_bytes_;         // empty chunks kept beyond this are freed
};

class NfsTarget final : public Target {
 public:
  static constexpr std::string_view kHelp =
      "nfs <url> <offset> [uid=N] [gid=N] [timeout=S] [max_unstable=SIZE] [version=3|4] [ro]\n"
      "  A range of a file on an NFS server, url nfs://host/export/path/file,\n"
      "  starting at byte <offset> (a multiple of 4096). A write is acknowledged\n"
      "  stable after FLUSH (COMMIT with write-verifier checks) or with FUA\n"
      "  (FILE_SYNC). uid/gid: AUTH_SYS credentials on every call (for root-squashing\n"
      "  servers). timeout: seconds before a request fails with EIO while the\n"
      "  server does not answer (default 30); the target reconnects by itself.\n"
      "  max_unstable: acknowledged data kept until a COMMIT makes it stable\n"
      "  (default 256M; a COMMIT starts in the background at half of it).\n"
      "  version=4: NFSv4.0 (the url names the server's pseudo path).";
  static Result<std::shared_ptr<Target>> create(Params& p, Resolver& r);

  NfsTarget(const NfsTarget&) = delete;
  NfsTarget& operator=(const NfsTarget&) = delete;
  ~NfsTarget() override;

  uint64_t size() const override { return length_; }
  Caps caps() const override;
  BlockSizes block_sizes() const override;
  std::string table_line() const override;
  std::string identity() const override;
  void info(InfoSink& out) const override;

  Task<Result<>> read(Queue& q, std::span<std::byte> buf, uint64_t offset) override;
  Task<Result<>> write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) override;
  Task<Result<>> flush(Queue& q) override;

 private:
  NfsTarget() = default;
  NfsClient& client(Queue& q);
  NfsClock::time_point deadline() const { return NfsClock::now() + timeout_; }
  // WRITE calls for [buf] at file offset `at`, split to wsize. Each chunk's
  // reply goes to `done(offset, length, committed, verf)`.
  template <typename Done>
  Task<Result<>> write_range(Queue& q, const std::byte* data, uint64_t length, uint64_t at, int stable,
                             NfsClock::time_point dl, Done done);
  // Makes every write acknowledged so far stable (COMMIT, then rewrites
  // what a server restart lost).
  Task<Result<>> settle(Queue& q, NfsClock::time_point dl);
  Task<Result<>> rewrite_all(Queue& q, NfsClock::time_point dl);
  Task<void> background_settle(Queue& q);
  // Waits (polling, 1 ms) while a rewrite after a verifier change runs.
  Task<Result<>> wait_rewrite(Queue& q, NfsClock::time_point dl);
  void note_verf(uint64_t v);
  std::string where() const;

  std::string url_, server_, export_, file_;
  std::string identity_;  // the file as stat() saw it at load
  uint64_t offset_ = 0;
  uint64_t length_ = 0;
  std::optional<int> uid_opt_, gid_opt_;
  std::chrono::seconds timeout_{30};
  bool read_only_ = false;
  uint64_t max_unstable_ = 256ull << 20;
  std::atomic<bool> background_commit_{false};
  NfsEndpoint ep_;
  uint32_t rsize_ = 65536, wsize_ = 65536;

  std::unique_ptr<std::atomic<NfsClient*>[]> clients_{new std::atomic<NfsClient*>[kMaxQueues]{}};

  mutable Mutex mu_;
  RetainedWrites retained_ GUARDED_BY(mu_);

  // Rewriting after a verifier change runs alone: new writes wait for it.
  std::atomic<bool> rewriting_{false};
  std::atomic<int> writes_in_flight_{0};

  std::atomic<uint64_t> last_verf_{0};
  std::atomic<uint64_t> verifier_changes_{0};
  std::atomic<uint64_t> commits_{0};
  std::atomic<uint64_t> rewritten_bytes_{0};
  std::atomic<uint64_t> retained_bytes_{0};
  mutable IoStats stats_;
};

}  // namespace strata
