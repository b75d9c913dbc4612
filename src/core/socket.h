// Listening Unix sockets, shared by the NBD export and the control socket.
#pragma once

#include <sys/types.h>

#include <string>

#include "core/result.h"

namespace strata {

// Binds and listens on `path`; the socket file is created with `mode`. A
// socket file left by a crashed process is replaced; one that a live process
// still answers on is not (EADDRINUSE, "PATH: another server is running").
// Returns the listening fd.
Result<int> listen_unix(const std::string& path, int backlog, mode_t mode);

}  // namespace strata
