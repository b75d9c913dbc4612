// libFuzzer: the PSK file check (--tls-psk), which must accept exactly what
// GnuTLS can use and refuse the rest with a clear error.
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "exports/nbd/tls.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto r = strata::nbd::check_psk_text(text, "fuzz.psk");
  if (r) {
    // Accepted: every non-empty line is user:hex with an even key length.
    if (*r == 0) __builtin_trap();
    std::size_t pos = 0;
    while (pos < text.size()) {
      auto nl = text.find('\n', pos);
      std::string_view line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
      pos = nl == std::string_view::npos ? text.size() : nl + 1;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty()) continue;
      auto colon = line.find(':');
      if (colon == 0 || colon == std::string_view::npos) __builtin_trap();
      auto key = line.substr(colon + 1);
      if (key.empty() || key.size() % 2) __builtin_trap();
      for (char c : key)
        if (!std::isxdigit(static_cast<unsigned char>(c))) __builtin_trap();
    }
  }
  return 0;
}
