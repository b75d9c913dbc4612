#include "core/params.h"

#include <charconv>

#include <fmt/core.h>

#include "core/log.h"

namespace strata {

Result<uint64_t> parse_u64(std::string_view s) {
  uint64_t v = 0;
  if (s.empty()) return fail(EINVAL, "empty number");
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v, 10);
  if (ec == std::errc::result_out_of_range) return fail(ERANGE, fmt::format("'{}' is too large", log_escape(s)));
  if (ec != std::errc() || p != s.data() + s.size())
    return fail(EINVAL, fmt::format("'{}' is not a non-negative integer", log_escape(s)));
  return v;
}

Result<uint64_t> parse_size(std::string_view s) {
  if (s.empty()) return fail(EINVAL, "empty size");
  uint64_t mult = 1;
  char last = s.back();
  switch (last) {
    case 'k': case 'K': mult = 1ull << 10; break;
    case 'm': case 'M': mult = 1ull << 20; break;
    case 'g': case 'G': mult = 1ull << 30; break;
    case 't': case 'T': mult = 1ull << 40; break;
    default: break;
  }
  std::string_view digits = mult == 1 ? s : s.substr(0, s.size() - 1);
  auto v = parse_u64(digits);
  if (!v) return fail(EINVAL, fmt::format("'{}' is not a size", log_escape(s)));
  if (*v > UINT64_MAX / mult) return fail(ERANGE, fmt::format("'{}' is too large", log_escape(s)));
  return *v * mult;
}

Result<bool> parse_bool(std::string_view s) {
  if (s == "on" || s == "yes" || s == "true" || s == "1") return true;
  if (s == "off" || s == "no" || s == "false" || s == "0") return false;
  return fail(EINVAL, fmt::format("'{}' is not on or off", log_escape(s)));
}

Params::Params(const std::vector<std::string>& words) {
  for (std::size_t i = 0; i < words.size(); ++i) {
    const auto& w = words[i];
    // A NUL would cut a path short where it reaches the system.
    if (w.find('\0') != std::string::npos && !problem_)
      problem_ = Error{EINVAL, fmt::format("argument {} '{}' contains a NUL byte", i + 1, log_escape(w))};
    auto eq = w.find('=');
    if (eq != std::string::npos && eq > 0) {
      auto [it, fresh] = options_.emplace(w.substr(0, eq), w.substr(eq + 1));
      if (!fresh && !problem_)
        problem_ = Error{EINVAL, fmt::format("option '{}' is given twice", log_escape(it->first))};
    } else {
      positional_.push_back(w);
    }
  }
  taken_.assign(positional_.size(), false);
}

Result<std::string> Params::arg(std::size_t i, std::string_view name) {
  if (problem_) return fail(*problem_);
  if (i >= positional_.size())
    return fail(EINVAL, fmt::format("argument {} ({}) is missing", i + 1, name));
  taken_[i] = true;
  return positional_[i];
}

Result<uint64_t> Params::arg_u64(std::size_t i, std::string_view name) {
  auto s = TRY(arg(i, name));
  auto v = parse_u64(s);
  if (!v) return fail(v.error().code, fmt::format("argument {} ({}): {}", i + 1, name, v.error().message));
  return *v;
}

std::optional<std::string> Params::option(std::string_view key) {
  auto it = options_.find(key);
  if (it == options_.end()) return std::nullopt;
  std::string v = it->second;
  options_.erase(it);
  return v;
}

Result<bool> Params::option_bool(std::string_view key, bool def) {
  auto v = option(key);
  if (!v) return def;
  auto b = parse_bool(*v);
  if (!b) return fail(EINVAL, fmt::format("option {}: {}", key, b.error().message));
  return *b;
}

bool Params::flag(std::string_view name) {
  for (std::size_t i = 0; i < positional_.size(); ++i) {
    if (!taken_[i] && positional_[i] == name) {
      taken_[i] = true;
      return true;
    }
  }
  // `ro=on` is accepted as well as `ro`.
  auto it = options_.find(name);
  if (it != options_.end()) {
    auto b = parse_bool(it->second);
    if (b) {
      options_.erase(it);
      return *b;
    }
  }
  return false;
}

Result<> Params::finish(std::size_t max_positional) {
  if (problem_) return fail(*problem_);
  for (std::size_t i = 0; i < positional_.size(); ++i) {
    if (taken_[i]) continue;
    if (i < max_positional)
      return fail(EINVAL, fmt::format("argument {} '{}' was not used", i + 1, log_escape(positional_[i])));
    return fail(EINVAL, fmt::format("argument {}: unexpected '{}'", i + 1, log_escape(positional_[i])));
  }
  if (!options_.empty()) {
    return fail(EINVAL, fmt::format("unknown option '{}'", log_escape(options_.begin()->first)));
  }
  return {};
}

}  // namespace strata
