#include "control/client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>

#include <fmt/core.h>

#include "core/log.h"

namespace strata::control {

namespace {
// The request line; an argument that is not valid UTF-8 (JSON cannot carry
// it: nlohmann-json throws) is refused, named and escaped.
Result<std::string> request_line(const std::string& method, const nlohmann::json& params) {
  nlohmann::json req = {{"method", method}, {"params", params}};
  try {
    return req.dump() + "\n";
  } catch (const nlohmann::json::exception&) {
  }
  if (params.is_object()) {
    for (const auto& [k, v] : params.items()) {
      if (!v.is_string()) continue;
      try {
        (void)v.dump();
      } catch (const nlohmann::json::exception&) {
        return fail(EINVAL, fmt::format("{} '{}' is not valid UTF-8", k, log_escape(v.get_ref<const std::string&>())));
      }
    }
  }
  return fail(EINVAL, fmt::format("{}: an argument is not valid UTF-8", method));
}
}  // namespace

std::string default_control_path() {
  if (const char* e = std::getenv("STRATA_CONTROL"); e && *e) return e;
  if (::getuid() == 0) return "/run/strata/control.sock";
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x && *x) return std::string(x) + "/strata.sock";
  return fmt::format("/tmp/strata-{}.sock", ::getuid());
}

Result<nlohmann::json> call(const std::string& path, const std::string& method, const nlohmann::json& params,
                            const std::function<void(const nlohmann::json&)>& progress) {
  auto line_r = request_line(method, params);
  if (!line_r) return fail(line_r.error());
  const std::string& line = *line_r;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return fail(ENAMETOOLONG, "control socket path too long: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return posix_error("socket", errno);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    int e = errno;
    ::close(fd);
    return posix_error(fmt::format("cannot reach the server's control socket {} (is `strata serve` running? "
                                   "use --control)",
                                   path),
                       e);
  }
  if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) {
    int e = errno;
    ::close(fd);
    return posix_error("control: send", e);
  }
  std::string buf;
  char chunk[4096];
  nlohmann::json reply;
  for (;;) {
    auto nl = buf.find('\n');
    if (nl == std::string::npos) {
      ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
      if (n <= 0) {
        ::close(fd);
        return fail(EIO, "control: the server closed the connection without a reply");
      }
      buf.append(chunk, n);
      continue;
    }
    reply = nlohmann::json::parse(buf.substr(0, nl), nullptr, false);
    buf.erase(0, nl + 1);
    if (reply.is_object() && reply.contains("progress")) {
      if (progress) progress(reply["progress"]);
      continue;
    }
    break;
  }
  ::close(fd);
  if (reply.is_discarded() || !reply.is_object()) return fail(EIO, "control: the reply is not JSON");
  if (!reply.value("ok", false)) return fail(EINVAL, reply.value("error", std::string("unknown error")));
  return reply["result"];
}

}  // namespace strata::control
