// The state dir (dirty maps): its default, which differs between servers.
// (Each device's maps, STATE_DIR/DEVICE/, are locked by its DirtyTarget.)
#pragma once

#include <string>

#include "core/result.h"

namespace strata::daemon {

// As root: /var/lib/strata for the server on the default control socket
// (/run/strata/control.sock), else /var/lib/strata/@<control path, escaped>
// ('@' is never in a device name). Other users: "" (maps in memory).
std::string default_state_dir(const std::string& control_path);

}  // namespace strata::daemon
