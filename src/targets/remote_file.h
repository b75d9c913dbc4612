// RemoteFile: a file on shared storage (a layer of a golden image on an NFS
// server), opened read-only by a target on this host: what a cow stack reads
// its shared layers through. A URL names it (nfs://server/export/dir/file);
// the table knows the schemes (table/registry.cc, open_remote_file).
//
// The shared-layer lease (docs/cluster.md): a host that reads a shared file
// holds a lease on it, a file NAME.lease-HOLDER beside it that it rewrites
// every period/3 (the server stamps its mtime); whoever would write the file
// first creates NAME.writer and then looks for live leases, and a reader
// first renews its lease and then looks for a live NAME.writer. Each side
// acts before it looks, so one of two racing sides always sees the other. A
// reader whose lease could not be renewed for a whole period stops reading
// the file (EIO) until its lease is back and the file is unchanged.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "core/result.h"
#include "core/target.h"

namespace strata {

class RemoteFile {
 public:
  virtual ~RemoteFile() = default;
  // The URL it was opened by.
  virtual const std::string& url() const = 0;
  // Bytes in the file when it was opened.
  virtual uint64_t size() const = 0;
  // Blocking read of [offset, offset + size) (the control thread, at load).
  virtual Result<> pread(std::span<std::byte> buf, uint64_t offset) = 0;
  // The file's first `length` bytes as a read-only device, for the data path
  // (its own connections, one per queue).
  virtual Result<std::shared_ptr<Target>> device(uint64_t length) = 0;
  // Takes a reader's lease on the file (renewed in the background until this
  // object goes), or says who is writing it. `period_s`: how long a lease
  // lives without renewal.
  virtual Result<> hold_lease(unsigned period_s) = 0;
  // Whether reads may trust the file now: the lease is held and was renewed
  // within its period (always true when no lease was taken).
  virtual bool lease_ok() const = 0;
  // A file beside this one: `relative` resolved against its directory.
  virtual std::string sibling_url(std::string_view relative) const = 0;
};

// Whether a parent link or a path names a remote file rather than a local one.
inline bool is_remote_url(std::string_view s) { return s.find("://") != std::string_view::npos; }

// The lease files of a shared file NAME (the base name): readers' leases and
// the writer's claim, in the same directory.
inline std::string lease_prefix(std::string_view name) { return std::string(name) + ".lease-"; }
inline std::string writer_claim_name(std::string_view name) { return std::string(name) + ".writer"; }

// A writer's claim lives 10 s without renewal (a writer renews it every 3 s).
constexpr unsigned kWriterClaimPeriod = 10;

}  // namespace strata
