// Params: the arguments a target gets from one table line. Positional words
// come first as dmsetup writes them (`file disk.img 4096`), then `key=value`
// options as nbdkit writes them (`direct=on`); a bare word such as `ro` is a
// flag. A target takes what it knows; finish() then rejects whatever is left,
// so a misspelled option is an error, never silently ignored.
//
// Error messages name the field: "argument 2 (offset): 'x' is not a number".
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.h"

namespace strata {

// Parses a non-negative decimal integer (no sign, no suffix).
Result<uint64_t> parse_u64(std::string_view s);
// Parses a size: a number with an optional K/M/G/T suffix (powers of 1024).
Result<uint64_t> parse_size(std::string_view s);
// on|off|yes|no|true|false|1|0
Result<bool> parse_bool(std::string_view s);

class Params {
 public:
  Params() = default;
  // Splits words into positional args, key=value options and flags.
  explicit Params(const std::vector<std::string>& words);

  // Facts the table gives every target.
  uint64_t length = 0;     // bytes of the segment
  bool read_only = false;  // the export is read-only

  std::size_t positional_count() const { return positional_.size(); }
  // Positional argument i (0-based), named for errors.
  Result<std::string> arg(std::size_t i, std::string_view name);
  Result<uint64_t> arg_u64(std::size_t i, std::string_view name);

  std::optional<std::string> option(std::string_view key);
  Result<bool> option_bool(std::string_view key, bool def);
  bool flag(std::string_view name);

  // Fails if any positional argument, option or flag was not taken.
  Result<> finish(std::size_t max_positional);

 private:
  std::vector<std::string> positional_;
  std::vector<bool> taken_;
  std::map<std::string, std::string, std::less<>> options_;
  // The first fault in the words (a NUL byte, an option given twice):
  // arg() and finish() report it.
  std::optional<Error> problem_;
};

}  // namespace strata
