// Control commands: JSON requests {"method": "<noun>_<verb>", "params": {...}}
// answered with {"ok": true, "result": ...} or {"ok": false, "error": "..."}.
// Targets never see JSON: this layer reads their table lines and InfoSink.
#pragma once

#include <nlohmann/json.hpp>

#include "exports/nbd/server.h"
#include <map>
#include <vector>

#include "targets/table.h"
#include "targets/track.h"
#include "exports/fuse/fuse_export.h"

namespace strata::control {

struct Daemon {
  DeviceSet* devices = nullptr;
  nbd::Server* nbd = nullptr;
  std::chrono::steady_clock::time_point started;
  std::map<std::string, std::shared_ptr<TrackTarget>> tracks;  // by device name
  Queue* queue = nullptr;  // where the control side runs device I/O (sync)
  std::vector<Queue*> queues;
  std::vector<fuse::Device> fuse_devices;  // what a FUSE export shows
  std::map<std::string, std::unique_ptr<fuse::FuseExport>> fuse_exports;  // by mountpoint
  // Stopped exports whose mount was still in use (a loop device on a file):
  // unmounted (detached), still answering the requests of files open on them,
  // kept until the server exits.
  std::vector<std::unique_ptr<fuse::FuseExport>> fuse_detached;
  fuse::Options fuse_options;
  // Directories under which a control client may name files (sync and
  // flatten targets, FUSE mountpoints): serve --allow-path. Empty: none.
  std::vector<std::string> allowed_paths;
};

// Streams intermediate replies (progress) of a long request.
using ProgressFn = std::function<void(const nlohmann::json&)>;

// Never throws: a malformed request is answered with an error.
nlohmann::json dispatch(Daemon& d, const std::string& line, const ProgressFn& progress = nullptr);

}  // namespace strata::control
