// Typed access to the "params" of a control request: a field of the wrong
// type is an error naming the field (never silently ignored).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "core/result.h"

namespace strata::control {

class ParamReader {
 public:
  explicit ParamReader(const nlohmann::json& p) : p_(p) {}
  // Absent: nullopt (or the error "KEY is required" if required).
  Result<std::optional<std::string>> str(const char* key, bool required = false) const {
    if (!p_.contains(key) || p_[key].is_null()) return missing<std::string>(key, required);
    if (!p_[key].is_string()) return bad(key, "a string");
    return std::optional<std::string>(p_[key].get<std::string>());
  }
  Result<std::optional<bool>> boolean(const char* key) const {
    if (!p_.contains(key) || p_[key].is_null()) return std::optional<bool>();
    if (!p_[key].is_boolean()) return bad(key, "true or false");
    return std::optional<bool>(p_[key].get<bool>());
  }
  Result<std::optional<uint64_t>> uint(const char* key, bool required = false) const {
    if (!p_.contains(key) || p_[key].is_null()) return missing<uint64_t>(key, required);
    if (!p_[key].is_number_unsigned()) return bad(key, "a number >= 0");
    return std::optional<uint64_t>(p_[key].get<uint64_t>());
  }

 private:
  template <class T>
  static Result<std::optional<T>> missing(const char* key, bool required) {
    if (required) return fail(EINVAL, fmt::format("\"{}\" is required", key));
    return std::optional<T>();
  }
  static Failure bad(const char* key, const char* what) {
    return fail(EINVAL, fmt::format("\"{}\" must be {}", key, what));
  }
  const nlohmann::json& p_;
};

}  // namespace strata::control
