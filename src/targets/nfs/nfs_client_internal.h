// Private to the NFS client (nfs_client.cc, nfs_conn.cc): what both halves
// of NfsClient share. OutRecord (one call's bytes on their way to the
// socket), the connection (NfsClient::Conn) with its completions, its
// receive buffer and its xid slots, the limits that size them, and the
// name of a call's procedure for messages. See the design notes in
// nfs_client.cc.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/ring.h"
#include "targets/nfs/nfs_client.h"
#include "targets/nfs/nfs_wire.h"

namespace strata {

inline const char* kind_name(NfsClient::Kind k) {
  switch (k) {
    case NfsClient::Kind::kRead:
      return "READ";
    case NfsClient::Kind::kWrite:
      return "WRITE";
    case NfsClient::Kind::kCommit:
      return "COMMIT";
  }
  return "?";
}

// One call's record on its way to the socket: the encoded header, then (a
// WRITE) the caller's data and its padding. Records of a connection form a
// FIFO; a batch of them goes out in one io_uring sendmsg.
struct OutRecord {
  std::byte hdr[nfswire::kMaxHeader];
  uint32_t hdr_len = 0;
  const std::byte* data = nullptr;
  uint32_t data_len = 0;
  NfsClient::Call* call = nullptr;  // nullptr: withdrawn, or its call was answered
  bool started = false;             // some of it is (or was) in a submitted sendmsg
  bool replied = false;             // `call` (a WRITE) was answered before this record's
                                    // sendmsg completed: it completes when it does
  OutRecord* next = nullptr;
  size_t size() const { return hdr_len + size_t{data_len} + nfswire::pad_of(data_len); }
};

enum class CompletionKind { kPoll, kRecv, kSend };

struct ConnCompletion : Completion {
  struct NfsClient::Conn* conn = nullptr;
  CompletionKind kind = CompletionKind::kPoll;
  bool out = false;  // the POLLOUT poll of the connecting phase
};

constexpr size_t kRxBytes = (2u << 20) + 16384;  // two 1 MiB READ replies
constexpr size_t kMaxIov = 1020;                 // under IOV_MAX (1024)
constexpr uint32_t kMaxSlots = 1u << 16;         // calls in flight per connection

struct NfsClient::Conn {
  NfsClient* owner = nullptr;
  rpc_context* rpc = nullptr;  // libnfs: the connection and its NULL ping only
  int fd = -1;                 // once up
  ConnCompletion in, out, snd;
  bool in_armed = false, out_armed = false, snd_armed = false;
  bool dead = false;
  bool parked = false;  // in parked<Conn>(): see ~NfsClient
  // Replies, read by io_uring straight into this buffer and cut into RPC
  // records here.
  std::unique_ptr<char[]> rx;
  size_t rx_cap = 0, rx_head = 0, rx_tail = 0;
  // Records waiting to go out or going out; the first `front_done` bytes
  // of the head are on the socket.
  OutRecord *oq_head = nullptr, *oq_tail = nullptr;
  size_t front_done = 0;
  std::vector<OutRecord*> spare;  // records to reuse
  std::vector<iovec> iov;
  msghdr msg{};
  // xid -> call: the low 16 bits index `slots`, the high 16 count that
  // slot's uses, so a late reply to a call given up does not match the next
  // call in its slot.
  std::vector<Call*> slots;
  std::vector<uint16_t> slot_uses;
  std::vector<uint32_t> free_slots;

  bool armed() const { return in_armed || out_armed || snd_armed; }
  OutRecord* new_record() {
    if (spare.empty()) return new OutRecord;
    OutRecord* r = spare.back();
    spare.pop_back();
    return r;
  }
  // The socket is closed only here, once no SQE can name its fd: an SQE
  // prepared but not yet submitted would otherwise land on whatever socket
  // reuses the number.
  ~Conn() {
    if (rpc) rpc_destroy_context(rpc);  // closes the socket; callbacks see `dead`
    for (OutRecord* r : spare) delete r;
    while (OutRecord* r = oq_head) {
      oq_head = r->next;
      delete r;
    }
  }
};

}  // namespace strata
