// Control commands: JSON requests {"method": "<noun>_<verb>", "params": {...}}
// answered with {"ok": true, "result": ...} or {"ok": false, "error": "..."}.
// Targets never see JSON: this layer reads their table lines and InfoSink.
#pragma once

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "control/devices.h"
#include "control/jobs.h"
#include "exports/export.h"
#include "exports/fuse/fuse_export.h"
#include "exports/nbd/server.h"

namespace strata::control {

struct Daemon {
  Devices* devices = nullptr;
  nbd::Server* nbd = nullptr;
  std::chrono::steady_clock::time_point started;
  Jobs* jobs = nullptr;
  Queue* queue = nullptr;  // where the control side runs device I/O (sync)
  std::vector<Queue*> queues;
  std::string state_dir;   // dirty maps: STATE_DIR/DEVICE ("" = in memory)
  bool all_read_only = false;  // serve --read-only
  // The rest is touched only by the thread that runs changes (the control
  // server's worker; before start and after stop, the serve thread).
  std::map<std::string, std::unique_ptr<fuse::FuseExport>> fuse_exports;  // by mountpoint
  // Stopped exports whose mount was still in use (a loop device on a file):
  // unmounted (detached), still answering the requests of files open on them,
  // kept until the server exits.
  std::vector<std::unique_ptr<fuse::FuseExport>> fuse_detached;
  fuse::Options fuse_options;
  // Every export running (the NBD server, then each FUSE mount).
  std::vector<Export*> exports() const {
    std::vector<Export*> out;
    if (nbd) out.push_back(nbd);
    for (const auto& [mp, e] : fuse_exports) out.push_back(e.get());
    return out;
  }
  // Directories under which a control client may name files (sync and
  // flatten targets, FUSE mountpoints): serve --allow-path. Empty: none.
  std::vector<std::string> allowed_paths;
};

// How the control server runs a method.
enum class Kind {
  kRead,    // reads state: answered at once on the control thread
  kChange,  // changes devices or may wait: on the worker, one at a time
  kJob,     // a long operation: a job (start_job)
  kWait,    // job_wait: the client follows a job (find_job)
};
Kind classify(const std::string& method);

// Never throws: a malformed request is answered with an error. The error
// of a reply never holds a raw control byte or invalid UTF-8, whatever the
// client sent (names, paths, table text are echoed escaped).
nlohmann::json dispatch(Daemon& d, const nlohmann::json& req);
// The same for a request line.
nlohmann::json dispatch(Daemon& d, const std::string& line);
// {"ok": false, "error": MESSAGE} with MESSAGE through escape_controls():
// every error reply of the control socket is made by this or passes
// through escape_reply().
nlohmann::json error_reply(std::string_view message);
// A reply whose "error" (if any) is escaped as error_reply() does.
nlohmann::json escape_reply(nlohmann::json reply);
// A reply as the line sent to the client: never throws (invalid UTF-8 left
// in a result, from a file, is replaced).
std::string reply_line(const nlohmann::json& reply);
// device_merge, device_flatten, device_sync: checks the request and starts
// its job.
Result<std::shared_ptr<Job>> start_job(Daemon& d, const nlohmann::json& req);
// job_wait: the job named by params.id.
Result<std::shared_ptr<Job>> find_job(Daemon& d, const nlohmann::json& req);

// ---- devices at runtime (devices.cc / device_commands.cc) ----
// Creates a device from table text (one device: segment lines, or one
// [name] section), validated before anything changes, then exported.
// Relative paths in it are taken under `base_dir` when it is given (the
// directory of the client's table file), else the server's working directory.
Result<nlohmann::json> device_create(Daemon& d, const std::string& name, const std::string& table,
                                     bool read_only, std::string_view source, std::string_view base_dir = {});
// Applies the devices of whole table files (serve's start-up and SIGHUP):
// creates the new ones, reloads and resumes the changed ones, removes those
// gone that have no client. Nothing changes if any of them fails to build.
Result<nlohmann::json> apply_config(Daemon& d, const std::vector<DeviceSpec>& specs, std::string_view source,
                                    bool remove_missing);
// device_create/remove/reload/suspend/resume (device_commands.cc).
nlohmann::json run_device_change(Daemon& d, const std::string& method, const nlohmann::json& params);
// Frees the tables replaced by reloads that no NBD connection can still
// read from (LiveTarget::reap); called now and then by the control server.
void reap_tables(Daemon& d);
// Releases every suspended device (server exit: nothing may stay held).
void resume_all(Daemon& d);
// Flushes every device and closes its dirty maps cleanly (server exit).
int close_devices(Daemon& d);

}  // namespace strata::control
