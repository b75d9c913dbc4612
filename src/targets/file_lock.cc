#include "targets/file_lock.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <mutex>

#include <fmt/core.h>

namespace strata {

// One per locked file in this process.
struct FileLock::State {
  dev_t dev;
  ino_t ino;
  int fd = -1;  // the description holding the lock
  bool write = false;
  ~State();
};

namespace {
std::mutex g_mu;
std::map<std::pair<dev_t, ino_t>, std::weak_ptr<FileLock::State>> g_locks;  // guarded by g_mu

int set_lock(int fd, short type) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = 0;
  fl.l_len = 0;  // the whole file, however it grows
  return ::fcntl(fd, F_OFD_SETLK, &fl) < 0 ? errno : 0;
}

Failure lock_error(const std::string& path, bool write, int fd, int err) {
  if (err != EAGAIN && err != EACCES)
    return posix_error(fmt::format("file {}: lock", path), err);
  std::string who = FileLock::holder(fd);
  return fail(EBUSY, fmt::format("file {}: in use by another process{} (it holds a lock on it); refusing to serve "
                                  "it {} (lock=off serves it anyway)",
                                  path, who.empty() ? "" : ": " + who, write ? "read-write" : "read-only"));
}
}  // namespace

// Never takes g_mu: the last holder may go while acquire() holds it.
FileLock::State::~State() {
  if (fd >= 0) ::close(fd);  // releases the lock
}

FileLock::~FileLock() = default;

std::string FileLock::holder(int fd) {
  struct stat st;
  if (::fstat(fd, &st) < 0) return "";
  // /proc/locks shows pid -1 for OFD locks; the fdinfo of the descriptor
  // that holds one has the same line ("lock:\t1: OFDLCK ADVISORY WRITE -1
  // fe:00:5678 0 EOF"), so the process is found there (where readable: root,
  // or the same user).
  const std::string key = fmt::format(" {:02x}:{:02x}:{} ", major(st.st_dev), minor(st.st_dev), st.st_ino);
  const pid_t self = ::getpid();
  DIR* proc = ::opendir("/proc");
  if (!proc) return "";
  std::string found;
  while (dirent* e = ::readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end || pid == self) continue;
    std::string dir = fmt::format("/proc/{}/fdinfo", pid);
    DIR* fds = ::opendir(dir.c_str());
    if (!fds) continue;
    while (dirent* f = ::readdir(fds)) {
      if (f->d_name[0] == '.') continue;
      std::ifstream in(dir + "/" + f->d_name);
      std::string line;
      while (std::getline(in, line))
        if (line.starts_with("lock:") && line.find(key) != std::string::npos) found = std::to_string(pid);
      if (!found.empty()) break;
    }
    ::closedir(fds);
    if (!found.empty()) break;
  }
  ::closedir(proc);
  if (found.empty()) return "";
  std::string comm;
  std::ifstream c("/proc/" + found + "/comm");
  std::getline(c, comm);
  return comm.empty() ? "pid " + found : fmt::format("pid {} ({})", found, comm);
}

Result<std::shared_ptr<FileLock>> FileLock::acquire(int fd, const std::string& path, bool write) {
  struct stat st;
  if (::fstat(fd, &st) < 0) return posix_error(fmt::format("file {}: stat", path), errno);
  std::lock_guard<std::mutex> l(g_mu);
  std::erase_if(g_locks, [](const auto& kv) { return kv.second.expired(); });
  auto& slot = g_locks[{st.st_dev, st.st_ino}];
  std::shared_ptr<State> s = slot.lock();
  if (s && (s->write || !write)) return std::shared_ptr<FileLock>(new FileLock(s));
  int nfd = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (nfd < 0) return posix_error(fmt::format("file {}: dup", path), errno);
  if (s) {
    // Upgrade: our own read lock would conflict with the write lock on
    // another description, so it goes first (and comes back on failure).
    (void)set_lock(s->fd, F_UNLCK);
    if (int e = set_lock(nfd, F_WRLCK)) {
      (void)set_lock(s->fd, F_RDLCK);
      ::close(nfd);
      return lock_error(path, write, fd, e);
    }
    ::close(std::exchange(s->fd, nfd));
    s->write = true;
    return std::shared_ptr<FileLock>(new FileLock(s));
  }
  if (int e = set_lock(nfd, write ? F_WRLCK : F_RDLCK)) {
    ::close(nfd);
    return lock_error(path, write, fd, e);
  }
  s = std::make_shared<State>();
  s->dev = st.st_dev;
  s->ino = st.st_ino;
  s->fd = nfd;
  s->write = write;
  slot = s;
  return std::shared_ptr<FileLock>(new FileLock(s));
}

}  // namespace strata
