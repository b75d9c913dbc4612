// LayerStack: what the control plane asks of a target that is a stack of
// layers (cow): the status of each layer, a snapshot of the top, the merge
// of a layer into the one below.
//
// Design: a capability query, not a type test. Target::layer_stack()
// returns this interface, or nullptr (the default) for a target that has no
// layers; a stacked target (CowTarget) derives from it and returns itself.
// Control thus drives any layered target without knowing its concrete type
// (no dynamic_cast) and without including targets/; core declares the
// interface and knows no target. ForwardingTarget does not forward it: a
// layer over a stack (dirty maps, error injection) is not itself a stack.
//
// Threads: layer_paths() and layer_status() from any thread; snapshot(),
// merge() and merge_layer() from the control thread (one at a time).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/result.h"

namespace strata {

class Queue;

class LayerStack {
 public:
  // Snapshots the top; returns the snapshot layer's path. `q` runs the
  // flush. `stats`, if given, says how long writes were held (what a client
  // sees) and how long the whole operation took.
  struct SnapshotStats {
    int64_t held_us = 0;
    int64_t total_us = 0;
    int flush_rounds = 0;  // flushes with writes flowing, before the hold
    // After the hold: the old top's seal (its last data, bits and header
    // made durable; flushes wait for it).
    int64_t seal_us = 0;
  };
  virtual Result<std::string> snapshot(Queue& q, SnapshotStats* stats = nullptr) = 0;
  // Layers bottom to top, for status.
  virtual std::vector<std::string> layer_paths() const = 0;
  // What `strata status` shows of each layer, bottom to top. Cheap: no read
  // of any layer file.
  struct LayerStatus {
    std::string path;
    std::string uuid;
    bool writable = false;  // writes go to it: the top (during a merge, its parent)
    uint64_t chunks = 0;    // chunks the device reads from it (data, or zeros it records)
    uint64_t file_bytes = 0, allocated_bytes = 0;  // the file's size and the space it takes
  };
  virtual std::vector<LayerStatus> layer_status() const = 0;
  // Folds the top layer into its parent while I/O goes on; the stack is then
  // one layer shorter. Progress: (copied, total) chunks. Runs the copy on
  // `q`. `cancel`, if given and set, stops it (ECANCELED); the next merge()
  // resumes it.
  virtual Result<uint64_t> merge(Queue& q, const std::function<void(uint64_t, uint64_t)>& progress,
                                 const std::atomic<bool>* cancel = nullptr) = 0;
  // Folds the layer at `path` into the layer below it (the top: merge()).
  virtual Result<uint64_t> merge_layer(Queue& q, const std::string& path,
                                       const std::function<void(uint64_t, uint64_t)>& progress,
                                       const std::atomic<bool>* cancel = nullptr) = 0;

 protected:
  // Never owned, nor deleted, through this interface: the target owns it.
  ~LayerStack() = default;
};

}  // namespace strata
