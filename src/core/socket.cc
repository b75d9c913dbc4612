#include "core/socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include <fmt/core.h>

namespace strata {

Result<int> listen_unix(const std::string& path, int backlog, mode_t mode) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return fail(ENAMETOOLONG, fmt::format("unix socket path too long: {}", path));
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return posix_error("socket", errno);
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
    int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool live = ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(probe);
    if (live) {
      ::close(fd);
      return fail(EADDRINUSE, fmt::format("{}: another server is running (listening there)", path));
    }
    ::unlink(path.c_str());
  }
  // The mode is set at creation (umask), so there is no moment when the
  // socket is more open than asked.
  mode_t old = ::umask(~mode & 0777);
  int r = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int e = errno;
  ::umask(old);
  if (r < 0) {
    ::close(fd);
    return posix_error(fmt::format("bind {}", path), e);
  }
  if (::listen(fd, backlog) < 0) {
    e = errno;
    ::close(fd);
    ::unlink(path.c_str());
    return posix_error(fmt::format("listen {}", path), e);
  }
  return fd;
}

}  // namespace strata
