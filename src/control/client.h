// Client side of the control socket, for the CLI.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "core/result.h"

namespace strata::control {

// $STRATA_CONTROL, else /run/strata/control.sock for root, else
// $XDG_RUNTIME_DIR/strata.sock (or /tmp/strata-UID.sock).
std::string default_control_path();

// Sends one request and returns the "result" of a successful reply.
Result<nlohmann::json> call(const std::string& path, const std::string& method,
                            const nlohmann::json& params = nlohmann::json::object());

}  // namespace strata::control
