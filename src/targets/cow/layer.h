// LayerFile: one layer of a cow stack on disk (docs/format.md): a 4 KiB
// header, a bitmap of two bits per chunk, and the data region, where chunk c
// lives at data_offset + c * chunk_size (sparse: absent chunks take no space).
//
// The header carries the layer's UUID, its parent's UUID and a parent path
// stored relative to the layer's own directory, so a whole stack can move to
// another directory, and a wrong parent is detected (UUID mismatch).
//
// Thread-safety: the header and open/close are the control thread's; the
// bitmap is read once at open and written by CowTarget under its own lock.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sys/types.h>
#include <span>
#include <string>
#include <vector>

#include "core/result.h"
#include "core/target.h"
#include "targets/mapped_range.h"
#include "targets/remote_file.h"

namespace strata {

using Uuid = std::array<uint8_t, 16>;
std::string uuid_string(const Uuid& u);

enum ChunkState : uint8_t { kAbsent = 0, kPresent = 1, kZero = 2 };

class WriterClaim;

class LayerFile {
 public:
  static constexpr uint32_t kVersion = 1;
  static constexpr uint64_t kHeaderSize = 4096;
  static constexpr uint32_t kDefaultChunk = 4096;
  // Header flags.
  static constexpr uint32_t kFlagReadOnly = 1;
  static constexpr uint32_t kFlagInUse = 2;
  // Incompatible features this version understands (none yet): any other
  // bit set makes open() refuse the layer.
  static constexpr uint32_t kKnownIncompat = 0;

  struct Header {
    uint32_t version = kVersion;
    uint32_t incompat = 0, compat = 0;
    uint32_t chunk_size = kDefaultChunk;
    uint64_t size = 0;
    Uuid uuid{}, parent_uuid{};
    uint32_t flags = 0;
    uint64_t bitmap_offset = kHeaderSize, bitmap_bytes = 0, data_offset = 0;
    std::string parent_path;  // relative to this layer's directory; "" = over the base
  };

  // Creates a new empty layer; parent may be null (a layer over the base).
  static Result<std::unique_ptr<LayerFile>> create(const std::string& path, uint64_t size, uint32_t chunk_size,
                                                   const LayerFile* parent);
  // Opens and validates a layer. writable: opened O_RDWR with an exclusive
  // lock (else O_RDONLY, shared lock). lock=false for offline inspection.
  // A read-only (snapshot) layer opened writable (a merge into it, a repair)
  // first takes the writer's claim of the shared-layer lease and is refused
  // while other hosts hold leases on it (targets/remote_file.h).
  static Result<std::unique_ptr<LayerFile>> open(const std::string& path, bool writable, bool lock = true);
  // A shared layer on remote storage, read-only: its header and bitmap read
  // through `f` (whose lease the caller has taken), its data through
  // remote_device(). path() is its URL.
  static Result<std::unique_ptr<LayerFile>> open_remote(std::unique_ptr<RemoteFile> f);
  ~LayerFile();
  LayerFile(const LayerFile&) = delete;
  LayerFile& operator=(const LayerFile&) = delete;

  const Header& header() const { return h_; }
  Header& mutable_header() { return h_; }
  const std::string& path() const { return path_; }
  int fd() const { return fd_; }
  // A remote layer's file and data device; null for a local layer.
  RemoteFile* remote() const { return remote_.get(); }
  const std::shared_ptr<Target>& remote_device() const { return remote_dev_; }
  uint64_t chunks() const { return (h_.size + h_.chunk_size - 1) / h_.chunk_size; }
  // Called on the layer writes go to: drops the page cache of its data region
  // and turns readahead off. Someone who read the sparse file (a `cat`, a
  // backup) leaves large folios over its holes in the page cache, and every
  // 4 KiB write into such a folio then walks all of its buffer heads
  // (ext4_block_write_begin): fresh-chunk writes measured 6-10x slower.
  // strata never reads where the layer holds nothing, and without readahead
  // its own reads of held chunks do not pull holes in either.
  void prepare_for_writes() const;
  // Chunk data [pos, pos + length) (device offsets) straight from the page
  // cache, when all of it is cached; for read views. Any layer may be
  // written or punched by a merge, so this follows MappedRange's rule for
  // punched files. The mapping is made on first use and lives as long as
  // this object (which a merge retires but keeps).
  std::optional<std::span<const std::byte>> data_view(uint64_t pos, uint64_t length) const;
  // The parent's path resolved against this layer's directory.
  std::string parent_full_path() const;

  // The on-disk bitmap, one ChunkState per chunk.
  Result<std::vector<uint8_t>> read_bitmap() const;
  // Writes the 4 KiB bitmap pages [first_page, last_page] from `states`.
  Result<> write_bitmap_pages(const std::vector<uint8_t>& states, uint64_t first_page, uint64_t last_page);
  Result<> write_header();
  Result<> sync();
  // The file now has another name (a merge folded it into its child's place):
  // a claim on the old name is over.
  void rename_to(std::string path);
  // Ends the writer's claim (the write that needed it is done).
  void release_claim();

  // Problems for `strata layer check`, of the layer and of every layer
  // below it (geometry against the child, parent cycles): one message each.
  static std::vector<std::string> check(const std::string& path);
  // `strata layer check --repair`: fixes what needs no guessing (see
  // layer.cc); returns one line per fix. Takes the layer's exclusive lock.
  static Result<std::vector<std::string>> repair(const std::string& path);

 private:
  LayerFile() = default;
  static std::vector<std::string> check_one(const std::string& path);
  Result<> read_at(void* buf, std::size_t n, uint64_t off) const;
  static void check_chain(const std::string& path, std::vector<std::string>& ps,
                          std::set<std::pair<dev_t, ino_t>>& seen, const Header* child,
                          const std::string& child_path);
  std::string path_;
  int fd_ = -1;
  Header h_;
  // The header as last read or written: write_header() keeps the bytes of
  // fields this version does not know.
  std::array<uint8_t, kHeaderSize> raw_{};
  std::unique_ptr<RemoteFile> remote_;
  std::shared_ptr<Target> remote_dev_;
  std::unique_ptr<WriterClaim> claim_;  // held while a read-only layer is open writable
  mutable std::once_flag map_once_;
  mutable MappedRange data_map_;
};

// fsync of the directory holding `path` (a rename or a new name in it made
// durable); a failure is logged, not returned.
void sync_parent_dir(const std::string& path);

}  // namespace strata
