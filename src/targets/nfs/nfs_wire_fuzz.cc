// libFuzzer: the NFS reply decoder (an NFS server's bytes). The first byte
// picks the NFS version and procedure; the rest is the RPC record body.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "targets/nfs/nfs_wire.h"

using namespace strata::nfswire;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const int version = (data[0] & 1) ? 4 : 3;
  const Proc procs[] = {Proc::kRead, Proc::kWrite, Proc::kCommit};
  const Proc proc = procs[(data[0] >> 1) % 3];
  std::span<const std::byte> body(reinterpret_cast<const std::byte*>(data + 1), size - 1);
  uint32_t xid = 0;
  (void)peek_xid(body, &xid);
  Reply r;
  std::string why;
  if (decode_reply(body, version, proc, &r, &why) && r.rpc_errno == 0 && proc == Proc::kRead && r.data) {
    // What the decoder hands out must lie inside the body.
    const std::byte* end = body.data() + body.size();
    if (r.data < body.data() || r.data > end || r.count > static_cast<size_t>(end - r.data)) __builtin_trap();
    volatile std::byte sink{};
    for (uint32_t i = 0; i < r.count; ++i) sink = r.data[i];
    (void)sink;
  }
  return 0;
}
