#include "cli/state_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <fmt/core.h>

#include "targets/file_lock.h"

namespace strata::cli {

std::string default_state_dir(const std::string& control_path) {
  if (::getuid() != 0) return "";
  if (control_path == "/run/strata/control.sock") return "/var/lib/strata";
  std::string dir = "/var/lib/strata/@";
  for (unsigned char c : control_path) {
    if (std::isalnum(c) || c == '.' || c == '_' || c == '-')
      dir += static_cast<char>(c);
    else
      dir += fmt::format("%{:02X}", c);
  }
  return dir;
}

Result<> lock_state_dir(const std::string& dir) {
  std::string path = dir + "/.lock";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return posix_error(fmt::format("state dir {}: {}", dir, path), errno);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (::fcntl(fd, F_OFD_SETLK, &fl) < 0) {
    int e = errno;
    std::string who = FileLock::holder(fd);
    ::close(fd);
    if (e != EAGAIN && e != EACCES) return posix_error(fmt::format("state dir {}: lock", dir), e);
    return fail(EBUSY, fmt::format("state dir {} is in use by another server{}: give each server its own "
                                   "--state-dir",
                                   dir, who.empty() ? "" : " (" + who + ")"));
  }
  return {};  // fd stays open: the lock lasts as long as the process
}

}  // namespace strata::cli
