// nfs_wire: the bytes of the three calls the nfs target's data path makes,
// READ, WRITE and COMMIT, as ONC RPC records over TCP (RFC 5531, record
// marking, AUTH_SYS), for NFSv3 (RFC 1813) and NFSv4.0 (RFC 7530: a
// COMPOUND of PUTFH and the operation, anonymous stateid).
//
// Why not libnfs's encoder for these: libnfs 4.0 (Debian 12) copies every
// WRITE's data into a freshly allocated PDU, scans its 1024 xid buckets on
// every service call and writes each batch with a syscall of its own. Here a
// call's header is encoded into a few hundred bytes and the WRITE data goes
// to the socket from the caller's buffer (sendmsg with an iovec), batched in
// the queue's io_uring. libnfs still makes the connection (reserved port,
// NULL ping) and does everything at table load (mount, lookup, attributes).
// The decoder checks every length against the record; a malformed reply is
// reported, never read past.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace strata::nfswire {

enum class Proc { kRead, kWrite, kCommit };

struct Cred {
  uint32_t uid = 0, gid = 0;
};

// Upper bound of encode_call's output (record marker included).
constexpr size_t kMaxHeader = 512;
// Largest file handle accepted (NFSv4's NFS4_FHSIZE; NFSv3's is 64).
constexpr size_t kMaxFh = 128;

// XDR padding after `n` opaque bytes.
constexpr uint32_t pad_of(uint32_t n) { return (4 - (n & 3)) & 3; }

// Encodes one whole call record up to the WRITE data: the record marker
// (whose length covers `count` data bytes and their padding for a WRITE),
// the RPC call header, and the arguments. A WRITE's record continues with
// `count` data bytes and pad_of(count) zero bytes. Returns the bytes written
// to `out` (at most kMaxHeader); fh.size() must be <= kMaxFh.
size_t encode_call(std::byte* out, uint32_t xid, int version, const Cred& cred, std::span<const uint8_t> fh,
                   Proc proc, uint64_t offset, uint32_t count, int stable);

// The xid of a reply record's body (the bytes after the record marker), or
// false if it is too short to hold one.
bool peek_xid(std::span<const std::byte> body, uint32_t* xid);

struct Reply {
  // RPC-level failure (the call was not executed): an errno and why;
  // 0 when the server ran the call.
  int rpc_errno = 0;
  std::string rpc_why;
  int status = 0;  // nfsstat3, or nfsstat4 of the failing operation
  uint32_t count = 0;     // READ: data bytes; WRITE: bytes written
  bool eof = false;       // READ
  int committed = 0;      // WRITE: how stable
  uint64_t verf = 0;      // WRITE/COMMIT: the write verifier
  const std::byte* data = nullptr;  // READ: into the record body
};

// Decodes a reply record's body for a call of `proc` and `version`. Returns
// false (with `why`) if the bytes are not a well-formed reply.
bool decode_reply(std::span<const std::byte> body, int version, Proc proc, Reply* r, std::string* why);

}  // namespace strata::nfswire
