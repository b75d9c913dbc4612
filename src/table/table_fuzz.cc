// libFuzzer: the table parser (an operator's file, or a control client's
// table text). Every error names a line; control bytes never reach it raw.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "table/table.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto r = strata::parse_config(text, "fuzz.table", "");
  if (!r) {
    for (char c : r.error().message)
      if ((static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f) __builtin_trap();  // unescaped
    return 0;
  }
  for (const auto& d : *r) {
    if (d.segments.empty()) __builtin_trap();
    uint64_t next = 0;
    for (const auto& s : d.segments) {
      if (s.start_sector != next || s.num_sectors == 0) __builtin_trap();
      next = s.start_sector + s.num_sectors;
    }
  }
  return 0;
}
