// Byte helpers for on-disk headers: little-endian integers at a byte offset,
// and the header checksum (FNV-1a-32 of a header block but its last four
// bytes, which hold it). Layer files (docs/format.md) and dirty maps
// (docs/dirty-maps.md) use them; the formats are little-endian whatever the
// host (on a little-endian host a load or store is one memcpy).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace strata {

namespace detail {
template <typename T>
constexpr T byteswap_if_big(T v) {
  static_assert(std::is_integral_v<T>);
  if constexpr (std::endian::native == std::endian::big && sizeof(T) > 1) {
    using U = std::make_unsigned_t<T>;
    U u = static_cast<U>(v), r = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) r = static_cast<U>((r << 8) | ((u >> (8 * i)) & 0xff));
    return static_cast<T>(r);
  } else {
    return v;
  }
}
}  // namespace detail

// Stores `v` little-endian at p + off.
template <typename T>
inline void store_le(void* p, std::size_t off, T v) {
  v = detail::byteswap_if_big(v);
  std::memcpy(static_cast<unsigned char*>(p) + off, &v, sizeof v);
}

// Loads a little-endian T from p + off.
template <typename T>
inline T load_le(const void* p, std::size_t off) {
  T v;
  std::memcpy(&v, static_cast<const unsigned char*>(p) + off, sizeof v);
  return detail::byteswap_if_big(v);
}

// FNV-1a, 32 bits.
inline uint32_t fnv1a32(const void* p, std::size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  uint32_t h = 2166136261u;
  for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 16777619u;
  return h;
}

// A header block of `size` bytes ends with the checksum of what precedes it.
inline uint32_t header_checksum(const void* b, std::size_t size) { return fnv1a32(b, size - 4); }
// Writes the checksum into the block's last four bytes.
inline void seal_header(void* b, std::size_t size) { store_le<uint32_t>(b, size - 4, header_checksum(b, size)); }
// Whether the block's last four bytes hold the checksum of the rest.
inline bool header_checksum_ok(const void* b, std::size_t size) {
  return load_le<uint32_t>(b, size - 4) == header_checksum(b, size);
}

}  // namespace strata
