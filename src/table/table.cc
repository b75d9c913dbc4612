#include "table/table.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include <fmt/core.h>

#include "core/log.h"
#include "core/queue.h"
#include "table/registry.h"

namespace strata {
namespace {

std::string_view trim(std::string_view s) {
  const char* ws = " \t\r\v\f";
  auto b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  auto e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

std::vector<std::string> split_words(std::string_view s) {
  std::vector<std::string> w;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
    std::size_t j = i;
    while (j < s.size() && s[j] != ' ' && s[j] != '\t') ++j;
    if (j > i) w.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return w;
}

bool valid_name(std::string_view n) {
  if (n.empty() || n.size() > 256) return false;
  return std::all_of(n.begin(), n.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == '.';
  });
}

}  // namespace

Result<std::vector<DeviceSpec>> parse_config(std::string_view text, std::string_view source,
                                             std::string_view default_name) {
  std::vector<DeviceSpec> devs;
  std::set<std::string, std::less<>> names;
  auto at = [&](int line) { return fmt::format("{}:{}", source, line); };
  auto bad = [&](int line, std::string msg) { return fail(EINVAL, fmt::format("{}: {}", at(line), msg)); };
  uint64_t next_sector = 0;

  int lineno = 0;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    auto nl = text.find('\n', pos);
    std::string_view raw = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() + 1 : nl + 1;
    ++lineno;
    // A NUL would cut a path short where it reaches the system.
    if (raw.find('\0') != std::string_view::npos) return bad(lineno, "the line contains a NUL byte");
    auto hash = raw.find('#');
    std::string_view line = trim(hash == std::string_view::npos ? raw : raw.substr(0, hash));
    if (line.empty()) continue;

    if (line.front() == '[') {
      if (line.back() != ']') return bad(lineno, "device header must look like [name] or [name ro]");
      auto words = split_words(line.substr(1, line.size() - 2));
      if (words.empty()) return bad(lineno, "device header has no name");
      if (!valid_name(words[0]))
        return bad(lineno, fmt::format("device name '{}' may only hold letters, digits, '-', '_' and '.'", log_escape(words[0])));
      if (names.count(words[0])) return bad(lineno, fmt::format("device '{}' is defined twice", words[0]));
      DeviceSpec d;
      d.name = words[0];
      d.line = lineno;
      for (std::size_t i = 1; i < words.size(); ++i) {
        if (words[i] == "ro")
          d.read_only = true;
        else
          return bad(lineno, fmt::format("unknown device option '{}' (known: ro)", log_escape(words[i])));
      }
      if (!devs.empty() && devs.back().segments.empty())
        return bad(devs.back().line, fmt::format("device '{}' has no segments", devs.back().name));
      names.insert(d.name);
      devs.push_back(std::move(d));
      next_sector = 0;
      continue;
    }

    if (devs.empty()) {
      DeviceSpec d;
      d.name = std::string(default_name);
      names.insert(d.name);
      devs.push_back(std::move(d));
    }
    auto words = split_words(line);
    SegmentSpec seg;
    seg.line = lineno;
    auto start = parse_u64(words[0]);
    if (!start) return bad(lineno, fmt::format("field 1 (start_sector): {}", start.error().message));
    if (words.size() < 2) return bad(lineno, "field 2 (num_sectors): missing");
    auto num = parse_u64(words[1]);
    if (!num) return bad(lineno, fmt::format("field 2 (num_sectors): {}", num.error().message));
    if (*num == 0) return bad(lineno, "field 2 (num_sectors): a segment must hold at least one sector");
    // Devices end below 2^63 bytes: NBD clients (qemu, libnbd) take no more.
    constexpr uint64_t kMaxSectors = INT64_MAX / kSectorSize;
    if (*start > kMaxSectors || *num > kMaxSectors - *start)
      return bad(lineno, fmt::format("field 2 (num_sectors): segment end is too large (a device ends by sector {}, "
                                     "2^63 bytes)",
                                     kMaxSectors));
    if (*start != next_sector) {
      if (*start < next_sector)
        return bad(lineno, fmt::format("field 1 (start_sector): segment at sector {} overlaps the previous one, "
                                       "which ends at sector {}",
                                       *start, next_sector));
      return bad(lineno, fmt::format("field 1 (start_sector): segment at sector {} leaves a gap: segments must be "
                                     "contiguous from 0 and the previous one ends at sector {}",
                                     *start, next_sector));
    }
    if (words.size() < 3) return bad(lineno, "field 3 (target): missing");
    if (!find_target_type(words[2]))
      return bad(lineno, fmt::format("field 3 (target): unknown target '{}' (known: {})", log_escape(words[2]),
                                     target_type_names()));
    seg.start_sector = *start;
    seg.num_sectors = *num;
    seg.target = words[2];
    seg.args.assign(words.begin() + 3, words.end());
    next_sector = *start + *num;
    devs.back().segments.push_back(std::move(seg));
  }
  if (devs.empty()) return fail(EINVAL, fmt::format("{}: no device defined (no segment lines)", source));
  if (devs.back().segments.empty())
    return bad(devs.back().line, fmt::format("device '{}' has no segments", devs.back().name));
  return devs;
}

namespace {

std::string under(std::string_view dir, std::string_view path) {
  if (path.empty() || path.front() == '/' || is_remote_url(path)) return std::string(path);
  while (path.size() > 2 && path.substr(0, 2) == "./") path.remove_prefix(2);
  std::string out(dir);
  if (out.empty() || out.back() != '/') out += '/';
  return out + std::string(path);
}

}  // namespace

void resolve_paths(DeviceSpec& spec, std::string_view dir) {
  for (auto& seg : spec.segments) {
    const TargetType* type = find_target_type(seg.target);
    if (!type) continue;
    // Positional words and key=value options as Params splits them.
    int positional = 0;
    for (auto& w : seg.args) {
      auto eq = w.find('=');
      if (eq == std::string::npos || eq == 0) {
        if (positional++ == type->path_arg) w = under(dir, w);
        continue;
      }
      std::string_view key(w.data(), eq);
      for (auto k : type->path_options)
        if (k == key && eq + 1 < w.size()) {
          w = std::string(key) + "=" + under(dir, std::string_view(w).substr(eq + 1));
          break;
        }
    }
  }
}

void resolve_paths(std::vector<DeviceSpec>& specs, std::string_view dir) {
  for (auto& s : specs) resolve_paths(s, dir);
}

std::string table_dir(std::string_view path) {
  // The directory as the kernel finds it (symlinks and `..` resolved), so
  // that `../conf/t.conf` gives /srv/conf, not /srv/run/../conf.
  std::error_code ec;
  auto abs = std::filesystem::absolute(std::filesystem::path(path), ec);
  if (ec) return ".";
  auto dir = std::filesystem::weakly_canonical(abs.parent_path(), ec);
  return ec ? abs.parent_path().string() : dir.string();
}

// ---------------------------------------------------------------- DeviceSet

Result<std::unique_ptr<RemoteFile>> DeviceSet::remote_file(std::string_view url) { return open_remote_file(url); }

Result<std::shared_ptr<Target>> DeviceSet::device(std::string_view name) {
  for (auto& d : devices_)
    if (d.name == name) return std::shared_ptr<Target>(d.table);
  return fail(ENOENT, fmt::format("no device named '{}' is defined before this line", log_escape(name)));
}

Result<std::unique_ptr<DeviceSet>> DeviceSet::build(const std::vector<DeviceSpec>& specs, std::string_view source,
                                                    bool read_only) {
  auto set = std::make_unique<DeviceSet>();
  for (const auto& spec : specs) {
    std::vector<TableTarget::Segment> segs;
    bool ro = read_only || spec.read_only;
    for (const auto& s : spec.segments) {
      const TargetType* type = find_target_type(s.target);
      CHECK(type != nullptr);
      Params p(s.args);
      p.length = s.num_sectors * kSectorSize;
      p.read_only = ro;
      auto t = type->create(p, *set);
      if (!t)
        return fail(t.error().code, fmt::format("{}:{}: {}: {}", source, s.line, s.target, t.error().message));
      uint32_t align = (*t)->block_sizes().minimum;
      uint64_t start = s.start_sector * kSectorSize;
      if (align > 1 && (start % align || p.length % align))
        return fail(EINVAL, fmt::format("{}:{}: {}: the segment must start and end on a multiple of {} bytes",
                                        source, s.line, s.target, align));
      segs.push_back({start, p.length, std::move(*t)});
    }
    set->devices_.push_back({spec.name, ro, std::make_shared<TableTarget>(std::move(segs))});
  }
  return set;
}

// -------------------------------------------------------------- TableTarget

TableTarget::TableTarget(std::vector<Segment> segments) : segments_(std::move(segments)) {
  CHECK(!segments_.empty());
  caps_ = segments_[0].target->caps();
  block_sizes_ = segments_[0].target->block_sizes();
  for (const auto& s : segments_) {
    size_ = std::max(size_, s.start + s.length);
    caps_ = Caps::intersect(caps_, s.target->caps());
    auto b = s.target->block_sizes();
    block_sizes_.minimum = std::max(block_sizes_.minimum, b.minimum);
    block_sizes_.preferred = std::max(block_sizes_.preferred, b.preferred);
    block_sizes_.maximum = std::min(block_sizes_.maximum, b.maximum);
  }
}

std::string TableTarget::identity() const {
  std::string id = "table";
  for (const auto& s : segments_) {
    std::string one = s.target->identity();
    if (one.empty()) return {};
    id += "|" + std::to_string(s.start) + ":" + std::to_string(s.length) + ":" + one;
  }
  return id;
}

std::string TableTarget::table_line() const {
  std::string s;
  for (const auto& seg : segments_)
    s += fmt::format("{} {} {}\n", seg.start / kSectorSize, seg.length / kSectorSize, seg.target->table_line());
  return s;
}

void TableTarget::info(InfoSink& out) const {
  for (const auto& seg : segments_) seg.target->info(out);
}

Result<> TableTarget::attach_queue(Queue& q) {
  for (auto& s : segments_) TRY(s.target->attach_queue(q));
  return {};
}

std::size_t TableTarget::find(uint64_t offset) const {
  if (segments_.size() == 1) return 0;
  auto it = std::upper_bound(segments_.begin(), segments_.end(), offset,
                             [](uint64_t off, const Segment& s) { return off < s.start; });
  return static_cast<std::size_t>(it - segments_.begin()) - 1;
}

Task<Result<>> TableTarget::split(Queue& q, Op op, std::byte* buf, uint64_t offset, uint64_t length, IoFlags f) {
  std::size_t i = find(offset);
  while (length > 0) {
    const Segment& s = segments_[i];
    uint64_t in = offset - s.start;
    uint64_t n = std::min(length, s.length - in);
    // An if/else chain: g++ 12 miscompiles co_await inside switch cases.
    if (op == Op::kRead) {
      CO_TRY(co_await s.target->read(q, {buf, n}, in));
    } else if (op == Op::kWrite) {
      CO_TRY(co_await s.target->write(q, {buf, n}, in, f));
    } else if (op == Op::kTrim) {
      CO_TRY(co_await s.target->trim(q, in, n, f));
    } else if (op == Op::kZero) {
      CO_TRY(co_await s.target->zero(q, in, n, f));
    } else {
      CO_TRY(co_await s.target->cache(q, in, n));
    }
    if (buf) buf += n;
    offset += n;
    length -= n;
    ++i;
  }
  co_return Result<>{};
}

Task<Result<>> TableTarget::read(Queue& q, std::span<std::byte> buf, uint64_t offset) {
  const Segment& s = segments_[find(offset)];
  if (offset + buf.size() <= s.start + s.length) return s.target->read(q, buf, offset - s.start);
  return split(q, Op::kRead, buf.data(), offset, buf.size(), {});
}

std::optional<std::span<const std::byte>> TableTarget::read_view(Queue& q, uint64_t offset, uint64_t length) {
  // Only within one segment: a view is one piece of memory.
  const Segment& s = segments_[find(offset)];
  if (offset + length > s.start + s.length) return std::nullopt;
  return s.target->read_view(q, offset - s.start, length);
}

Task<Result<>> TableTarget::write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) {
  const Segment& s = segments_[find(offset)];
  if (offset + buf.size() <= s.start + s.length) return s.target->write(q, buf, offset - s.start, f);
  // split() takes a mutable pointer for both directions; writes never modify it.
  return split(q, Op::kWrite, const_cast<std::byte*>(buf.data()), offset, buf.size(), f);
}

Task<Result<>> TableTarget::flush(Queue& q) {
  if (segments_.size() == 1) return segments_[0].target->flush(q);
  return flush_all(q);
}

Task<Result<>> TableTarget::flush_all(Queue& q) {
  // Every segment is flushed even when one fails, so that a failing segment
  // does not leave the writes of the segments after it unsynced; the first
  // error is reported.
  Result<> first{};
  for (auto& s : segments_) {
    Result<> r = co_await s.target->flush(q);
    if (!r && first) first = std::move(r);
  }
  co_return first;
}

Task<Result<>> TableTarget::trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  const Segment& s = segments_[find(offset)];
  if (offset + length <= s.start + s.length) return s.target->trim(q, offset - s.start, length, f);
  return split(q, Op::kTrim, nullptr, offset, length, f);
}

Task<Result<>> TableTarget::zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  const Segment& s = segments_[find(offset)];
  if (offset + length <= s.start + s.length) return s.target->zero(q, offset - s.start, length, f);
  return split(q, Op::kZero, nullptr, offset, length, f);
}

Task<Result<>> TableTarget::cache(Queue& q, uint64_t offset, uint64_t length) {
  const Segment& s = segments_[find(offset)];
  if (offset + length <= s.start + s.length) return s.target->cache(q, offset - s.start, length);
  return split(q, Op::kCache, nullptr, offset, length, {});
}

Task<Result<Extents>> TableTarget::extents(Queue& q, uint64_t offset, uint64_t length) {
  const Segment& s = segments_[find(offset)];
  if (offset + length <= s.start + s.length) return s.target->extents(q, offset - s.start, length);
  return split_extents(q, offset, length);
}

std::vector<std::string> TableTarget::contexts() const {
  std::vector<std::string> out;
  for (const auto& seg : segments_)
    for (auto& c : seg.target->contexts())
      if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(std::move(c));
  return out;
}

Task<Result<Extents>> TableTarget::context_extents(Queue& q, std::string_view context, uint64_t offset,
                                                   uint64_t length) {
  Extents out;
  std::size_t i = find(offset);
  while (length > 0) {
    const Segment& s = segments_[i];
    uint64_t in = offset - s.start;
    uint64_t n = std::min(length, s.length - in);
    auto ctxs = s.target->contexts();
    if (std::find(ctxs.begin(), ctxs.end(), context) != ctxs.end()) {
      CO_TRY_ASSIGN(Extents e, co_await s.target->context_extents(q, context, in, n));
      for (const auto& x : e) append_extent(out, x.length, x.flags);
    } else {
      append_extent(out, n, 0);
    }
    offset += n;
    length -= n;
    ++i;
  }
  co_return out;
}

Task<Result<Extents>> TableTarget::split_extents(Queue& q, uint64_t offset, uint64_t length) {
  Extents out;
  std::size_t i = find(offset);
  while (length > 0) {
    const Segment& s = segments_[i];
    uint64_t in = offset - s.start;
    uint64_t n = std::min(length, s.length - in);
    CO_TRY_ASSIGN(Extents e, co_await s.target->extents(q, in, n));
    for (const auto& x : e) append_extent(out, x.length, x.flags);
    offset += n;
    length -= n;
    ++i;
  }
  co_return out;
}

}  // namespace strata
