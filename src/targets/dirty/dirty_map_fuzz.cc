// libFuzzer: a dirty map file (STATE_DIR/DEVICE/NAME.dmap, also read by
// `strata dirty list --offline`). The input is the file; it is opened
// read-only (mapped privately) and its bits listed.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "targets/dirty/dirty.h"

namespace {
const std::string& path() {
  static const std::string p = "/tmp/strata-fuzz-" + std::to_string(::getpid()) + ".dmap";
  return p;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int fd = ::open(path().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) __builtin_trap();
  if (size && ::write(fd, data, size) != static_cast<ssize_t>(size)) __builtin_trap();
  ::close(fd);
  bool consistent = false;
  std::string why;
  auto f = strata::MapFile::open(path(), /*read_only=*/true, consistent, why);
  if (!f) return 0;
  auto bits = (*f)->slot((*f)->header().active_slot);
  // Bounded: a map's ranges over a huge device are listed a window at a time.
  (void)bits->dirty_blocks();
  (void)bits->ranges(0, uint64_t{1} << 30);
  return 0;
}
