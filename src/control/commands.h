// Control commands: JSON requests {"method": "<noun>_<verb>", "params": {...}}
// answered with {"ok": true, "result": ...} or {"ok": false, "error": "..."}.
// Targets never see JSON: this layer reads their table lines and InfoSink.
#pragma once

#include <nlohmann/json.hpp>

#include "exports/nbd/server.h"
#include "targets/table.h"

namespace strata::control {

struct Daemon {
  DeviceSet* devices = nullptr;
  nbd::Server* nbd = nullptr;
  std::chrono::steady_clock::time_point started;
};

// Never throws: a malformed request is answered with an error.
nlohmann::json dispatch(Daemon& d, const std::string& line);

}  // namespace strata::control
