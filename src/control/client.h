// Client side of the control socket, for the CLI.
#pragma once

#include <nlohmann/json.hpp>
#include <functional>
#include <string>

#include "core/result.h"

namespace strata::control {

// $STRATA_CONTROL, else /run/strata/control.sock for root, else
// $XDG_RUNTIME_DIR/strata.sock (or /tmp/strata-UID.sock).
std::string default_control_path();

// Sends one request and returns the "result" of a successful reply.
// Progress lines of a long request go to `progress`.
Result<nlohmann::json> call(const std::string& path, const std::string& method,
                            const nlohmann::json& params = nlohmann::json::object(),
                            const std::function<void(const nlohmann::json&)>& progress = nullptr);

}  // namespace strata::control
