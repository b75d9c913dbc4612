#include "daemon/serve.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <map>
#include <future>
#include <sstream>
#include <thread>

#include <fmt/core.h>

#include "daemon/metrics_server.h"
#include "daemon/service.h"
#include "daemon/state_dir.h"
#include "control/client.h"
#include "control/metrics.h"
#include "control/server.h"
#include "core/log.h"
#include "core/queue.h"
#include "exports/nbd/server.h"
#include "targets/file.h"
#include "table/table.h"
#include "targets/dirty/dirty.h"

namespace strata::daemon {
namespace {

Result<std::string> read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return posix_error(fmt::format("table {}", path), errno ? errno : ENOENT);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

Result<std::vector<DeviceSpec>> load_specs(const ServeOptions& o, std::string& source) {
  std::vector<DeviceSpec> specs;
  if (!o.file.empty()) {
    if (!o.tables.empty()) return fail(EINVAL, "give either --file or --table, not both");
    int fd = ::open(o.file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return posix_error(fmt::format("--file {}", o.file), errno);
    // Only a regular file or block device has a size to serve (a directory's
    // SEEK_END is a meaningless huge number).
    struct stat st;
    if (::fstat(fd, &st) < 0 || (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))) {
      ::close(fd);
      return fail(EINVAL, fmt::format("--file {}: not a regular file or block device", o.file));
    }
    off_t end = ::lseek(fd, 0, SEEK_END);
    ::close(fd);
    if (end < 0) return posix_error(fmt::format("--file {}: size", o.file), errno);
    if (o.offset > static_cast<uint64_t>(end))
      return fail(EINVAL, fmt::format("--offset {} is beyond the end of {} ({} bytes)", o.offset, o.file, end));
    uint64_t len = static_cast<uint64_t>(end) - o.offset;
    // Serve whole blocks: sectors, or with --direct the 4096-byte blocks O_DIRECT needs.
    const uint64_t unit = o.direct ? 4096 : kSectorSize;
    if (len < unit) return fail(EINVAL, fmt::format("--file {}: less than {} bytes to serve", o.file, unit));
    if (len % unit)
      LOG_WARN("--file {}: serving {} bytes; the last {} bytes are not a whole {}", o.file, len / unit * unit,
               len % unit, o.direct ? "4096-byte block (--direct)" : "sector");
    len = len / unit * unit;
    SegmentSpec seg;
    seg.line = 1;
    seg.num_sectors = len / kSectorSize;
    seg.target = "file";
    seg.args = {o.file, std::to_string(o.offset)};
    if (o.direct) seg.args.push_back("direct=on");
    DeviceSpec d;
    d.name = o.export_name;
    d.segments.push_back(seg);
    specs.push_back(d);
    source = "--file";
  } else {
    if (o.tables.empty()) return specs;  // a daemon configured at runtime (strata create)
    for (const auto& t : o.tables) {
      std::string text = TRY(read_file(t));
      auto more = TRY(parse_config(text, t, o.export_name));
      // The table's relative paths name files beside it (docs/tables.md).
      resolve_paths(more, table_dir(t));
      for (auto& m : more) {
        // Name the line that defines it again: its header, else its first segment.
        int line = m.line ? m.line : (m.segments.empty() ? 0 : m.segments[0].line);
        for (const auto& s : specs)
          if (s.name == m.name)
            return fail(EINVAL, fmt::format("{}:{}: device '{}' is defined twice (also in an earlier --table)", t,
                                            line, m.name));
        specs.push_back(std::move(m));
      }
    }
    source = o.tables.size() == 1 ? o.tables[0] : "tables";
  }
  return specs;
}

Result<std::unique_ptr<DeviceSet>> load_devices(const ServeOptions& o) {
  std::string source;
  auto specs = TRY(load_specs(o, source));
  return DeviceSet::build(specs, source, o.read_only);
}

int serve(const ServeOptions& o) {
  if (o.verbose) set_log_level(LogLevel::kDebug);
  // Signals are taken by sigwait() on this thread only; every thread started
  // below inherits the mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  // Sockets passed by socket activation: taken before any thread starts
  // (it edits the environment).
  auto activated = take_listen_fds();
  if (!activated) {
    LOG_ERROR("{}", activated.error().message);
    return 1;
  }

  std::string source;
  auto specs = load_specs(o, source);
  if (!specs) {
    LOG_ERROR("{}", specs.error().message);
    return 1;
  }
  // No device at all is a server configured at runtime (strata create): asked
  // for with --empty, or by giving only --control (no listener, no table).
  const bool runtime_only = (!o.control.empty() || activated->control >= 0) && o.unix_paths.empty() &&
                            o.tcp.empty() && activated->nbd.empty();
  if (o.tables.empty() && o.file.empty() && !o.empty && !runtime_only) {
    LOG_ERROR("nothing to serve: give --table FILE or --file PATH, or --empty to start with no device and "
              "create them at runtime (strata create)");
    return 1;
  }

  unsigned nq = o.queues ? o.queues : std::max(1u, std::min(4u, std::thread::hardware_concurrency()));
  if (nq > static_cast<unsigned>(kMaxQueues)) {
    LOG_ERROR("--queues {}: at most {}", nq, kMaxQueues);
    return 1;
  }
  std::vector<std::unique_ptr<Queue>> queues;
  std::vector<Queue*> qptrs;
  for (unsigned i = 0; i < nq; ++i) {
    auto q = std::make_unique<Queue>(static_cast<int>(i));
    if (auto r = q->start(o.sched_batch); !r) {
      LOG_ERROR("queue {}: {}", i, r.error().message);
      return 1;
    }
    qptrs.push_back(q.get());
    queues.push_back(std::move(q));
  }
  if (!o.state_dir.empty()) {
    std::string made;
    for (std::size_t i = 0; i <= o.state_dir.size(); ++i) {  // mkdir -p
      if (i == o.state_dir.size() || (o.state_dir[i] == '/' && i > 0)) {
        made = o.state_dir.substr(0, i);
        if (::mkdir(made.c_str(), 0700) < 0 && errno != EEXIST) {
          LOG_ERROR("--state-dir {}: {}", made, std::strerror(errno));
          return 1;
        }
      }
    }
  }

  nbd::ServerOptions so;
  {
    nbd::TlsMode mode = o.tls == "require" ? nbd::TlsMode::kRequire
                        : o.tls == "on"    ? nbd::TlsMode::kOn
                                           : nbd::TlsMode::kOff;
    if (mode == nbd::TlsMode::kOff && (!o.tls_certificates.empty() || !o.tls_psk.empty()))
      LOG_WARN("--tls-certificates/--tls-psk given but --tls=off: TLS is disabled");
    auto tls = nbd::TlsConfig::load(mode, o.tls_certificates, o.tls_psk, o.tls_verify_peer);
    if (!tls) {
      LOG_ERROR("{}", tls.error().message);
      return 1;
    }
    if (mode != nbd::TlsMode::kOff) so.tls = std::move(*tls);
  }
  so.max_connections = o.max_connections;
  so.max_handshakes = o.max_handshakes;
  so.handshake_timeout = std::chrono::milliseconds(static_cast<int64_t>(o.handshake_timeout * 1000));
  if (!o.max_memory.empty()) {
    auto m = parse_size(o.max_memory);
    uint64_t least = nbd::MemoryBudget::minimum(o.max_connections);
    if (!m || *m < least) {
      LOG_ERROR("--max-memory {}: {}", o.max_memory,
                m ? fmt::format("at least {} MiB for --max-connections {}", least >> 20, o.max_connections)
                  : m.error().message);
      return 1;
    }
    so.max_memory = *m;
  }
  DeviceRegistry registry;  // the devices every export and control read
  nbd::Server server(qptrs, registry, so);

  // Every device is served through a DirtyTarget (dirty maps), which costs
  // one branch per write while it has none, over a LiveTarget (reload,
  // suspend/resume): control/devices.h.
  control::Devices devices(registry);
  control::Jobs jobs;
  control::Daemon daemon;
  daemon.devices = &devices;
  daemon.nbd = &server;
  daemon.started = std::chrono::steady_clock::now();
  daemon.jobs = &jobs;
  daemon.queue = qptrs[0];
  daemon.queues = qptrs;
  daemon.state_dir = o.state_dir;
  daemon.all_read_only = o.read_only;
  daemon.allowed_paths = o.allow_paths;
  daemon.fuse_options.io_uring = o.fuse_io_uring;
  if (auto r = control::apply_config(daemon, *specs, source, false); !r) {
    LOG_ERROR("{}", r.error().message);
    return 1;
  }

  for (const auto& p : o.unix_paths) {
    if (auto r = server.listen_unix(p); !r) {
      LOG_ERROR("{}", r.error().message);
      return 1;
    }
  }
  for (int fd : activated->nbd) {
    if (auto r = server.listen_fd(fd); !r) {
      LOG_ERROR("{}", r.error().message);
      return 1;
    }
  }
  std::vector<std::string> tcp = o.tcp;
  if (tcp.empty() && o.unix_paths.empty() && activated->nbd.empty()) tcp.push_back("127.0.0.1:10809");
  for (const auto& t : tcp) {
    auto colon = t.rfind(':');
    if (colon == std::string::npos) {
      LOG_ERROR("--tcp {}: expected HOST:PORT", t);
      return 1;
    }
    std::string host = t.substr(0, colon), port = t.substr(colon + 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    if (auto r = server.listen_tcp(host, port); !r) {
      LOG_ERROR("{}", r.error().message);
      return 1;
    }
    bool loopback = host.starts_with("127.") || host == "::1" || host == "localhost";
    if (!loopback && o.tls != "require")
      LOG_WARN("--tcp {}: serving a non-loopback address without --tls=require: anyone who can reach it can "
               "read and write the exports in the clear",
               t);
  }

  for (const auto& mp : o.fuse) {
    auto shown = fuse::devices_of(registry);
    auto e = std::make_unique<fuse::FuseExport>(qptrs, shown, daemon.fuse_options);
    if (auto r = e->start(mp); !r) {
      LOG_ERROR("{}", r.error().message);
      return 1;
    }
    fmt::print("strata: FUSE export at {}\n", e->mountpoint());
    daemon.fuse_exports[e->mountpoint()] = std::move(e);
  }
  control::Server ctl(daemon);
  std::string ctl_path = o.control.empty() ? control::default_control_path() : o.control;
  if (o.control.empty() && ctl_path == "/run/strata/control.sock") ::mkdir("/run/strata", 0700);
  if (activated->control >= 0) ctl_path = "passed by the service manager";
  if (auto r = activated->control >= 0 ? ctl.start_fd(activated->control) : ctl.start(ctl_path); !r) {
    LOG_ERROR("{}", r.error().message);
    return 1;
  }

  MetricsServer metrics([&daemon] { return control::render_metrics(daemon); });
  if (!o.metrics.empty()) {
    if (auto r = metrics.start(o.metrics); !r) {
      LOG_ERROR("{}", r.error().message);
      return 1;
    }
  }

  server.start();
  if (!o.pidfile.empty()) {
    std::ofstream(o.pidfile) << ::getpid() << "\n";
  }
  for (const auto& d : devices.list()) {
    for (const auto& u : server.uris()) {
      // Insert the export name into the URI path.
      std::string uri = u;
      auto scheme_end = uri.find("://");
      auto path_at = uri.find('/', scheme_end + 3);
      if (path_at == std::string::npos)
        uri += "/" + d->name;
      else
        uri.insert(path_at + 1, d->name);
      if (o.tls != "off") uri.replace(0, 3, "nbds");  // nbd:// -> nbds://, nbd+unix -> nbds+unix
      fmt::print("strata: export '{}' ({} bytes{}) at {}\n", d->name, d->live->size(),
                 d->effective_read_only() ? ", read-only" : "", uri);
    }
  }
  fmt::print("strata: control socket {}\n", ctl_path);
  if (!o.metrics.empty()) fmt::print("strata: metrics at {}\n", metrics.url());
  std::fflush(stdout);

  // Every listener and device is up.
  auto status = [&devices, &server] {
    auto n = devices.list().size();
    auto c = server.stats().active;
    return fmt::format("{} device{}, {} connection{}", n, n == 1 ? "" : "s", c, c == 1 ? "" : "s");
  };
  notify("READY=1\nSTATUS=" + status());
  // Alive: every queue runs a posted closure within the timeout.
  auto queues_alive = [&qptrs](std::chrono::microseconds timeout) {
    auto left = std::make_shared<std::atomic<std::size_t>>(qptrs.size());
    for (Queue* q : qptrs) q->post([left] { left->fetch_sub(1); });
    auto until = std::chrono::steady_clock::now() + timeout;
    while (left->load() > 0 && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return left->load() == 0;
  };
  Watchdog watchdog(queues_alive, status);

  int sig = 0;
  for (;;) {
    sigwait(&sigs, &sig);
    if (sig != SIGHUP) break;
    // Re-read the tables and apply the difference, in turn with the control
    // requests that change devices.
    notify(reloading_state());
    if (o.tables.empty()) {
      LOG_WARN("SIGHUP: no --table to re-read");
      notify("READY=1");
      continue;
    }
    ctl.run_on_worker([&o, &daemon, &status] {
      struct Ready {  // whichever way the reload ends
        decltype(status)& st;
        ~Ready() { notify("READY=1\nSTATUS=" + st()); }
      } ready{status};
      std::string src;
      auto again = load_specs(o, src);
      if (!again) {
        LOG_ERROR("SIGHUP: {}; nothing changed", again.error().message);
        return;
      }
      auto r = control::apply_config(daemon, *again, src, true);
      if (!r)
        LOG_ERROR("SIGHUP: {}; nothing changed", r.error().message);
      else
        LOG_INFO("SIGHUP: {}", r->dump());
    });
  }
  notify("STOPPING=1");
  watchdog.stop();
  metrics.stop();
  LOG_INFO("signal {}: finishing requests in flight", sig);
  jobs.stop();
  ctl.stop();
  control::resume_all(daemon);
  for (Export* x : daemon.exports()) x->stop();  // NBD first: its clients' requests end, then each FUSE mount
  int rc = control::close_devices(daemon);
  for (auto& q : queues) q->stop();
  if (!o.pidfile.empty()) ::unlink(o.pidfile.c_str());
  LOG_INFO("stopped");
  return rc;
}

}  // namespace strata::daemon
