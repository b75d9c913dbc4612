#include "control/metrics.h"

#include <fmt/core.h>

#include <map>
#include <vector>

#include "core/log.h"
#include "core/metrics.h"

namespace strata::control {
namespace {

// Metric families in the order first seen, each with its samples, so that
// HELP and TYPE come once per family however many devices there are.
class Families {
 public:
  void add(const std::string& name, const char* type, const char* help, const std::string& labels, double value) {
    sample(name, type, help, name, labels, value);
  }
  // A sample whose name differs from its family's (histogram _bucket/_sum/_count).
  void sample(const std::string& family, const char* type, const char* help, const std::string& name,
              const std::string& labels, double value) {
    auto [it, fresh] = index_.try_emplace(family, fams_.size());
    if (fresh) fams_.push_back({family, type, help, {}});
    std::string& out = fams_[it->second].samples;
    out += name;
    if (!labels.empty()) out += "{" + labels + "}";
    out += " " + number(value) + "\n";
  }
  std::string text() const {
    std::string out;
    for (const auto& f : fams_)
      out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{}", f.name, f.help, f.name, f.type, f.samples);
    return out;
  }
  static std::string number(double v) {
    if (v == static_cast<double>(static_cast<uint64_t>(v)) && v < 1e18) return fmt::format("{}", static_cast<uint64_t>(v));
    return fmt::format("{}", v);
  }

 private:
  struct Family {
    std::string name;
    const char* type;
    const char* help;
    std::string samples;
  };
  std::vector<Family> fams_;
  std::map<std::string, std::size_t> index_;
};

std::string label(std::string_view key, std::string_view value) {
  return fmt::format("{}=\"{}\"", key, metric_label(value));
}

// Collects a segment's INFO keys with numbers.
class NumberSink final : public InfoSink {
 public:
  void add(std::string_view key, uint64_t value) override { values[std::string(key)] = value; }
  void add(std::string_view, std::string_view) override {}
  std::map<std::string, uint64_t> values;
};

struct InfoMetric {
  const char* target;  // the segment's target type
  const char* key;     // its INFO key
  const char* name;
  const char* type;
  const char* help;
};
constexpr InfoMetric kInfoMetrics[] = {
    {"cow", "copy_ups", "strata_cow_copy_ups_total", "counter", "Chunks copied up from a lower layer by partial writes"},
    {"cow", "layers", "strata_cow_layers", "gauge", "Layers in the cow stack"},
    {"cow", "top_chunks", "strata_cow_top_chunks", "gauge", "Chunks held by the top layer"},
    {"cow", "merging", "strata_cow_merging", "gauge", "1 while a merge runs"},
    {"nfs", "read_calls", "strata_nfs_read_calls_total", "counter", "NFS READ calls sent"},
    {"nfs", "write_calls", "strata_nfs_write_calls_total", "counter", "NFS WRITE calls sent"},
    {"nfs", "commits", "strata_nfs_commits_total", "counter", "NFS COMMIT calls sent"},
    {"nfs", "calls_resent", "strata_nfs_retransmits_total", "counter", "NFS calls sent again (timeout or reconnect)"},
    {"nfs", "calls_timed_out", "strata_nfs_timeouts_total", "counter", "NFS calls that timed out"},
    {"nfs", "reconnects", "strata_nfs_reconnects_total", "counter", "NFS connections lost and made again"},
    {"nfs", "connects", "strata_nfs_connects_total", "counter", "NFS connections made"},
    {"nfs", "connect_failures", "strata_nfs_connect_failures_total", "counter", "NFS connection attempts that failed"},
    {"nfs", "verifier_changes", "strata_nfs_verifier_changes_total", "counter",
     "NFS write verifier changes (server restarts): unstable writes sent again"},
    {"nfs", "connections", "strata_nfs_connections", "gauge", "NFS connections up"},
    {"nfs", "nfs_in_flight", "strata_nfs_in_flight", "gauge", "NFS calls in flight"},
    {"nfs", "unstable_bytes", "strata_nfs_unstable_bytes", "gauge", "Bytes written UNSTABLE and not yet committed"},
    {"cache", "hits", "strata_cache_hits_total", "counter", "Reads (chunk runs) served from the local cache file"},
    {"cache", "misses", "strata_cache_misses_total", "counter", "Reads (chunk runs) that went to the cached device"},
    {"cache", "hit_bytes", "strata_cache_hit_bytes_total", "counter", "Bytes served from the local cache file"},
    {"cache", "miss_bytes", "strata_cache_miss_bytes_total", "counter", "Bytes read from the cached device"},
    {"cache", "fills", "strata_cache_fills_total", "counter", "Chunks written to the cache file"},
    {"cache", "evictions", "strata_cache_evictions_total", "counter", "Chunks evicted to make room"},
    {"cache", "cache_used_slots", "strata_cache_used_chunks", "gauge", "Chunks held by the cache file"},
    {"cache", "cache_slots", "strata_cache_chunks", "gauge", "Chunks the cache file can hold"},
    {"cache", "bypass", "strata_cache_bypass", "gauge", "1 once the device changed while served (reads bypass the cache)"},
};

}  // namespace

std::string metric_label(std::string_view v) {
  std::string e = log_escape(v), out;
  out.reserve(e.size());
  for (char c : e) {
    if (c == '\\' || c == '"') out += '\\';
    out += c;
  }
  return out;
}

nlohmann::json io_metrics_json(const IoMetrics& m) {
  auto s = m.snapshot();
  nlohmann::json ops = nlohmann::json::object(), bytes = nlohmann::json::object(), errors = nlohmann::json::object(),
                 lat = nlohmann::json::object();
  for (int i = 0; i < kIoOps; ++i) {
    ops[kIoOpNames[i]] = s.ops[i];
    bytes[kIoOpNames[i]] = s.bytes[i];
    errors[kIoOpNames[i]] = s.errors[i];
  }
  for (int i = 0; i < kTimedOps; ++i)
    lat[kIoOpNames[i]] = {{"count", s.latency[i].count}, {"sum_us", s.latency[i].sum_ns / 1000}};
  return {{"ops", ops}, {"bytes", bytes}, {"errors", errors}, {"in_flight", s.in_flight}, {"latency", lat}};
}

std::string render_metrics(const Daemon& d) {
  Families f;
  auto up = std::chrono::duration<double>(std::chrono::steady_clock::now() - d.started).count();
  f.add("strata_uptime_seconds", "gauge", "Seconds since the server started", "", up);

  auto devices = d.devices->list();
  f.add("strata_devices", "gauge", "Devices served", "", static_cast<double>(devices.size()));
  for (const auto& dev : devices) {
    const std::string dl = label("device", dev->name);
    auto table = dev->live->active();
    f.add("strata_device_size_bytes", "gauge", "Size of the device", dl, static_cast<double>(dev->live->size()));
    f.add("strata_device_read_only", "gauge", "1 if the device is read-only", dl, dev->effective_read_only() ? 1 : 0);
    f.add("strata_device_held_requests", "gauge", "Requests held by a suspend", dl,
          static_cast<double>(dev->live->held_requests()));
    if (dev->dirty) {
      auto s = dev->dirty->metrics().snapshot();
      static const char* kOpsHelp[kIoOps] = {"Read requests", "Write requests", "Flush requests", "Trim requests",
                                            "Write-zeroes requests"};
      static const char* kBytesHelp[kIoOps] = {"Bytes read", "Bytes written", "", "Bytes trimmed", "Bytes zeroed"};
      for (int i = 0; i < kIoOps; ++i) {
        f.add(fmt::format("strata_device_{}_ops_total", kIoOpNames[i]), "counter", kOpsHelp[i], dl,
              static_cast<double>(s.ops[i]));
        if (*kBytesHelp[i])
          f.add(fmt::format("strata_device_{}_bytes_total", kIoOpNames[i]), "counter", kBytesHelp[i], dl,
                static_cast<double>(s.bytes[i]));
      }
      for (int i = 0; i < kIoOps; ++i)
        f.add("strata_device_errors_total", "counter", "Requests that failed, by kind",
              dl + "," + label("op", kIoOpNames[i]), static_cast<double>(s.errors[i]));
      f.add("strata_device_in_flight", "gauge", "Requests in flight", dl, static_cast<double>(s.in_flight));
      static const char* kLatHelp[kTimedOps] = {"Read latency", "Write latency", "Flush latency"};
      for (int i = 0; i < kTimedOps; ++i) {
        std::string fam = fmt::format("strata_device_{}_latency_seconds", kIoOpNames[i]);
        const auto& h = s.latency[i];
        uint64_t cum = 0;
        for (int b = 0; b < kLatencyBuckets; ++b) {
          cum += h.buckets[b];
          std::string le = b < static_cast<int>(kLatencyBounds.size()) ? fmt::format("{}", kLatencyBounds[b]) : "+Inf";
          f.sample(fam, "histogram", kLatHelp[i], fam + "_bucket", dl + ",le=\"" + le + "\"", static_cast<double>(cum));
        }
        f.sample(fam, "histogram", kLatHelp[i], fam + "_sum", dl, static_cast<double>(h.sum_ns) * 1e-9);
        f.sample(fam, "histogram", kLatHelp[i], fam + "_count", dl, static_cast<double>(cum));
      }
      for (const auto& m : dev->dirty->maps()) {
        std::string ml = dl + "," + label("map", m.name);
        f.add("strata_dirty_bytes", "gauge", "Bytes marked dirty in a dirty map (whole blocks)", ml,
              static_cast<double>(m.dirty_blocks * m.granularity));
        f.add("strata_dirty_map_consistent", "gauge", "1 if the dirty map is complete", ml, m.consistent ? 1 : 0);
      }
    }
    if (d.nbd)
      f.add("strata_device_nbd_clients", "gauge", "NBD clients connected to the device", dl,
            static_cast<double>(d.nbd->connections_to(dev->dirty.get())));
    const auto& segs = table->segments();
    for (std::size_t i = 0; i < segs.size(); ++i) {
      std::string line = segs[i].target->table_line();
      std::string type = line.substr(0, line.find(' '));
      NumberSink sink;
      bool any = false;
      for (const auto& m : kInfoMetrics) any |= type == m.target;
      if (!any) continue;
      segs[i].target->info(sink);
      std::string sl = dl + "," + label("segment", std::to_string(i));
      for (const auto& m : kInfoMetrics) {
        if (type != m.target) continue;
        auto it = sink.values.find(m.key);
        if (it != sink.values.end()) f.add(m.name, m.type, m.help, sl, static_cast<double>(it->second));
      }
    }
  }

  if (d.nbd) {
    auto s = d.nbd->stats();
    f.add("strata_nbd_clients", "gauge", "NBD clients connected", "", static_cast<double>(s.active));
    f.add("strata_nbd_connections_total", "counter", "NBD clients accepted", "", static_cast<double>(s.total));
    f.add("strata_nbd_connections_refused_total", "counter", "NBD clients refused (--max-connections)", "",
          static_cast<double>(s.refused));
    f.add("strata_nbd_handshakes_evicted_total", "counter",
          "NBD handshakes closed to make room for new ones (--max-handshakes full)", "", static_cast<double>(s.evicted));
    f.add("strata_nbd_handshake_timeouts_total", "counter", "NBD handshakes not finished in time (--handshake-timeout)",
          "", static_cast<double>(s.handshake_timeouts));
  }
  if (d.jobs) {
    for (const auto& j : d.jobs->list()) {
      auto js = j->to_json();
      std::string jl = label("job", std::to_string(j->id())) + "," + label("kind", j->kind()) + "," +
                       label("device", j->device()) + "," + label("unit", js.value("unit", std::string("bytes")));
      f.add("strata_job_done", "gauge", "Work a job has done (in its unit: bytes, or chunks for a merge)", jl,
            static_cast<double>(js.value("done_bytes", uint64_t{0})));
      f.add("strata_job_total", "gauge", "Work a job has to do, in its unit", jl,
            static_cast<double>(js.value("total_bytes", uint64_t{0})));
      f.add("strata_job_running", "gauge", "1 while the job runs", jl, js.value("state", "") == "running" ? 1 : 0);
    }
  }
  return f.text();
}

}  // namespace strata::control
