// `strata serve`: the foreground server. Wires tables, queues, the NBD export
// and the control socket together, then waits for SIGINT/SIGTERM.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/result.h"
#include "table/table.h"

namespace strata::daemon {

struct ServeOptions {
  std::vector<std::string> tables;
  std::string file;
  uint64_t offset = 0;
  bool direct = false;
  std::string export_name;
  std::vector<std::string> unix_paths;
  std::vector<std::string> tcp;
  bool read_only = false;
  std::string control;
  unsigned queues = 0;
  std::size_t max_connections = 256;
  double handshake_timeout = 10;
  std::size_t max_handshakes = 128;
  std::string max_memory;  // --max-memory SIZE ("" = the default)
  std::string pidfile;
  bool verbose = false;
  std::string state_dir;
  std::vector<std::string> fuse;  // FUSE mountpoints
  bool fuse_io_uring = true;      // FUSE over io_uring where the kernel has it
  bool sched_batch = true;        // queue threads under SCHED_BATCH
  std::vector<std::string> allow_paths;  // where control clients may name files  // dirty maps live here ("" = in memory only)
  std::string tls = "off";  // off | on | require
  std::string tls_certificates;
  std::string tls_psk;
  bool tls_verify_peer = false;
  bool empty = false;  // --empty: no devices at start (strata create adds them)
  std::string metrics;  // --metrics HOST:PORT: Prometheus text at /metrics ("" = none)
};

int serve(const ServeOptions& o);
// The devices of --table/--file, built (targets opened and checked).
Result<std::unique_ptr<DeviceSet>> load_devices(const ServeOptions& o);

}  // namespace strata::daemon
