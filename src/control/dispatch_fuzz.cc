// libFuzzer: the control request dispatch (a JSON line from a control
// client). Requests that read state and device changes (create, reload,
// suspend, resume, remove) run on a daemon with one queue and no listener;
// requests that would name a path (any '/'), start an export or a job are
// not run (a fuzzer must not create files or mounts around the machine).
// The process runs in a scratch directory; device state carries over from
// one input to the next, as on a real server.
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "control/commands.h"
#include "core/log.h"
#include "core/queue.h"

namespace {

struct Fixture {
  std::unique_ptr<strata::Queue> q;
  strata::DeviceRegistry registry;
  std::unique_ptr<strata::nbd::Server> server;
  strata::control::Devices devices{registry};
  strata::control::Jobs jobs;
  strata::control::Daemon d;

  Fixture() {
    std::string dir = "/tmp/strata-fuzz-" + std::to_string(::getpid()) + "-control";
    ::mkdir(dir.c_str(), 0700);
    if (::chdir(dir.c_str()) < 0) __builtin_trap();
    q = std::make_unique<strata::Queue>(0);
    if (!q->start()) __builtin_trap();
    server = std::make_unique<strata::nbd::Server>(std::vector<strata::Queue*>{q.get()}, registry,
                                                          strata::nbd::ServerOptions{});
    d.devices = &devices;
    d.nbd = server.get();
    d.started = std::chrono::steady_clock::now();
    d.jobs = &jobs;
    d.queue = q.get();
    d.queues = {q.get()};
  }
};

Fixture& fixture() {
  static Fixture* f = new Fixture();  // never destroyed: the queue thread runs until exit
  return *f;
}

// An error reply holds no raw control byte and only valid UTF-8 (what the
// client sent is echoed escaped): escape_controls() leaves it unchanged.
void check_error(const nlohmann::json& r) {
  auto e = r.find("error");
  if (e == r.end()) return;
  if (!e->is_string()) __builtin_trap();
  const std::string& s = e->get_ref<const std::string&>();
  if (strata::escape_controls(s) != s) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fixture& f = fixture();
  std::string line(reinterpret_cast<const char*>(data), size);
  auto req = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (req.is_discarded() || !req.is_object()) {
    auto r = strata::control::dispatch(f.d, line);  // answered with an error, never thrown
    if (r.value("ok", true)) __builtin_trap();
    check_error(r);
    return 0;
  }
  std::string dump = req.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  auto m = req.find("method");
  std::string method = m != req.end() && m->is_string() ? m->get<std::string>() : "";
  auto kind = strata::control::classify(method);
  const bool safe = dump.find('/') == std::string::npos && method.find("export") == std::string::npos &&
                    method.find("fuse") == std::string::npos &&
                    (kind == strata::control::Kind::kRead || kind == strata::control::Kind::kChange);
  if (!safe) return 0;
  auto r = strata::control::dispatch(f.d, req);
  if (!r.is_object() || !r.contains("ok")) __builtin_trap();
  check_error(r);
  (void)r.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return 0;
}
