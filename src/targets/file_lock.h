// FileLock: an OFD lock (fcntl F_OFD_SETLK) over a whole file a target
// serves, so two servers (or a server and qemu, which locks its images the
// same way) never serve one image read-write at once: a write lock for a file
// served writable, a read lock for one served read-only.
//
// Within one process a file is locked once: targets on the same file (two
// segments, a device reloaded in place) share the lock, which is upgraded to
// a write lock when any of them writes. The lock lives on its own open file
// description (a dup of the target's fd), so it lasts as long as any holder.
//
// Thread-safety: acquire() may be called from any thread (setup only).
#pragma once

#include <memory>
#include <string>

#include "core/result.h"

namespace strata {

class FileLock {
 public:
  // Locks the file open as `fd` (named `path` in errors); `write` needs fd
  // open for writing. Fails with EBUSY, naming the holder's pid and command
  // where /proc/locks tells them, when another process holds a conflicting lock.
  static Result<std::shared_ptr<FileLock>> acquire(int fd, const std::string& path, bool write);
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

  // "pid 1234 (strata)" for the first process other than this one that holds
  // a lock on the file open as fd (from /proc/PID/fdinfo); "" when none is
  // found.
  static std::string holder(int fd);

  struct State;  // file_lock.cc

 private:
  explicit FileLock(std::shared_ptr<State> s) : s_(std::move(s)) {}
  std::shared_ptr<State> s_;
};

}  // namespace strata
