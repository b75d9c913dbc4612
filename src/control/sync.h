// Incremental sync: copies the dirty blocks of a device to a replica (a file
// or an NBD URI), flushes the replica, and only then forgets the blocks it
// copied. Blocks written during a copy land in the fresh map the copy started
// and stay dirty. Runs on the control thread; device reads go through a queue.
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <functional>
#include <string>

#include "core/queue.h"
#include "core/result.h"
#include "targets/dirty/dirty.h"

namespace strata::control {

struct SyncOptions {
  std::string map;
  std::string to;      // a file path, or an nbd:// / nbd+unix:// URI
  bool final = false;  // hold writes for the last pass: the replica is then an exact copy
  // With final: a move to another host. After the last pass the device is
  // fenced (DirtyTarget::fence) before the writes held are released: they
  // and every later request fail with ESHUTDOWN, clients reconnect to the
  // replica, which holds every write acknowledged here.
  bool move = false;
  int max_rounds = 8;
  // Set (by a job cancel): stop after the batch being copied; the blocks not
  // yet on the replica stay dirty (the map is restored), ECANCELED.
  const std::atomic<bool>* cancel = nullptr;
};

// Calls progress({"round", "copied_bytes", "total_bytes"}) as it goes.
Result<nlohmann::json> sync_device(DirtyTarget& t, Queue& q, const SyncOptions& o,
                                   const std::function<void(const nlohmann::json&)>& progress);

// The whole device as it reads now into one raw file `to` (created or
// truncated; zero runs stay holes), then fdatasync. Reads go through `q`
// from the calling thread (never a queue thread). Returns the bytes.
Result<uint64_t> flatten_device(Target& t, Queue& q, const std::string& to,
                                const std::function<void(const nlohmann::json&)>& progress,
                                const std::atomic<bool>* cancel = nullptr);

// The same for a device being served: a point-in-time copy (cbw.h), the
// device as it was when the call began, while writes go on. Returns the
// bytes; `by_writes`, if given, the blocks copied ahead of a write. The
// first progress, with `point_in_time` (the wall-clock moment, ISO 8601),
// comes once the copy's moment is taken. `rate`: the copier's bytes per
// second at most (0: as fast as it goes; a client's write that must copy
// its block first is never paced), as qemu's block-job speed.
Result<uint64_t> flatten_live(DirtyTarget& t, Queue& q, const std::string& to,
                              const std::function<void(const nlohmann::json&)>& progress,
                              uint64_t* by_writes = nullptr, const std::atomic<bool>* cancel = nullptr,
                              uint64_t rate = 0);

}  // namespace strata::control
