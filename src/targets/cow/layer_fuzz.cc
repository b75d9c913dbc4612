// libFuzzer: a layer file's header and bitmap (a file anyone may hand to
// `strata layer check` or to a table). The input is the file's head; it is opened
// read-only without a lock, its bitmap read, and `layer check` run on it.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "targets/cow/layer.h"

namespace {
const std::string& path() {
  static const std::string p = "/tmp/strata-fuzz-" + std::to_string(::getpid()) + ".layer";
  return p;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int fd = ::open(path().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) __builtin_trap();
  if (size && ::write(fd, data, size) != static_cast<ssize_t>(size)) __builtin_trap();
  // The input is the head of the file (header and bitmap); the rest, where a
  // real layer keeps its data from 1 MiB on, is a hole.
  if (size < (4u << 20) && ::ftruncate(fd, 4u << 20) < 0) __builtin_trap();
  ::close(fd);
  auto l = strata::LayerFile::open(path(), /*writable=*/false, /*lock=*/false);
  if (l) {
    auto bits = (*l)->read_bitmap();
    if (bits && bits->size() != (*l)->chunks()) __builtin_trap();
    (void)(*l)->parent_full_path();
  }
  (void)strata::LayerFile::check(path());
  return 0;
}
