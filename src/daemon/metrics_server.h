// `serve --metrics HOST:PORT`: Prometheus text at GET /metrics (404 for any
// other path, 405 for any other method), served by libmicrohttpd on a thread
// of its own (docs/metrics.md says why a library rather than our own
// responder). The page is made at each scrape by control::render_metrics().
//
// Threads: start() and the destructor on the serve thread; the page is made
// on libmicrohttpd's thread.
#pragma once

#include <functional>
#include <string>

#include "core/result.h"

struct MHD_Daemon;

namespace strata::daemon {

class MetricsServer {
 public:
  explicit MetricsServer(std::function<std::string()> render) : render_(std::move(render)) {}
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Binds HOST:PORT ("[::1]:9100" for IPv6) and starts serving.
  Result<> start(const std::string& host_port);
  // "http://127.0.0.1:9100/metrics"
  const std::string& url() const { return url_; }
  void stop();

 private:
  std::function<std::string()> render_;
  MHD_Daemon* mhd_ = nullptr;
  int fd_ = -1;
  std::string url_;
  friend struct MetricsHandler;
};

}  // namespace strata::daemon
