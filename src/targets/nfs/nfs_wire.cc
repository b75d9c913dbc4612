#include "targets/nfs/nfs_wire.h"

#include <arpa/inet.h>

#include <cstring>

#include <fmt/core.h>

namespace strata::nfswire {

namespace {

// RFC 5531
constexpr uint32_t kCall = 0, kReply = 1, kRpcVersion = 2;
constexpr uint32_t kAuthNone = 0, kAuthSys = 1;
constexpr uint32_t kMsgAccepted = 0, kMsgDenied = 1;
constexpr uint32_t kNfsProgram = 100003;
// RFC 1813 procedures
constexpr uint32_t kNfs3Read = 6, kNfs3Write = 7, kNfs3Commit = 21;
// RFC 7530
constexpr uint32_t kNfs4Compound = 1;
constexpr uint32_t kOpCommit = 5, kOpPutfh = 22, kOpRead = 25, kOpWrite = 38;
constexpr uint32_t kLastFragment = 0x80000000u;
// The AUTH_SYS machine name: servers log it, none checks it.
constexpr char kMachine[] = "strata";

class Writer {
 public:
  explicit Writer(std::byte* p) : p_(p), start_(p) {}
  void u32(uint32_t v) {
    v = htonl(v);
    std::memcpy(p_, &v, 4);
    p_ += 4;
  }
  void u64(uint64_t v) {
    u32(static_cast<uint32_t>(v >> 32));
    u32(static_cast<uint32_t>(v));
  }
  void opaque(const void* d, uint32_t n) {  // variable length: length, bytes, padding
    u32(n);
    fixed(d, n);
  }
  void fixed(const void* d, uint32_t n) {
    std::memcpy(p_, d, n);
    p_ += n;
    for (uint32_t i = 0; i < pad_of(n); ++i) *p_++ = std::byte{0};
  }
  void zeros(uint32_t n) {
    std::memset(p_, 0, n);
    p_ += n;
  }
  size_t size() const { return static_cast<size_t>(p_ - start_); }
  std::byte* at(size_t off) const { return start_ + off; }

 private:
  std::byte* p_;
  std::byte* start_;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte> b) : b_(b) {}
  bool u32(uint32_t* v) {
    if (b_.size() - off_ < 4) return fail();
    uint32_t x;
    std::memcpy(&x, b_.data() + off_, 4);
    *v = ntohl(x);
    off_ += 4;
    return true;
  }
  bool u64(uint64_t* v) {
    uint32_t hi, lo;
    if (!u32(&hi) || !u32(&lo)) return false;
    *v = (uint64_t{hi} << 32) | lo;
    return true;
  }
  bool skip(size_t n) {
    if (b_.size() - off_ < n) return fail();
    off_ += n;
    return true;
  }
  // Variable-length opaque: points `*d` at its bytes.
  bool opaque(const std::byte** d, uint32_t* n) {
    if (!u32(n)) return false;
    if (b_.size() - off_ < size_t{*n} + pad_of(*n)) return fail();
    *d = b_.data() + off_;
    off_ += size_t{*n} + pad_of(*n);
    return true;
  }
  bool skip_opaque(uint32_t max) {
    uint32_t n;
    const std::byte* d;
    if (!opaque(&d, &n)) return false;
    return n <= max || fail();
  }
  // An optional of `n` bytes (post_op_attr, pre_op_attr): a bool, then the value.
  bool skip_optional(size_t n) {
    uint32_t present;
    if (!u32(&present) || present > 1) return fail();
    return present == 0 || skip(n);
  }
  bool verf(uint64_t* v) {
    if (b_.size() - off_ < 8) return fail();
    std::memcpy(v, b_.data() + off_, 8);  // opaque: kept as the bytes are
    off_ += 8;
    return true;
  }

 private:
  bool fail() {
    off_ = b_.size();
    return false;
  }
  std::span<const std::byte> b_;
  size_t off_ = 0;
};

constexpr size_t kFattr3 = 84;     // fattr3: 5 x 4 bytes + 8 x 8 bytes
constexpr size_t kWccAttr = 24;    // wcc_attr: size, mtime, ctime
constexpr uint32_t kMaxData = 64u << 20;

// WRITE3resok and WRITE4resok after their status (and NFSv3's wcc_data):
// count, committed, verifier.
bool write_ok(Reader& rd, Reply* r) {
  uint32_t count, committed;
  if (!rd.u32(&count) || !rd.u32(&committed) || !rd.verf(&r->verf)) return false;
  r->count = count;
  r->committed = static_cast<int>(committed);
  return true;
}

bool wcc_data(Reader& rd) { return rd.skip_optional(kWccAttr) && rd.skip_optional(kFattr3); }

bool decode3(Reader& rd, Proc proc, Reply* r) {
  uint32_t st;
  if (!rd.u32(&st)) return false;
  r->status = static_cast<int>(st);
  switch (proc) {
    case Proc::kRead: {
      if (!rd.skip_optional(kFattr3)) return false;
      if (st != 0) return true;
      uint32_t count, eof, len;
      if (!rd.u32(&count) || !rd.u32(&eof) || !rd.opaque(&r->data, &len)) return false;
      if (len != count || len > kMaxData) return false;
      r->count = len;
      r->eof = eof != 0;
      return true;
    }
    case Proc::kWrite:
      if (!wcc_data(rd)) return false;
      return st != 0 || write_ok(rd, r);
    case Proc::kCommit:
      if (!wcc_data(rd)) return false;
      return st != 0 || rd.verf(&r->verf);
  }
  return false;
}

bool decode4(Reader& rd, Proc proc, Reply* r) {
  uint32_t st, nres;
  if (!rd.u32(&st) || !rd.skip_opaque(1024) || !rd.u32(&nres)) return false;
  if (nres == 0) {
    // No operation ran (NFS4ERR_MINOR_VERS_MISMATCH, NFS4ERR_RESOURCE...).
    r->status = static_cast<int>(st);
    return st != 0;
  }
  // PUTFH's result, then the operation's (absent if PUTFH failed).
  uint32_t op, opst;
  if (!rd.u32(&op) || op != kOpPutfh || !rd.u32(&opst)) return false;
  if (opst != 0 || nres < 2) {
    r->status = static_cast<int>(opst != 0 ? opst : st);
    return r->status != 0;  // a failed COMPOUND with nothing failing is garbage
  }
  const uint32_t want = proc == Proc::kRead ? kOpRead : proc == Proc::kWrite ? kOpWrite : kOpCommit;
  if (!rd.u32(&op) || op != want || !rd.u32(&opst)) return false;
  r->status = static_cast<int>(opst);
  if (opst != 0) return true;
  switch (proc) {
    case Proc::kRead: {
      uint32_t eof, len;
      if (!rd.u32(&eof) || !rd.opaque(&r->data, &len) || len > kMaxData) return false;
      r->count = len;
      r->eof = eof != 0;
      return true;
    }
    case Proc::kWrite:
      return write_ok(rd, r);
    case Proc::kCommit:
      return rd.verf(&r->verf);
  }
  return false;
}

}  // namespace

size_t encode_call(std::byte* out, uint32_t xid, int version, const Cred& cred, std::span<const uint8_t> fh,
                   Proc proc, uint64_t offset, uint32_t count, int stable) {
  Writer w(out);
  w.u32(0);  // record marker, filled in below
  w.u32(xid);
  w.u32(kCall);
  w.u32(kRpcVersion);
  w.u32(kNfsProgram);
  w.u32(version == 4 ? 4 : 3);
  const uint32_t proc3 = proc == Proc::kRead ? kNfs3Read : proc == Proc::kWrite ? kNfs3Write : kNfs3Commit;
  w.u32(version == 4 ? kNfs4Compound : proc3);
  // AUTH_SYS: stamp, machine name, uid, gid, no supplementary gids.
  const auto name_len = static_cast<uint32_t>(sizeof kMachine - 1);
  w.u32(kAuthSys);
  w.u32(4 + 4 + name_len + pad_of(name_len) + 4 + 4 + 4);
  w.u32(0);
  w.opaque(kMachine, name_len);
  w.u32(cred.uid);
  w.u32(cred.gid);
  w.u32(0);
  w.u32(kAuthNone);  // verifier
  w.u32(0);
  const auto fh_len = static_cast<uint32_t>(fh.size());
  if (version == 4) {
    w.u32(0);  // tag: empty
    w.u32(0);  // minorversion
    w.u32(2);  // PUTFH, then the operation
    w.u32(kOpPutfh);
    w.opaque(fh.data(), fh_len);
    switch (proc) {
      case Proc::kRead:
        w.u32(kOpRead);
        w.zeros(16);  // anonymous stateid: seqid 0, other all zeros
        w.u64(offset);
        w.u32(count);
        break;
      case Proc::kWrite:
        w.u32(kOpWrite);
        w.zeros(16);
        w.u64(offset);
        w.u32(static_cast<uint32_t>(stable));
        w.u32(count);  // the data follows
        break;
      case Proc::kCommit:
        w.u32(kOpCommit);
        w.u64(offset);
        w.u32(count);
        break;
    }
  } else {
    w.opaque(fh.data(), fh_len);
    w.u64(offset);
    w.u32(count);
    if (proc == Proc::kWrite) {
      w.u32(static_cast<uint32_t>(stable));
      w.u32(count);  // the data follows
    }
  }
  size_t n = w.size();
  uint64_t body = n - 4;
  if (proc == Proc::kWrite) body += uint64_t{count} + pad_of(count);
  uint32_t marker = htonl(kLastFragment | static_cast<uint32_t>(body));
  std::memcpy(out, &marker, 4);
  return n;
}

bool peek_xid(std::span<const std::byte> body, uint32_t* xid) {
  Reader rd(body);
  return rd.u32(xid);
}

bool decode_reply(std::span<const std::byte> body, int version, Proc proc, Reply* r, std::string* why) {
  Reader rd(body);
  uint32_t xid, type, stat;
  if (!rd.u32(&xid) || !rd.u32(&type) || type != kReply || !rd.u32(&stat)) {
    *why = "not an RPC reply";
    return false;
  }
  if (stat == kMsgDenied) {
    uint32_t reject, detail = 0;
    if (!rd.u32(&reject)) {
      *why = "truncated RPC rejection";
      return false;
    }
    rd.u32(&detail);
    if (reject == 1) {  // AUTH_ERROR
      r->rpc_errno = EACCES;
      r->rpc_why = fmt::format("the server rejected the credentials (auth_stat {})", detail);
    } else {
      r->rpc_errno = EPROTO;
      r->rpc_why = "the server does not speak RPC version 2";
    }
    return true;
  }
  uint32_t accept;
  if (stat != kMsgAccepted || !rd.skip(4) || !rd.skip_opaque(400) || !rd.u32(&accept)) {
    *why = "malformed RPC reply header";
    return false;
  }
  if (accept != 0) {
    static constexpr const char* kAccept[] = {"", "program unavailable", "program version mismatch",
                                              "procedure unavailable", "garbage arguments", "system error"};
    r->rpc_errno = accept == 3 || accept == 1 || accept == 2 ? EOPNOTSUPP : EIO;
    r->rpc_why = fmt::format("RPC call failed: {} (accept_stat {})", accept < 6 ? kAccept[accept] : "unknown",
                             accept);
    return true;
  }
  if (!(version == 4 ? decode4(rd, proc, r) : decode3(rd, proc, r))) {
    *why = "malformed NFS reply";
    return false;
  }
  return true;
}

}  // namespace strata::nfswire
