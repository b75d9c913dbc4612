// NfsTarget: a range of a file on an NFS server (seed 001, dm-nfs), NFSv3
// through libnfs's raw RPC calls, no mount and no client-side cache.
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
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/queue.h"
#include "core/target.h"
#include "targets/nfs_client.h"
#include "targets/registry.h"

namespace strata {

// Unstable data not yet known to be on the server's stable storage: for each
// byte, the newest acknowledged write of it. Pieces never overlap; a new write
// replaces what it covers (carve), so writing pieces back in any order
// restores the newest data.
class RetainedWrites {
 public:
  struct Piece {
    uint64_t offset = 0;
    uint64_t length = 0;
    std::shared_ptr<std::byte[]> owner;  // keeps `data` alive
    const std::byte* data = nullptr;
    uint64_t seq = 0;   // order of acknowledgement
    uint64_t verf = 0;  // the server's write verifier from the WRITE reply
  };

  // Forgets [offset, offset + length) (a newer write covers it).
  void carve(uint64_t offset, uint64_t length);
  // Retains a piece (replacing whatever it overlaps).
  void insert(Piece p);
  // After a COMMIT that returned `verf` and was sent when the last sequence
  // number handed out was below `upto`: drops pieces with seq < upto written
  // under the same verifier. Returns the bytes of pieces with seq < upto whose
  // verifier differs (lost by a server restart unless written again).
  uint64_t settle(uint64_t upto, uint64_t verf);
  // All pieces, in offset order.
  std::vector<Piece> pieces() const;
  // Drops the piece starting at p.offset if it is still the same write.
  void erase_if_same(const Piece& p);

  uint64_t bytes() const { return bytes_; }
  size_t count() const { return map_.size(); }

 private:
  std::map<uint64_t, Piece> map_;  // by offset
  uint64_t bytes_ = 0;
};

class NfsTarget final : public Target {
 public:
  static constexpr std::string_view kHelp =
      "nfs <url> <offset> [uid=N] [gid=N] [timeout=S] [max_unstable=SIZE] [version=3] [ro]\n"
      "  A range of a file on an NFS server, url nfs://host/export/path/file,\n"
      "  starting at byte <offset> (a multiple of 4096). A write is acknowledged\n"
      "  stable after FLUSH (COMMIT with write-verifier checks) or with FUA\n"
      "  (FILE_SYNC). uid/gid: AUTH_SYS credentials on every call (for root-squashing\n"
      "  servers). timeout: seconds before a request fails with EIO while the\n"
      "  server does not answer (default 30); the target reconnects by itself.\n"
      "  max_unstable: acknowledged data kept until a COMMIT makes it stable\n"
      "  (default 1G; a COMMIT starts in the background at half of it).";
  static Result<std::shared_ptr<Target>> create(Params& p, Resolver& r);

  NfsTarget(const NfsTarget&) = delete;
  NfsTarget& operator=(const NfsTarget&) = delete;
  ~NfsTarget() override;

  uint64_t size() const override { return length_; }
  Caps caps() const override;
  BlockSizes block_sizes() const override;
  std::string table_line() const override;
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
  void note_verf(uint64_t v);
  std::string where() const;

  std::string url_, server_, export_, file_;
  uint64_t offset_ = 0;
  uint64_t length_ = 0;
  std::optional<int> uid_opt_, gid_opt_;
  std::chrono::seconds timeout_{30};
  bool read_only_ = false;
  uint64_t max_unstable_ = 1ull << 30;
  std::atomic<bool> background_commit_{false};
  NfsEndpoint ep_;
  uint32_t rsize_ = 65536, wsize_ = 65536;
  uint64_t file_size_ = 0;

  std::unique_ptr<std::atomic<NfsClient*>[]> clients_{new std::atomic<NfsClient*>[kMaxQueues]{}};

  mutable std::mutex mu_;
  RetainedWrites retained_;  // guarded by mu_
  uint64_t seq_ = 0;         // guarded by mu_

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
