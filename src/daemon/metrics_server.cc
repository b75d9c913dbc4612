#include "daemon/metrics_server.h"

#include <microhttpd.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <memory>

#include <fmt/core.h>

#include "core/log.h"

namespace strata::daemon {

namespace {
// libmicrohttpd's own messages go through our log (escaped), at debug level:
// a client that hangs up is no news.
void mhd_log(void*, const char* format, va_list ap) {
  char buf[512];
  std::vsnprintf(buf, sizeof buf, format, ap);
  LOG_DEBUG("metrics: {}", buf);
}
}  // namespace

struct MetricsHandler {
  static MHD_Result reply(MHD_Connection* c, unsigned status, const std::string& body, const char* type) {
    MHD_Response* r = MHD_create_response_from_buffer(body.size(), const_cast<char*>(body.data()),
                                                      MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
  }

  static MHD_Result access(void* cls, MHD_Connection* c, const char* url, const char* method, const char*,
                           const char*, size_t* upload_size, void** state) {
    // The first call announces the request (its headers); answer on the
    // second, as libmicrohttpd asks, so a body a client sends is discarded.
    if (!*state) {
      *state = reinterpret_cast<void*>(1);
      return MHD_YES;
    }
    if (*upload_size) {
      *upload_size = 0;
      return MHD_YES;
    }
    auto* self = static_cast<MetricsServer*>(cls);
    const bool get = std::strcmp(method, MHD_HTTP_METHOD_GET) == 0 || std::strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    if (!get) return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n", "text/plain; charset=utf-8");
    if (std::strcmp(url, "/metrics") != 0) return reply(c, MHD_HTTP_NOT_FOUND, "not found: see /metrics\n", "text/plain; charset=utf-8");
    return reply(c, MHD_HTTP_OK, self->render_(), "text/plain; version=0.0.4; charset=utf-8");
  }
};

MetricsServer::~MetricsServer() { stop(); }

Result<> MetricsServer::start(const std::string& host_port) {
  auto colon = host_port.rfind(':');
  if (colon == std::string::npos || colon + 1 == host_port.size())
    return fail(EINVAL, fmt::format("--metrics {}: expected HOST:PORT", host_port));
  std::string host = host_port.substr(0, colon), port = host_port.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (int g = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res); g != 0)
    return fail(EINVAL, fmt::format("--metrics {}: {}", host_port, gai_strerror(g)));
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> guard(res, freeaddrinfo);
  Error last{EADDRNOTAVAIL, fmt::format("--metrics {}: no address", host_port)};
  for (addrinfo* ai = res; ai && fd_ < 0; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || ::listen(fd, 16) < 0) {
      last = posix_error(fmt::format("--metrics {}", host_port), errno).error();
      ::close(fd);
      continue;
    }
    char h[NI_MAXHOST], s[NI_MAXSERV];
    ::getnameinfo(ai->ai_addr, ai->ai_addrlen, h, sizeof h, s, sizeof s, NI_NUMERICHOST | NI_NUMERICSERV);
    url_ = ai->ai_family == AF_INET6 ? fmt::format("http://[{}]:{}/metrics", h, s)
                                     : fmt::format("http://{}:{}/metrics", h, s);
    fd_ = fd;
  }
  if (fd_ < 0) return fail(std::move(last));
  // Few clients (a scraper or two), each with little to say: bounded
  // connections, memory per connection and idle time, so a client that
  // connects and stalls costs a slot for 10 s at most.
  mhd_ = MHD_start_daemon(MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG, 0, nullptr, nullptr,
                          &MetricsHandler::access, this, MHD_OPTION_LISTEN_SOCKET, fd_,
                          MHD_OPTION_CONNECTION_LIMIT, 16u, MHD_OPTION_CONNECTION_TIMEOUT, 10u,
                          MHD_OPTION_CONNECTION_MEMORY_LIMIT, static_cast<size_t>(32 * 1024),
                          MHD_OPTION_EXTERNAL_LOGGER, &mhd_log, nullptr, MHD_OPTION_END);
  if (!mhd_) {
    ::close(fd_);
    fd_ = -1;
    return fail(EIO, fmt::format("--metrics {}: libmicrohttpd did not start", host_port));
  }
  return {};
}

void MetricsServer::stop() {
  if (mhd_) {
    MHD_stop_daemon(mhd_);
    mhd_ = nullptr;
  }
  if (fd_ >= 0) {
    ::close(fd_);  // MHD_stop_daemon leaves a socket it was given open
    fd_ = -1;
  }
}

}  // namespace strata::daemon
