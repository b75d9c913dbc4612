// NBD protocol constants (NetworkBlockDevice/nbd doc/proto.md) and big-endian
// helpers. Only what strata speaks: fixed newstyle, structured replies, meta
// contexts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace strata::nbd {

constexpr uint64_t kMagic = 0x4e42444d41474943;     // "NBDMAGIC"
constexpr uint64_t kOptMagic = 0x49484156454F5054;  // "IHAVEOPT"
constexpr uint64_t kRepMagic = 0x3e889045565a9;
constexpr uint32_t kRequestMagic = 0x25609513;
constexpr uint32_t kSimpleReplyMagic = 0x67446698;
constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;

// Handshake flags (server) and client flags.
constexpr uint16_t kFlagFixedNewstyle = 1 << 0;
constexpr uint16_t kFlagNoZeroes = 1 << 1;
constexpr uint32_t kClientFixedNewstyle = 1 << 0;
constexpr uint32_t kClientNoZeroes = 1 << 1;

// Options.
enum : uint32_t {
  kOptExportName = 1,
  kOptAbort = 2,
  kOptList = 3,
  kOptStartTls = 5,
  kOptInfo = 6,
  kOptGo = 7,
  kOptStructuredReply = 8,
  kOptListMetaContext = 9,
  kOptSetMetaContext = 10,
};

// Option replies.
constexpr uint32_t kRepErrBit = 1u << 31;
enum : uint32_t {
  kRepAck = 1,
  kRepServer = 2,
  kRepInfo = 3,
  kRepMetaContext = 4,
  kRepErrUnsup = kRepErrBit | 1,
  kRepErrPolicy = kRepErrBit | 2,
  kRepErrInvalid = kRepErrBit | 3,
  kRepErrPlatform = kRepErrBit | 4,
  kRepErrTlsReqd = kRepErrBit | 5,
  kRepErrUnknown = kRepErrBit | 6,
  kRepErrShutdown = kRepErrBit | 7,
  kRepErrBlockSizeReqd = kRepErrBit | 8,
  kRepErrTooBig = kRepErrBit | 9,
};

// NBD_INFO_*
enum : uint16_t { kInfoExport = 0, kInfoName = 1, kInfoDescription = 2, kInfoBlockSize = 3 };

// Transmission flags.
enum : uint16_t {
  kTFlagHasFlags = 1 << 0,
  kTFlagReadOnly = 1 << 1,
  kTFlagSendFlush = 1 << 2,
  kTFlagSendFua = 1 << 3,
  kTFlagRotational = 1 << 4,
  kTFlagSendTrim = 1 << 5,
  kTFlagSendWriteZeroes = 1 << 6,
  kTFlagSendDf = 1 << 7,
  kTFlagCanMultiConn = 1 << 8,
  kTFlagSendCache = 1 << 10,
  kTFlagSendFastZero = 1 << 11,
};

// Commands and command flags.
enum : uint16_t {
  kCmdRead = 0,
  kCmdWrite = 1,
  kCmdDisc = 2,
  kCmdFlush = 3,
  kCmdTrim = 4,
  kCmdCache = 5,
  kCmdWriteZeroes = 6,
  kCmdBlockStatus = 7,
};
enum : uint16_t {
  kCmdFlagFua = 1 << 0,
  kCmdFlagNoHole = 1 << 1,
  kCmdFlagDf = 1 << 2,
  kCmdFlagReqOne = 1 << 3,
  kCmdFlagFastZero = 1 << 4,
};

// Structured reply chunk types and flags.
constexpr uint16_t kReplyFlagDone = 1;
enum : uint16_t {
  kReplyNone = 0,
  kReplyOffsetData = 1,
  kReplyOffsetHole = 2,
  kReplyBlockStatus = 5,
  kReplyError = (1 << 15) | 1,
};

// NBD error values.
enum : uint32_t {
  kEPERM = 1,
  kEIO = 5,
  kENOMEM = 12,
  kEINVAL = 22,
  kENOSPC = 28,
  kEOVERFLOW = 75,
  kENOTSUP = 95,
  kESHUTDOWN = 108,
};
uint32_t errno_to_nbd(int err);

constexpr std::size_t kRequestSize = 28;
constexpr std::size_t kSimpleReplySize = 16;
constexpr std::size_t kStructuredHeaderSize = 20;
constexpr uint32_t kMaxRequest = 32 * 1024 * 1024;  // largest read/write we accept
constexpr uint32_t kMaxOptionLength = 64 * 1024;    // larger options get ERR_TOO_BIG
constexpr uint32_t kMaxSkippedOption = 1 << 20;     // larger still: the connection is closed
constexpr uint32_t kMaxOptions = 1024;              // options per handshake, then it is closed
constexpr std::size_t kMaxErrorMessage = 4096;      // the spec: error strings MUST be <= 4096 bytes
constexpr uint32_t kMaxStringLength = 4096;

inline void put16(std::byte* p, uint16_t v) {
  v = __builtin_bswap16(v);
  std::memcpy(p, &v, 2);
}
inline void put32(std::byte* p, uint32_t v) {
  v = __builtin_bswap32(v);
  std::memcpy(p, &v, 4);
}
inline void put64(std::byte* p, uint64_t v) {
  v = __builtin_bswap64(v);
  std::memcpy(p, &v, 8);
}
inline uint16_t get16(const std::byte* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return __builtin_bswap16(v);
}
inline uint32_t get32(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return __builtin_bswap32(v);
}
inline uint64_t get64(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return __builtin_bswap64(v);
}

}  // namespace strata::nbd
