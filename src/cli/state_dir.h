// The state dir (dirty maps): its default, which differs between servers, and
// the lock that keeps two servers out of one.
#pragma once

#include <string>

#include "core/result.h"

namespace strata::cli {

// As root: /var/lib/strata for the server on the default control socket
// (/run/strata/control.sock), else /var/lib/strata/@<control path, escaped>
// ('@' is never in a device name). Other users: "" (maps in memory).
std::string default_state_dir(const std::string& control_path);

// Takes an exclusive OFD lock on DIR/.lock for the life of the process (the
// fd is left open); fails, naming the holder's pid where known, when another
// server holds it.
Result<> lock_state_dir(const std::string& dir);

}  // namespace strata::cli
