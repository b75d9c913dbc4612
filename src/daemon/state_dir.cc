#include "daemon/state_dir.h"

#include <unistd.h>

#include <fmt/core.h>


namespace strata::daemon {

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

}  // namespace strata::daemon
